"""`synthetic`: random uint8 images with random labels, in any CIFAR- or ImageNet-like shape.

Nothing to learn here: it stands in for a real data set of the same shape where only speed and memory
are measured (benchmarks, GPU machines without the data). Deterministic from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kd.data.base import DataBundle, DataSource, DataSpec, ImageSet
from kd.data.registry import DATASETS


@dataclass
class SyntheticOptions:
    train_size: int = field(default=50000, metadata={"min": 1, "help": "training images"})
    test_size: int = field(default=10000, metadata={"min": 1, "help": "test images"})
    num_classes: int = field(default=100, metadata={"min": 2, "help": "classes"})
    image_size: int = field(default=32, metadata={"min": 8, "help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "generator seed"})


def random_set(n: int, o: SyntheticOptions, generator: torch.Generator) -> ImageSet:
    images = torch.randint(0, 256, (n, 3, o.image_size, o.image_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, o.num_classes, (n,), generator=generator)
    return ImageSet(images, labels, [f"class{i}" for i in range(o.num_classes)])


@DATASETS.register("synthetic", options=SyntheticOptions)
class Synthetic(DataSource):
    """Random images with random labels, for speed and memory measurements only (nothing to learn)."""

    def spec(self) -> DataSpec:
        o = self.options
        return DataSpec(o.num_classes, (o.image_size, o.image_size))

    def load(self) -> DataBundle:
        o = self.options
        generator = torch.Generator().manual_seed(o.seed)
        train, test = random_set(o.train_size, o, generator), random_set(o.test_size, o, generator)
        return DataBundle("synthetic", train, test, (0.5, 0.5, 0.5), (0.29, 0.29, 0.29), augment="crop_flip",
                          crop_padding=max(1, o.image_size // 8))
