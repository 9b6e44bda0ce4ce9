"""CIFAR-10 and CIFAR-100, held in memory as uint8 tensors, from any of three sources:
- `data_root` is a published copy's archive (../shared/data/cifar100-png.tar.gz, lossless, or a JPEG copy such as
  cifar100-jpeg.tar.gz): checked, unpacked once into the data cache and decoded once (kd.data.archive);
- `data_root` is a folder with train/ and test/ class folders (such a copy unpacked), whose sorted class names
  are the official label order;
- otherwise torchvision's own files (`cifar-100-python` below data_root, default ~/.cache/kd/data or
  $KD_DATA), fetched only when the recipe says `download: true`.
Offline, a missing data set is a one-line error that says where it was looked for and how to get it.
Normalisation uses the standard per-channel statistics of the training set, whatever the source.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kd.data.archive import data_cache, is_archive, unpacked
from kd.data.base import DataBundle, DataSource, DataSpec, ImageSet
from kd.data.registry import DATASETS
from kd.errors import KDError

# Per-channel statistics of the training sets, the values the benchmark code normalises with.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def default_root() -> Path:
    return data_cache()


def _load_cifar(name: str, root: str | None, download: bool) -> DataBundle:
    from torchvision import datasets

    mean, std = CIFAR_STATS[name]
    folder = unpacked(root) if is_archive(root) else Path(root).expanduser() if root else None
    if folder is not None and (folder / "train").is_dir():
        from kd.data.folder import decoded_splits, scan_root

        classes, train, test = scan_root(str(folder), ("test",))
        train_set, test_set = decoded_splits(folder, classes, train, test, None)
        if train_set.image_size != (32, 32):
            raise KDError(f"{name}: the images in {folder} are {train_set.image_size[0]}x{train_set.image_size[1]}, "
                          f"not 32x32; point data_root at a CIFAR copy, or use dataset: imagefolder")
        return DataBundle(name, train_set, test_set, mean, std, augment="crop_flip", crop_padding=4)
    base = Path(root).expanduser() if root else default_root()
    if base.is_file():
        raise KDError(f"{name}: data_root {base} is a file, but neither a data archive (.tar.gz) nor a folder; "
                      f"point data_root at the folder that holds '{FOLDERS[name]}' or at the archive "
                      f"(e.g. ../shared/data/{name}-{'png' if name == 'cifar100' else 'jpeg'}.tar.gz)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if not download and not (base / FOLDERS[name]).is_dir():
        raise KDError(
            f"{name} not found: looked for {base / FOLDERS[name]}; set data_root to the folder that "
            f"holds '{FOLDERS[name]}', to a copy's archive or folder (e.g. "
            f"../shared/data/{name}-{'png' if name == 'cifar100' else 'jpeg'}.tar.gz), or set download: true in the recipe to fetch it"
        )
    try:
        splits = [cls(str(base), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as err:  # corrupt files, or a download that failed offline
        raise KDError(f"{name} could not be loaded from {base}: {err}") from err

    def as_set(split) -> ImageSet:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return ImageSet(images, torch.tensor(split.targets, dtype=torch.long), list(split.classes))

    return DataBundle(name, as_set(splits[0]), as_set(splits[1]), mean, std, augment="crop_flip", crop_padding=4)


@DATASETS.register("cifar10")
class Cifar10(DataSource):
    """CIFAR-10: 50,000 training and 10,000 test images of 32x32 in 10 classes."""

    def spec(self) -> DataSpec:
        return DataSpec(10, (32, 32))

    def load(self) -> DataBundle:
        return _load_cifar("cifar10", self.root, self.download)


@DATASETS.register("cifar100")
class Cifar100(DataSource):
    """CIFAR-100: 50,000 training and 10,000 test images of 32x32 in 100 classes."""

    def spec(self) -> DataSpec:
        return DataSpec(100, (32, 32))

    def load(self) -> DataBundle:
        return _load_cifar("cifar100", self.root, self.download)
