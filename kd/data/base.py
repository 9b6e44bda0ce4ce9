"""What every data set declares (DataSpec), loads (DataBundle) and how its entries are written (DataSource)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kd.data.loader import TensorLoader


@dataclass(frozen=True)
class DataSpec:
    """What a data set looks like to a model, known without decoding a single image (as timm's model configs
    are known without building the model): the class count, the image size, and, once loaded, the size of the
    training split and the label of each of its images (for methods that sample other images by class)."""

    num_classes: int
    image_size: tuple[int, int]
    train_size: int | None = None
    train_labels: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, *self.image_size)


@dataclass
class ImageSet:
    """A data set held in memory as uint8 images; small enough to live on the device whole.

    images: (N, 3, H, W) uint8; labels: (N,) int64; boxes: (N, 4) int64 (x0, y0, x1, y1), pixel
    bounds of the object with x1/y1 exclusive, or None when the data set has no boxes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def images_at(self, index) -> torch.Tensor:
        return self.images[index]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        boxes = None if self.boxes is None else self.boxes[index]
        return ImageSet(self.images[index], self.labels[index], self.classes, boxes)

    def for_evaluation(self) -> "ImageSet":
        return self  # augmentation is the loader's business, by split

    def loader(self, bundle: "DataBundle", batch_size: int, device, train: bool, seed: int = 0, rank: int = 0,
               world_size: int = 1, channels_last: bool = False) -> TensorLoader:
        """Batches from memory, resident on the device, augmented there (kd.data.loader)."""
        return TensorLoader(self, batch_size, bundle.mean, bundle.std, device, train, bundle.augment,
                            bundle.crop_padding, seed, rank, world_size, channels_last)


@dataclass
class DataBundle:
    """Train and test splits (and the validation split held out of train, when asked for) plus what the
    loaders need to augment and normalise them. A split is an ImageSet (in memory) or a streamed FileSet
    (kd.data.streaming); each makes its own loader."""

    name: str
    train: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str = "crop_flip"  # random crop with `crop_padding` + horizontal flip; "none" to switch off
    crop_padding: int = 4
    val: ImageSet | None = None

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size

    @property
    def spec(self) -> DataSpec:
        return DataSpec(self.num_classes, self.image_size, len(self.train), self.train.labels)

    def loader(self, split: str, batch_size: int, device, seed: int = 0, rank: int = 0, world_size: int = 1,
               channels_last: bool = False):
        """Batches of (normalised images, labels, indices into the split) of split 'train', 'val' or 'test';
        only 'train' is shuffled and augmented."""
        return getattr(self, split).loader(self, batch_size, device, split == "train", seed, rank, world_size,
                                           channels_last)


@dataclass
class NoOptions:
    """The options of a data set that has none."""


class DataSource:
    """A registered data set: `spec()` says what it looks like without loading it, `load()` loads it.

    Subclasses are registered with `@DATASETS.register("name", options=TheirOptions)`; the recipe's section
    named after the data set is validated against those options. Their docstring's first line is what
    `run_kd.py list datasets` shows."""

    Options = NoOptions

    def __init__(self, options, root: str | None = None, download: bool = False):
        self.options, self.root, self.download = options, root, download

    def spec(self) -> DataSpec:
        raise NotImplementedError

    def load(self) -> DataBundle:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n")[0]
