"""Image folders: `imagefolder` (any root with train/ and test/ or val/ class folders) and `imagenet`.

A folder set small enough (`max_in_memory_mb`) is decoded once into uint8 tensors and trained from
memory like CIFAR; a larger one (ImageNet) streams through a DataLoader with the standard
RandomResizedCrop / Resize+CenterCrop pipeline. The layout is checked before anything is decoded, so
a wrong root fails at once with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd.data import DATASETS, channel_stats, takes_options
from kd.data.base import DataBundle, ImageSet
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


def scan_split(split: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (path, label) for every image below `split`."""
    classes = sorted(d.name for d in split.iterdir() if d.is_dir())
    if not classes:
        raise KDError(f"data folder {split} has no class folders; put each class's images in {split}/<class>/")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KDError(f"class folder {split / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        samples += [(p, label) for p in files]
    return classes, samples


def scan_root(root: str | None, test_names: tuple[str, ...]):
    if not root:
        raise KDError("this data set needs data_root: set data_root in the recipe (or data_root=PATH on the command line)")
    base = Path(root).expanduser()
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


def read_rgb(path) -> torch.Tensor:
    """One image file as an RGB uint8 (3, H, W) tensor."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise KDError(f"cannot decode image {path} ({err}); remove or replace the file") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_images(samples, image_size: int | None) -> torch.Tensor:
    """Decode every image to RGB uint8 (N, 3, H, W); resize to image_size x image_size when given."""
    from torchvision.transforms.v2.functional import resize

    out, first = [], None
    for path, _ in samples:
        img = read_rgb(path)
        if image_size:
            img = resize(img, [image_size, image_size], antialias=True)
        elif first is None:
            first = img.shape
        elif img.shape != first:
            raise KDError(
                f"images differ in size ({path} is {tuple(img.shape[1:])}, others {tuple(first[1:])}); "
                f"set imagefolder: {{image_size: N}} in the recipe to resize them all"
            )
        out.append(img)
    return torch.stack(out)


@dataclass
class FolderOptions:
    image_size: int | None = field(default=None, metadata={"min": 8, "help": "resize every image to this side; null keeps the files' size (must be uniform)"})
    max_in_memory_mb: int = field(default=4096, metadata={"min": 0, "help": "decode into memory when the decoded set is at most this large; else stream"})


@dataclass
class ImageNetOptions:
    image_size: int = field(default=224, metadata={"min": 8, "help": "training crop side"})
    workers: int = field(default=8, metadata={"min": 0, "help": "DataLoader worker processes"})


def _estimate_mb(samples, image_size: int | None) -> float:
    from PIL import Image

    side = image_size
    if side is None:
        with Image.open(samples[0][0]) as image:
            w, h = image.size
        return len(samples) * 3 * h * w / 2**20
    return len(samples) * 3 * side * side / 2**20


@DATASETS.register("imagefolder")
@takes_options(FolderOptions)
def load_imagefolder(options: FolderOptions, root=None, download=False) -> DataBundle:
    classes, train, test = scan_root(root, ("test", "val"))
    if _estimate_mb(train + test, options.image_size) > options.max_in_memory_mb:
        return _streaming_bundle("imagefolder", root, classes, train, test, options.image_size or 224, 4, None)
    from rich.progress import track

    def as_set(samples, what) -> ImageSet:
        images = decode_images(track(samples, description=f"decoding {what} images", transient=True),
                               options.image_size)
        return ImageSet(images, torch.tensor([label for _, label in samples]), classes)

    train_set, test_set = as_set(train, "train"), as_set(test, "test")
    mean, std = channel_stats(train_set.images)
    padding = max(1, train_set.images.shape[-1] // 8)
    return DataBundle("imagefolder", train_set, test_set, mean, std, augment="crop_flip", crop_padding=padding)


@DATASETS.register("imagenet")
@takes_options(ImageNetOptions)
def load_imagenet(options: ImageNetOptions, root=None, download=False) -> DataBundle:
    classes, train, test = scan_root(root, ("val",))
    return _streaming_bundle("imagenet", root, classes, train, test, options.image_size, options.workers,
                             IMAGENET_STATS)


def _streaming_bundle(name, root, classes, train, test, image_size, workers, stats) -> DataBundle:
    from kd.data.streaming import FileSet

    mean, std = stats or IMAGENET_STATS
    return DataBundle(name, FileSet(train, classes, image_size, train=True),
                      FileSet(test, classes, image_size, train=False), mean, std,
                      augment="resized_crop_flip", extra={"workers": workers})
