"""Image folders: `imagefolder` (any root with train/ and test/ or val/ class folders) and `imagenet`.

A folder set small enough (`max_in_memory_mb`) is decoded once into uint8 tensors and trained from
memory like CIFAR; a larger one (ImageNet) streams through a DataLoader with the standard
RandomResizedCrop / Resize+CenterCrop pipeline. The layout is checked before anything is decoded, so
a wrong root fails at once with one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd.data.archive import data_cache, is_archive, unpacked
from kd.data.base import DataBundle, DataSource, DataSpec, ImageSet
from kd.data.images import channel_stats, decode_images
from kd.data.registry import DATASETS
from kd.data.streaming import FileSet
from kd.errors import KDError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _split_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise KDError(
        f"data folder {root} has no {what} split: expected a sub-folder named {' or '.join(names)} "
        f"holding one folder per class; set data_root to the folder that contains them"
    )


def hidden(path: Path, below: Path) -> bool:
    """Whether a path has a hidden part (.ipynb_checkpoints/, .DS_Store, ...) below `below`: never data."""
    return any(part.startswith(".") for part in path.relative_to(below).parts)


def scan_split(split: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (path, label) for every image below `split`. Hidden entries
    (names starting with '.', such as .ipynb_checkpoints/ or .DS_Store) are neither classes nor images."""
    classes = sorted(d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise KDError(f"data folder {split} has no class folders; put each class's images in {split}/<class>/")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split / name).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and not hidden(p, split / name))
        if not files:
            raise KDError(f"class folder {split / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        samples += [(p, label) for p in files]
    return classes, samples


def scan_root(root: str | None, test_names: tuple[str, ...]):
    if not root:
        raise KDError("this data set needs data_root: set data_root in the recipe (or data_root=PATH on the command line)")
    base = Path(root).expanduser()
    if base.is_file():
        raise KDError(f"data_root {base} is a file, not a folder; point data_root at the folder holding train/ and "
                      f"{test_names[0]}/")
    if not base.is_dir():
        raise KDError(f"data_root {base} does not exist; point data_root at the folder holding train/ and {test_names[0]}/")
    train_dir, test_dir = _split_dir(base, ("train",), "training"), _split_dir(base, test_names, "test")
    train_classes, train = scan_split(train_dir)
    test_classes, test = scan_split(test_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise KDError(
            f"data folder {base}: train and test class folders differ (only in train: {only_train or '-'}; "
            f"only in test: {only_test or '-'}); make both splits hold the same class folders"
        )
    return train_classes, train, test


@dataclass
class FolderOptions:
    image_size: int | None = field(default=None, metadata={"min": 8, "help": "resize every image to this side; null keeps the files' size (must be uniform)"})
    max_in_memory_mb: int = field(default=4096, metadata={"min": 0, "help": "decode into memory when the decoded set is at most this large; else stream"})
    workers: int | None = field(default=None, metadata={"min": 0, "help": "DataLoader worker processes when streamed; null: min(4, CPU cores)"})


@dataclass
class ImageNetOptions:
    image_size: int = field(default=224, metadata={"min": 8, "help": "training crop side"})
    workers: int | None = field(default=None, metadata={"min": 0, "help": "DataLoader worker processes; null: min(8, CPU cores)"})


def decoded_splits(root: Path, classes, train, test, image_size: int | None) -> tuple[ImageSet, ImageSet]:
    """The train and test images of a folder decoded into uint8 tensors. For a folder kd unpacked itself (an
    archive in the data cache) the tensors are kept beside the files, so later runs skip the decoding."""
    from rich.progress import track

    cache = root / f".kd-decoded-{image_size or 'native'}.pt" if root.is_relative_to(data_cache()) else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["classes"] == classes and len(saved["train_labels"]) == len(train):
            return (ImageSet(saved["train_images"], saved["train_labels"], classes),
                    ImageSet(saved["test_images"], saved["test_labels"], classes))

    def as_set(samples, what) -> ImageSet:
        images = decode_images(track(samples, description=f"decoding {what} images", transient=True), image_size)
        return ImageSet(images, torch.tensor([label for _, label in samples]), classes)

    sets = as_set(train, "train"), as_set(test, "test")
    if cache is not None:  # written whole or not at all (renamed into place), so a reader never sees half a file
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            torch.save({"classes": classes, "train_images": sets[0].images, "train_labels": sets[0].labels,
                        "test_images": sets[1].images, "test_labels": sets[1].labels}, partial)
            os.replace(partial, cache)
        except OSError:
            partial.unlink(missing_ok=True)  # no room for the cache: the next run decodes again, nothing else lost
    return sets


def image_side(path) -> tuple[int, int]:
    """(height, width) of an image file from its header, with the same one-line error as a full decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            w, h = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise KDError(f"cannot decode image {path} ({err}); remove or replace the file") from err
    return h, w


def _estimate_mb(samples, image_size: int | None) -> float:
    h, w = (image_size, image_size) if image_size else image_side(samples[0][0])
    return len(samples) * 3 * h * w / 2**20


@DATASETS.register("imagefolder", options=FolderOptions)
class ImageFolder(DataSource):
    """Any folder with train/ and test/ (or val/) holding one sub-folder of images per class."""

    def spec(self) -> DataSpec:
        classes, train, test = scan_root(str(unpacked(self.root)) if is_archive(self.root) else self.root,
                                         ("test", "val"))
        side = self.options.image_size
        if side is None and _estimate_mb(train + test, None) > self.options.max_in_memory_mb:
            side = 224  # a streamed folder without image_size is cropped to ImageNet's size, as load() does
        return DataSpec(len(classes), (side, side) if side else image_side(train[0][0]))

    def load(self) -> DataBundle:
        options = self.options
        root = str(unpacked(self.root)) if is_archive(self.root) else self.root
        classes, train, test = scan_root(root, ("test", "val"))
        if _estimate_mb(train + test, options.image_size) > options.max_in_memory_mb:
            return _streaming_bundle("imagefolder", classes, train, test, options.image_size or 224,
                                     default_workers(options.workers, 4), None)
        train_set, test_set = decoded_splits(Path(root), classes, train, test, options.image_size)
        mean, std = channel_stats(train_set.images)
        padding = max(1, train_set.images.shape[-1] // 8)
        return DataBundle("imagefolder", train_set, test_set, mean, std, augment="crop_flip", crop_padding=padding)


@DATASETS.register("imagenet", options=ImageNetOptions)
class ImageNet(DataSource):
    """ImageNet-style folders (train/ and val/), streamed from disk with the standard crops."""

    def spec(self) -> DataSpec:
        classes, _, _ = scan_root(self.root, ("val",))
        return DataSpec(len(classes), (self.options.image_size, self.options.image_size))

    def load(self) -> DataBundle:
        classes, train, test = scan_root(self.root, ("val",))
        return _streaming_bundle("imagenet", classes, train, test, self.options.image_size,
                                 default_workers(self.options.workers, 8), IMAGENET_STATS)


def default_workers(asked: int | None, most: int) -> int:
    """The workers asked for, else `most` but no more than the CPU cores (more only compete for them)."""
    import os

    return asked if asked is not None else min(most, os.cpu_count() or 1)


def _streaming_bundle(name, classes, train, test, image_size, workers, stats) -> DataBundle:
    mean, std = stats or IMAGENET_STATS
    return DataBundle(name, FileSet(train, classes, image_size, train=True, workers=workers),
                      FileSet(test, classes, image_size, train=False, workers=workers), mean, std,
                      augment="resized_crop_flip")
