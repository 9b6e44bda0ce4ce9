"""kd.data.loader: crop_flip and random_crop_flip against torchvision's functional pad/crop/flip, and
TensorLoader's order, augmentation, normalisation, lengths and sharding against expectations written here."""
import torch
from torchvision.transforms.v2 import functional as TF

from kd.data.base import ImageSet
from kd.data.loader import TensorLoader, crop_flip, random_crop_flip

CPU = torch.device("cpu")


def reference_crop(image, padding, top, left, flip):
    """torchvision: pad with zeros, crop the original size at (top, left), then flip horizontally."""
    h, w = image.shape[-2:]
    out = TF.crop(TF.pad(image, [padding]), top, left, h, w)
    return TF.horizontal_flip(out) if flip else out


def which_crop(out, image, padding):
    """Every (top, left, flip) whose reference crop of `image` equals `out`."""
    return [(top, left, flip) for top in range(2 * padding + 1) for left in range(2 * padding + 1)
            for flip in (False, True) if torch.equal(reference_crop(image, padding, top, left, flip), out)]


def random_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def make_set(n=50, size=8):
    return ImageSet(random_images(n, size, seed=1), torch.arange(n) % 5, [str(i) for i in range(5)])


def test_crop_flip_equals_torchvision_for_the_same_draws():
    images = random_images(6, 32)
    rows, cols = torch.tensor([0, 8, 3, 4, 7, 1]), torch.tensor([8, 0, 5, 4, 2, 6])
    flips = torch.tensor([True, False, True, False, False, True])
    ours = crop_flip(images, 4, rows, cols, flips)
    assert ours.shape == images.shape and ours.dtype == torch.uint8
    for i in range(6):
        assert torch.equal(ours[i], reference_crop(images[i], 4, int(rows[i]), int(cols[i]), bool(flips[i])))


def test_crop_flip_of_a_hand_made_image():
    image = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3)  # [[1 2 3] [4 5 6] [7 8 9]]
    out = crop_flip(image, 1, torch.tensor([0]), torch.tensor([2]), torch.tensor([False]))
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]  # one row and column of zero padding
    out = crop_flip(image, 1, torch.tensor([2]), torch.tensor([1]), torch.tensor([True]))
    assert out[0, 0].tolist() == [[6, 5, 4], [9, 8, 7], [0, 0, 0]]


def test_random_crop_flip_is_some_torchvision_crop_with_offsets_in_range_and_fair_flips():
    # torchvision's RandomCrop(size, padding) draws each offset uniformly in [0, 2 * padding]
    images = random_images(1, 6).expand(300, -1, -1, -1).contiguous()  # one image, so the draws are comparable
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    draws = []
    for i in range(300):
        found = which_crop(out[i], images[i], 2)
        assert len(found) == 1, found  # random pixels: exactly one (top, left, flip) explains the output
        draws.append(found[0])
    assert {(top, left) for top, left, _ in draws} == {(t, l) for t in range(5) for l in range(5)}
    flipped = sum(flip for _, _, flip in draws)
    assert 100 < flipped < 200  # p = 0.5: 150 expected, these bounds are over 5 standard deviations wide
    again = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator alone decides
    other = random_crop_flip(images, 2, torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


def test_loader_is_deterministic_per_seed_and_epoch_and_normalises():
    data = make_set()
    args = (data, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU)
    loader = TensorLoader(*args, train=True, padding=1, seed=3)
    first = [x for x, _, _ in loader]
    assert len(first) == len(loader) == 4  # 50 = 3 x 16 + 2: the last two images make a fourth batch
    assert [len(x) for x in first] == [16, 16, 16, 2]
    fresh = TensorLoader(*args, train=True, padding=1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _, _ in fresh]))  # no history: a new loader agrees
    loader.set_epoch(1)
    assert not torch.equal(first[0], next(iter(loader))[0])
    other_seed = TensorLoader(*args, train=True, padding=1, seed=4)
    assert not torch.equal(first[0], next(iter(other_seed))[0])
    test = TensorLoader(*args, train=False)
    assert len(test) == 4  # evaluation keeps the last 2 images: 16 + 16 + 16 + 2
    batches = list(test)
    assert [len(y) for _, y, _ in batches] == [16, 16, 16, 2]
    x, y, index = batches[0]
    expected = (data.images[:16].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, data.labels[:16])
    assert index.tolist() == list(range(16))
    assert batches[-1][2].tolist() == [48, 49]


