"""Streamed data sets (DataLoader workers): the order and augmentation of an epoch depend on (seed, epoch)
alone, whatever the worker count; ranks split the set; a resumed streamed run equals an uninterrupted one."""
import shutil

import torch

from conftest import run_cli
from kd.data.folder import scan_root
from kd.data.streaming import EpochSampler, FileSet, StreamLoader
from test_data_sets import make_folder
from test_resume import rows


def noisy_folder(root, classes=("cat", "dog", "owl"), per_class=8, size=40):
    """Images with random pixels, so that different crops and flips give different tensors."""
    from PIL import Image

    make_folder(root, classes, per_class=per_class, size=size)
    generator = torch.Generator().manual_seed(0)
    for path in sorted(root.rglob("*.png")):
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(path)
    return root


def streamed_recipe(tmp_path, root):
    """A vanilla resnet8 recipe, 2 epochs, on an image folder forced to stream (max_in_memory_mb: 0)."""
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(f"""name: stream
dataset: imagefolder
data_root: {root}
imagefolder: {{max_in_memory_mb: 0, image_size: 32}}
student: resnet8
methods: [vanilla]
epochs: 2
batch_size: 8
lr: 0.05
output_dir: {tmp_path / 'runs'}
""")
    return recipe


def epoch_batches(root, epoch, workers, seed=3):
    classes, train, _ = scan_root(root, ("test",))
    loader = StreamLoader(FileSet(train, classes, 32, train=True), 5, (0.5,) * 3, (0.25,) * 3,
                          torch.device("cpu"), train=True, workers=workers, seed=seed)
    loader.set_epoch(epoch)
    return list(loader)


def test_an_epoch_depends_on_seed_and_epoch_only_not_on_workers_or_history(tmp_path):
    root = noisy_folder(tmp_path / "data")
    before = torch.get_rng_state()
    first = epoch_batches(root, 2, workers=0)
    _, train, _ = scan_root(root, ("test",))
    assert torch.equal(torch.get_rng_state(), before)  # augmentation leaves the training RNG alone
    again = epoch_batches(root, 2, workers=2)
    assert len(first) == len(again) == 4  # 24 training images in batches of 5: the last 4 are dropped
    for (x, y, i), (x2, y2, i2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2)
        assert torch.equal(y, torch.tensor([train[k][1] for k in i.tolist()]))  # the index names the image
    other = epoch_batches(root, 3, workers=0)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_ranks_share_the_set_without_overlap():
    # training: 10 images on 3 ranks, the 10th dropped so that every rank takes as many steps
    samplers = [EpochSampler(10, seed=1, shuffle=True, rank=rank, world_size=3) for rank in range(3)]
    train = [list(s) for s in samplers]
    indices = [i for keys in train for i, _ in keys]
    assert [len(keys) for keys in train] == [len(s) for s in samplers] == [3, 3, 3]
    assert len(set(indices)) == 9 and set(indices) <= set(range(10))
    # evaluation: every image once, rank r taking images r, r + 3, ...
    samplers = [EpochSampler(10, seed=1, shuffle=False, rank=rank, world_size=3) for rank in range(3)]
    assert [list(s) for s in samplers] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [len(s) for s in samplers] == [4, 3, 3]


def test_a_resumed_streamed_run_equals_an_uninterrupted_one(tmp_path):
    root = noisy_folder(tmp_path / "data", per_class=12)
    recipe = streamed_recipe(tmp_path, root)
    result = run_cli(str(recipe))
    assert result.returncode == 0, result.stderr
    whole = next((tmp_path / "runs").iterdir())
    # The state a kill after the first epoch leaves: its checkpoint (kept as last.pt.prev) and one metrics row.
    cut = tmp_path / "cut" / whole.name
    shutil.copytree(whole, cut)
    (cut / "summary.csv").unlink()
    member = cut / "vanilla-s0"
    shutil.move(member / "checkpoints" / "last.pt.prev", member / "checkpoints" / "last.pt")
    lines = (member / "metrics.csv").read_text().splitlines(keepends=True)
    (member / "metrics.csv").write_text("".join(lines[:2]))
    resumed = run_cli("--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr
    assert rows(member / "metrics.csv") == rows(whole / "vanilla-s0" / "metrics.csv")
    ours = torch.load(member / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(whole / "vanilla-s0" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
