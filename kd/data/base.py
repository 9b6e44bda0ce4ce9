"""What every data set hands to the trainer."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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


@dataclass
class DataBundle:
    """Train and test splits plus what the loader needs to augment and normalise them."""

    name: str
    train: ImageSet  # or a streamed set (kd.data.streaming.FileSet) with the same interface but no .images
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str = "crop_flip"  # random crop with `crop_padding` + horizontal flip; "none" to switch off
    crop_padding: int = 4
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size
