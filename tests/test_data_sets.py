"""Data set entries: image folders (made locally and from the shared CIFAR-10 JPEG copy), CIFAR offline,
balanced subsets, and the shapes entry."""
import tarfile

import pytest
import torch
from PIL import Image

from conftest import shared_file
from kd.data import balanced_subset, load_data, DATASETS
from kd.data.folder import FolderOptions
from kd.data.shapes_set import ShapesOptions
from kd.errors import KDError


def make_folder(root, classes=("cat", "dog"), test_classes=None, per_class=3, size=8, test="test"):
    for split, names in (("train", classes), (test, test_classes or classes)):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (40 * c + i,) * 3).save(root / split / name / f"{i}.png")
    return root


def test_imagefolder_loads_into_memory_with_labels_by_folder(tmp_path):
    root = make_folder(tmp_path / "data", test="val")
    bundle = load_data("imagefolder", FolderOptions(), str(root))
    assert bundle.train.classes == ["cat", "dog"] and bundle.num_classes == 2
    assert bundle.train.images.shape == (6, 3, 8, 8) and bundle.train.images.dtype == torch.uint8
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert bundle.train.images[4, 0, 0, 0].item() == 41  # dog/1.png
    resized = load_data("imagefolder", FolderOptions(image_size=16), str(root))
    assert resized.train.images.shape[-2:] == (16, 16)


@pytest.mark.parametrize("breakage, message", [
    ("missing", "does not exist"),
    ("no_test", "has no test split"),
    ("classes_differ", "train and test class folders differ"),
    ("empty_class", "holds no images"),
    ("no_root", "needs data_root"),
])
def test_bad_image_folders_get_a_clear_line(tmp_path, breakage, message):
    root = tmp_path / "data"
    if breakage == "no_test":
        (root / "train" / "cat").mkdir(parents=True)
    elif breakage == "classes_differ":
        make_folder(root, test_classes=("cat", "cow"))
    elif breakage == "empty_class":
        make_folder(root)
        (root / "train" / "emu").mkdir()
        (root / "test" / "emu").mkdir()
    with pytest.raises(KDError, match=message):
        load_data("imagefolder", FolderOptions(), None if breakage == "no_root" else str(root))


def test_cifar_offline_says_where_it_looked(tmp_path):
    with pytest.raises(KDError, match=r"cifar100 not found: looked for .*cifar-100-python.*download: true"):
        load_data("cifar100", DATASETS.get("cifar100").Options(), str(tmp_path))


def test_balanced_subset_is_fixed_and_balanced():
    bundle = load_data("shapes", ShapesOptions(train_size=200, test_size=20, num_classes=4))
    a, b = balanced_subset(bundle.train, 10), balanced_subset(bundle.train, 10)
    assert torch.equal(a.images, b.images) and torch.bincount(a.labels).tolist() == [10] * 4
    assert a.boxes is not None and len(a.boxes) == 40
    with pytest.raises(KDError, match="has only"):
        balanced_subset(bundle.train, 1000)


def test_shapes_entry_normalises_with_its_own_statistics():
    bundle = load_data("shapes", ShapesOptions(train_size=100, test_size=20))
    assert bundle.num_classes == 10 and bundle.image_size == (32, 32)
    x = bundle.train.images.float() / 255
    assert torch.allclose(torch.tensor(bundle.mean), x.mean((0, 2, 3)), atol=1e-4)


def test_cifar10_jpeg_copy_loads_as_an_image_folder(tmp_path):
    archive = shared_file("data", "cifar10-jpeg.tar.gz")
    wanted = {"airplane", "cat"}
    with tarfile.open(archive) as tar:
        members = []
        counts = {}
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-2] in wanted:
                key = (parts[-3], parts[-2])
                if counts.get(key, 0) < 5:
                    counts[key] = counts.get(key, 0) + 1
                    members.append(member)
            if len(counts) == 4 and all(v == 5 for v in counts.values()):
                break
        tar.extractall(tmp_path, members=members, filter="data")
    root = next(p.parent for p in tmp_path.rglob("train"))
    bundle = load_data("imagefolder", FolderOptions(), str(root))
    assert bundle.train.classes == ["airplane", "cat"]
    assert bundle.train.images.shape == (10, 3, 32, 32) and bundle.test.images.shape == (10, 3, 32, 32)


def test_val_split_is_held_out_per_class_disjoint_and_the_same_every_time():
    options = ShapesOptions(train_size=300, test_size=20, num_classes=4)
    a = load_data("shapes", options, val_split=7, subset_per_class=40)
    b = load_data("shapes", options, val_split=7, subset_per_class=40)
    assert torch.bincount(a.val.labels).tolist() == [7] * 4 and torch.bincount(a.train.labels).tolist() == [40] * 4
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    whole = load_data("shapes", options).train
    key = lambda images: {bytes(img.flatten().tolist()) for img in images}  # noqa: E731  (an image by its pixels)
    assert not key(a.val.images) & key(a.train.images)  # no image is in both
    assert key(a.val.images) | key(a.train.images) <= key(whole.images)
    alone = load_data("shapes", options, subset_per_class=40)
    assert not torch.equal(alone.train.images, a.train.images)  # the subset is drawn from what the split leaves
    with pytest.raises(KDError, match="val_split is 100, but class"):
        load_data("shapes", options, val_split=100)


