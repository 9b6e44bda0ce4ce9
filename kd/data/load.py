"""Loading a data set by name, with the recipe's balanced training subset."""
from __future__ import annotations

import torch

from kd.data.base import DataBundle, DataSpec
from kd.data.registry import DATASETS
from kd.errors import KDError


def balanced_subset(data, per_class: int, seed: int = 0):
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


def data_spec(name: str, options, root: str | None = None) -> DataSpec:
    """Class count and image size of a data set, without loading it."""
    return DATASETS.get(name)(options, root).spec()


def load_data(name: str, options, root: str | None = None, download: bool = False,
              subset_per_class: int | None = None) -> DataBundle:
    bundle = DATASETS.get(name)(options, root, download).load()
    if subset_per_class:
        bundle.train = balanced_subset(bundle.train, subset_per_class)
    return bundle
