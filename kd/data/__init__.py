"""Data sets, registered by name, each loaded into a DataBundle.

An entry is a function `load(options, root, download) -> DataBundle` registered with
`@DATASETS.register("name")`, carrying its options dataclass as `load.Options` (the recipe's section
named after the data set is validated against it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kd.data.base import DataBundle, ImageSet
from kd.errors import KDError
from kd.registry import Registry

DATASETS: Registry = Registry("data set")


@dataclass
class NoOptions:
    pass


def takes_options(options_cls):
    """Decorator: attach the options dataclass a data-set loader accepts."""
    def attach(fn):
        fn.Options = options_cls
        return fn
    return attach


def balanced_subset(data: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """`per_class` images of every class, drawn with a fixed seed so every run gets the same subset."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(data.classes)):
        members = torch.nonzero(data.labels == c).flatten()
        if len(members) < per_class:
            raise KDError(
                f"subset_per_class is {per_class}, but class '{data.classes[c]}' has only "
                f"{len(members)} training images; lower subset_per_class"
            )
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(picks).sort().values
    return data.subset(index)


def load_data(name: str, options, root: str | None = None, download: bool = False,
              subset_per_class: int | None = None) -> DataBundle:
    bundle = DATASETS.get(name)(options, root, download)
    if subset_per_class:
        bundle.train = balanced_subset(bundle.train, subset_per_class)
    return bundle


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale (chunked to bound memory)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double() / 255.0
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


from kd.data import folder, shapes_set, synthetic, torchvision_sets  # noqa: E402,F401  (registration, after the helpers it uses)

__all__ = ["DATASETS", "DataBundle", "ImageSet", "load_data", "balanced_subset", "channel_stats"]
