"""The in-memory loader: same augmentation semantics as torchvision, deterministic per (seed, epoch)."""
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from kd.data.base import ImageSet
from kd.data.loader import TensorLoader, crop_flip


def test_crop_flip_equals_torchvision_for_the_same_draws():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    rows, cols = torch.tensor([0, 8, 3, 4, 7, 1]), torch.tensor([8, 0, 5, 4, 2, 6])
    flips = torch.tensor([True, False, True, False, False, True])
    ours = crop_flip(images, 4, rows, cols, flips)
    for i in range(6):  # torchvision: pad with zeros, crop at (top, left), then flip
        ref = TF.crop(TF.pad(images[i], [4]), int(rows[i]), int(cols[i]), 32, 32)
        if flips[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(ours[i], ref)


def test_crop_offsets_cover_torchvision_range():
    # torchvision's RandomCrop(32, padding=4) draws offsets uniformly in [0, 8]
    torch.manual_seed(0)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    images[..., 0, 0] = 255  # mark the top-left pixel and find where it lands
    g = torch.Generator().manual_seed(0)
    from kd.data.loader import random_crop_flip
    seen = set()
    for _ in range(400):
        out = random_crop_flip(images, 4, g)
        where = (out[0, 0] == 255).nonzero()
        if len(where):
            seen.add(int(where[0, 0]))
    assert seen == set(range(0, 5))  # rows 0..4 reachable: offsets 0..8 minus those that crop it away
    ref = v2.RandomCrop(32, padding=4)
    assert ref.padding == [4, 4, 4, 4]


def make_set(n=50):
    g = torch.Generator().manual_seed(1)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.arange(n) % 5, [str(i) for i in range(5)])


def test_loader_is_deterministic_per_seed_and_epoch_and_normalises():
    data = make_set()
    loader = TensorLoader(data, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"), train=True, padding=1, seed=3)
    first = [x for x, _, _ in loader]
    again = [x for x, _, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    loader.set_epoch(1)
    assert not torch.equal(first[0], next(iter(loader))[0])
    assert len(first) == len(loader) == 4  # 50 = 3 x 16 + 2
    test = TensorLoader(data, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"), train=False)
    x, y, index = next(iter(test))
    expected = (data.images[:16].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, data.labels[:16])
    assert index.tolist() == list(range(16))


def test_training_batches_carry_each_image_index_in_the_set():
    data = make_set()
    data.labels = torch.arange(50) * 7  # a label that names its image
    loader = TensorLoader(data, 16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), train=True, augment="none", seed=2)
    seen = []
    for x, y, index in loader:
        assert torch.equal(y, index * 7)
        assert torch.allclose(x, (data.images[index].float() / 255 - 0.5) / 0.25, atol=1e-5)
        seen += index.tolist()
    assert sorted(seen) == list(range(50)) and seen != sorted(seen)  # every image once, shuffled


def test_sharded_loader_splits_each_batch_between_ranks():
    data = make_set(48)
    full = TensorLoader(data, 16, (0, 0, 0), (1, 1, 1), torch.device("cpu"), train=True, augment="none", seed=5)
    shards = [TensorLoader(data, 8, (0, 0, 0), (1, 1, 1), torch.device("cpu"), train=True, augment="none", seed=5,
                           rank=r, world_size=2) for r in range(2)]
    seen_full = torch.cat([y for _, y, _ in full]).sort().values
    seen_shards = torch.cat([y for s in shards for _, y, _ in s]).sort().values
    assert torch.equal(seen_full, seen_shards)