def test_loader_len_drops_a_single_image_training_batch_only():
    # 49 = 3 x 16 + 1: a one-image batch cannot train batch norm, so training has 3 batches, evaluation 4
    data = make_set(49)
    train = TensorLoader(data, 16, (0,) * 3, (1,) * 3, CPU, train=True, seed=0)
    test = TensorLoader(data, 16, (0,) * 3, (1,) * 3, CPU, train=False)
    assert len(train) == 3 and len(list(train)) == 3
    assert len(test) == 4 and [len(y) for _, y, _ in test] == [16, 16, 16, 1]


def test_training_batches_are_crops_and_flips_of_the_images_they_name():
    data = make_set(20, size=6)
    loader = TensorLoader(data, 8, (0, 0, 0), (1, 1, 1), CPU, train=True, padding=1, seed=7)
    crops, flips = set(), 0
    for x, y, index in loader:
        assert torch.equal(y, data.labels[index])
        pixels = (x * 255).round().to(torch.uint8)  # mean 0, std 1: x = image / 255
        for out, i in zip(pixels, index.tolist()):
            found = which_crop(out, data.images[i], 1)
            assert len(found) == 1, (i, found)
            crops.add(found[0][:2])
            flips += found[0][2]
    assert len(crops) > 3 and 0 < flips < 20  # different offsets and some flips: per-image draws


def test_augmentation_itself_changes_with_the_seed_and_the_epoch():
    # 16 copies of one image: the order cannot matter, so any difference is the crops and flips
    data = ImageSet(random_images(1, 6).expand(16, -1, -1, -1).contiguous(), torch.zeros(16, dtype=torch.long), ["a"])

    def crops(seed, epoch):
        loader = TensorLoader(data, 16, (0, 0, 0), (1, 1, 1), CPU, train=True, padding=1, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    assert torch.equal(crops(3, 0), crops(3, 0))
    assert not torch.equal(crops(3, 0), crops(3, 1)) and not torch.equal(crops(3, 0), crops(4, 0))


def test_flip_only_augmentation_flips_some_images_and_crops_none():
    data = make_set(32, size=6)
    loader = TensorLoader(data, 16, (0, 0, 0), (1, 1, 1), CPU, train=True, augment="flip", seed=1)
    flipped = 0
    for x, _, index in loader:
        for out, i in zip((x * 255).round().to(torch.uint8), index.tolist()):
            image = data.images[i]
            assert torch.equal(out, image) or torch.equal(out, image.flip(-1))
            flipped += torch.equal(out, image.flip(-1))
    assert 0 < flipped < 32


def test_training_batches_carry_each_image_index_in_the_set():
    data = make_set()
    data.labels = torch.arange(50) * 7  # a label that names its image
    loader = TensorLoader(data, 16, (0.5,) * 3, (0.25,) * 3, CPU, train=True, augment="none", seed=2)
    seen = []
    for x, y, index in loader:
        assert torch.equal(y, index * 7)
        assert torch.allclose(x, (data.images[index].float() / 255 - 0.5) / 0.25, atol=1e-5)
        seen += index.tolist()
    assert sorted(seen) == list(range(50)) and seen != sorted(seen)  # every image once, shuffled


def test_sharded_training_loader_gives_each_rank_its_own_equal_share():
    # 51 images, 2 ranks: the last image is dropped so both ranks take 25 steps' worth; batches of 8 -> 3 batches
    data = make_set(51)
    shards = [TensorLoader(data, 8, (0, 0, 0), (1, 1, 1), CPU, train=True, augment="none", seed=5,
                           rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    seen = [[i for _, _, index in s for i in index.tolist()] for s in shards]
    assert [len(s) for s in seen] == [24, 24]
    assert not set(seen[0]) & set(seen[1])
    assert all(0 <= i < 51 for s in seen for i in s)
    full = TensorLoader(data, 16, (0, 0, 0), (1, 1, 1), CPU, train=True, augment="none", seed=5)
    order = [i for _, _, index in full for i in index.tolist()]
    assert seen[0] == order[0:48:2] and seen[1] == order[1:48:2]  # one permutation, split by rank


def test_sharded_evaluation_loader_takes_every_world_size_th_image():
    data = make_set(10)
    shards = [TensorLoader(data, 2, (0, 0, 0), (1, 1, 1), CPU, train=False, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # 4, 3 and 3 images in batches of 2
    assert [[i for _, _, index in s for i in index.tolist()] for s in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_channels_last_batches():
    loader = TensorLoader(make_set(8), 4, (0, 0, 0), (1, 1, 1), CPU, train=True, seed=0, channels_last=True)
    x, _, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
