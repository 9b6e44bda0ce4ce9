"""Loading a data set by name, with the recipe's balanced training subset."""
from __future__ import annotations

import torch

from kd.data.base import DataBundle, DataSpec
from kd.data.registry import DATASETS
from kd.errors import KDError


VAL_SEED = 12345  # the validation split's own stream, apart from the subset's (seed 0)


def per_class_picks(data, per_class: int, seed: int, option: str) -> torch.Tensor:
    """Sorted indices of `per_class` images of every class, drawn with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(data.classes)):
        members = torch.nonzero(data.labels == c).flatten()
        if len(members) < per_class:
            raise KDError(f"{option} is {per_class}, but class '{data.classes[c]}' has only {len(members)} "
                          f"training images left; lower {option}")
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def balanced_subset(data, per_class: int, seed: int = 0):
    """`per_class` images of every class, drawn with a fixed seed so every run gets the same subset."""
    return data.subset(per_class_picks(data, per_class, seed, "subset_per_class"))


def hold_out(data, per_class: int):
    """(the rest, a validation split of `per_class` images of every class), disjoint, the same in every run."""
    val = per_class_picks(data, per_class, VAL_SEED, "val_split")
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[val] = False
    return data.subset(torch.nonzero(keep).flatten()), data.subset(val).for_evaluation()


def data_spec(name: str, options, root: str | None = None) -> DataSpec:
    """Class count and image size of a data set, without loading it."""
    return DATASETS.get(name)(options, root).spec()


def load_data(name: str, options, root: str | None = None, download: bool = False,
              subset_per_class: int | None = None, val_split: int | None = None) -> DataBundle:
    """The data set, with `val_split` images per class held out of its training set first, then the training
    subset drawn from what is left (so the two never overlap, whatever the sizes)."""
    bundle = DATASETS.get(name)(options, root, download).load()
    if val_split:
        bundle.train, bundle.val = hold_out(bundle.train, val_split)
    if subset_per_class:
        bundle.train = balanced_subset(bundle.train, subset_per_class)
    return bundle
