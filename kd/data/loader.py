"""Batches from a data set held in memory (on the training device when it fits).

The whole uint8 data set is moved to the device once; each batch is gathered, randomly cropped
(zero padding, like torchvision's RandomCrop(size, padding)), flipped and normalised there with
batched tensor operations: no DataLoader workers and no per-image Python, which is what makes small
data sets fast on both the CPU and the GPU.

The order and the augmentation of epoch e depend only on (seed, e), so a resumed run sees exactly the
batches an uninterrupted one would, and students trained one after another see the same batches as
students trained side by side.
"""
from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from the zero-padded batch, then a horizontal flip with p=0.5.

    The offsets are drawn as torchvision's RandomCrop draws them (uniform in [0, 2*padding]); one
    crop offset pair and one flip per image.
    """
    b, _, h, w = images.shape
    rows0 = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    cols0 = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    return crop_flip(images, padding, rows0, cols0, flips)


def crop_flip(images: torch.Tensor, padding: int, rows0: torch.Tensor, cols0: torch.Tensor,
              flips: torch.Tensor) -> torch.Tensor:
    """Crop each image at its (row, col) offset in the zero-padded batch; flip where `flips` is set."""
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = rows0.to(device)[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = cols0.to(device)[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flips.to(device)[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch = torch.arange(b, device=device)[:, None, None, None]
    chan = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class TensorLoader:
    """Iterates (normalised float images, labels, indices) over an ImageSet resident on `device`.

    The indices are each image's position in the set, the same on every torchrun rank (methods that keep
    per-image state, such as CRD's memory banks, need them)."""

    def __init__(self, data, batch_size: int, mean, std, device: torch.device, train: bool,
                 augment: str = "crop_flip", padding: int = 4, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else "none"
        self.padding = padding
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale - shift
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.world_size > 1:  # every rank draws the same permutation and keeps its own share
            usable = (n // self.world_size) * self.world_size if self.train else n
            order = order[:usable][self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            n = n // self.world_size if self.train else len(range(self.rank, n, self.world_size))
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > (1 if self.train else 0) else 0)

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        order = self._order(generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.train and len(index) < 2:  # batch norm cannot train on a single image
                break
            index = index.to(self.images.device)
            images = self.images[index]
            if self.augment == "crop_flip":
                images = random_crop_flip(images, self.padding, generator)
            elif self.augment == "flip":
                flips = torch.rand(len(index), generator=generator) < 0.5
                images = torch.where(flips.to(images.device)[:, None, None, None], images.flip(3), images)
            x = images.float().mul_(self.scale).sub_(self.shift)
            yield x.contiguous(memory_format=self.memory_format), self.labels[index], index