def tiny_archive(tmp_path, name, size=32, per_class=3):
    """A .tar.gz of a JPEG folder in the CIFAR copies' layout (train/<class>/, test/<class>/)."""
    root = make_folder(tmp_path / "src" / "copy", classes=("ant", "bee"), per_class=per_class, size=size)
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    return archive


def test_an_archive_data_root_is_unpacked_once_into_the_cache_and_decoded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DATA", str(tmp_path / "cache"))
    archive = tiny_archive(tmp_path, "mine.tar.gz")
    bundle = load_data("cifar10", DATASETS.get("cifar10").Options(), str(archive))
    assert bundle.train.classes == ["ant", "bee"] and bundle.train.images.shape == (6, 3, 32, 32)
    assert bundle.mean == (0.4914, 0.4822, 0.4465)  # CIFAR-10's standard statistics, whatever the source
    (unpacked,) = (tmp_path / "cache").iterdir()
    assert unpacked.name.startswith("mine-") and (unpacked / ".kd-decoded-native.pt").is_file()
    calls = []
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: calls.append(a))  # a second load must not unpack again
    again = load_data("imagefolder", FolderOptions(), str(archive))
    assert calls == [] and torch.equal(again.train.images, bundle.train.images)


def test_a_damaged_copy_of_a_known_archive_and_a_wrong_image_size_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DATA", str(tmp_path / "cache"))
    impostor = tiny_archive(tmp_path, "cifar100-jpeg.tar.gz")  # named like the published copy, but another file
    with pytest.raises(KDError, match=r"has sha256 [0-9a-f]{64}, but the published cifar100-jpeg.tar.gz has 34a385"):
        load_data("cifar100", DATASETS.get("cifar100").Options(), str(impostor))
    big = tiny_archive(tmp_path / "b", "big.tar.gz", size=40)
    with pytest.raises(KDError, match="are 40x40, not 32x32"):
        load_data("cifar100", DATASETS.get("cifar100").Options(), str(big))


def test_the_shared_cifar_archives_have_the_published_sha256():
    from kd.data.archive import KNOWN_SHA256, sha256

    for name, digest in KNOWN_SHA256.items():
        assert sha256(shared_file("data", name)) == digest


@pytest.mark.parametrize("suffix", ["png", "ppm"])  # a 16-bit PNG opens as mode I;16, a 16-bit PGM as mode I
def test_wide_grayscale_images_are_scaled_to_8_bits_not_saturated(tmp_path, suffix):
    """16-bit grayscale PNGs once decoded to all-white images (PIL's convert clips at 255): in memory and streamed,
    a 16-bit value v becomes round(v * 255 / 65535) in every channel."""
    import numpy as np

    from kd.data.streaming import FileSet

    ramp = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)  # 8-bit 0, 1, 128, 255
    flat = np.full((4, 4), 32896, dtype=np.uint16)
    for split in ("train", "test"):
        for name, values in (("a", ramp), ("b", flat)):
            (tmp_path / split / name).mkdir(parents=True)
            image = Image.fromarray(values) if suffix == "png" else Image.fromarray(values.astype(np.int32), mode="I")
            image.save(tmp_path / split / name / f"0.{suffix}")
    assert Image.open(tmp_path / "train" / "a" / f"0.{suffix}").mode == ("I;16" if suffix == "png" else "I")
    data = load_data("imagefolder", FolderOptions(), str(tmp_path))
    assert torch.equal(data.train.images[0], torch.tensor([0, 1, 128, 255], dtype=torch.uint8).expand(3, 4, 4))
    streamed = FileSet([(tmp_path / "test" / "b" / f"0.{suffix}", 1)], ["a", "b"], 4, train=False)
    assert torch.equal(streamed[0][0], torch.full((3, 4, 4), 128, dtype=torch.uint8))  # resized and cropped: still flat


def test_a_grayscale_image_with_values_beyond_16_bits_is_refused_in_one_line():
    import numpy as np

    from kd.data.images import gray_to_8_bits

    with pytest.raises(KDError, match="x.tif: a I image with values outside 0..65535, which is no 8- or 16-bit image"):
        gray_to_8_bits(np.full((8, 8), 70000, dtype=np.int32), "I", "x.tif")


def test_an_archive_with_its_data_one_folder_down_loads(tmp_path, monkeypatch):
    """The lossless CIFAR-100 copy holds cifar100/train/, cifar100/test/ and a README beside them."""
    monkeypatch.setenv("KD_DATA", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "src" / "cifar100", classes=("ant", "bee"), size=32)
    (root / "README.txt").write_text("provenance\n")
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar100")
    bundle = load_data("cifar100", DATASETS.get("cifar100").Options(), str(archive))
    assert bundle.train.classes == ["ant", "bee"] and len(bundle.test) == 6


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_cut_archive_is_one_line_that_names_it_and_leaves_nothing_in_the_cache(tmp_path, monkeypatch, cut):
    monkeypatch.setenv("KD_DATA", str(tmp_path / "cache"))
    whole = tiny_archive(tmp_path, "whole.tar.gz", per_class=40).read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(whole[:int(len(whole) * cut)])
    with pytest.raises(KDError, match=f"cannot unpack {archive}: the archive is damaged or cut short") as err:
        load_data("cifar10", DATASETS.get("cifar10").Options(), str(archive))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
