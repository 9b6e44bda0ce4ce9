"""Data sets too large for memory (ImageNet): files decoded by DataLoader workers.

Workers return uint8 tensors; normalisation happens on the device, as for in-memory sets, so the
host-to-device copy moves a quarter of the bytes float32 would.

As for in-memory sets, the order and the augmentation of epoch e depend only on (seed, e): the sampler
draws each epoch's order from a generator seeded with them and hands every image its own augmentation
seed, so a resumed run sees exactly the images an uninterrupted one would, whatever the number of workers.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kd.data.images import read_rgb
from kd.errors import KDError
from kd.data.loader import epoch_generator


class FileSet(Dataset):
    """(path, label) samples with the standard ImageNet train / eval transforms, as uint8 tensors, decoded by
    `workers` DataLoader processes."""

    boxes = None  # no object boxes: no CAM localisation scores

    def __init__(self, samples, classes, image_size: int, train: bool, workers: int = 4):
        from torchvision.transforms import v2

        self.samples, self.classes, self.side, self.train, self.workers = samples, classes, image_size, train, workers
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        if train:
            self.transform = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])
        else:
            resize = int(round(image_size * 256 / 224))  # the usual 256 -> 224 ratio
            self.transform = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.side, self.side

    def subset(self, index: torch.Tensor) -> "FileSet":
        return FileSet([self.samples[i] for i in index.tolist()], self.classes, self.side, self.train, self.workers)

    def for_evaluation(self) -> "FileSet":
        """The same files with the evaluation transform (resize + centre crop), for a validation split."""
        return FileSet(self.samples, self.classes, self.side, False, self.workers)

    def loader(self, bundle, batch_size: int, device, train: bool, seed: int = 0, rank: int = 0,
               world_size: int = 1, channels_last: bool = False) -> "StreamLoader":
        return StreamLoader(self, batch_size, bundle.mean, bundle.std, device, train, self.workers, seed, rank,
                            world_size, channels_last)

    def images_at(self, index) -> torch.Tensor:
        """uint8 images (N, 3, H, W) of the given indices, through this split's transform."""
        return torch.stack([self[(i, 0) if self.train else i][0] for i in torch.as_tensor(index).tolist()])

    def __getitem__(self, key):
        """key: an index, or (index, augmentation seed) from EpochSampler -> (image, label, index)."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[i]
        image = read_rgb(path)
        if seed is None:
            return self.transform(image), label, i
        with torch.random.fork_rng(devices=[]):  # the transforms draw from the global RNG; leave it as it was
            torch.manual_seed(seed)
            return self.transform(image), label, i


class EpochSampler(Sampler):
    """One rank's share of the data set in an order, with per-image augmentation seeds, fixed by (seed, epoch).

    Shuffled training sets drop the last n % world_size images so every rank gets as many (training steps
    are collective); evaluation keeps them all, each once, ranks taking every world_size-th image.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        order = torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch))
        return order[: self.size - self.size % self.world_size]

    def __len__(self) -> int:
        return len(range(self.rank, len(self._order()), self.world_size))

    def __iter__(self):
        order = self._order()
        mine = order[self.rank::self.world_size].tolist()
        if not self.shuffle:
            return iter(mine)
        generator = epoch_generator(self.seed + 1, self.epoch)  # a stream apart from the order's
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)[self.rank::self.world_size].tolist()
        return iter(zip(mine, seeds))


class StreamLoader:
    """DataLoader over a FileSet (pinned memory, persistent workers, non-blocking copies), normalised on the device."""

    def __init__(self, data: FileSet, batch_size: int, mean, std, device: torch.device, train: bool,
                 workers: int = 8, seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.sampler = EpochSampler(len(data), seed, shuffle=train, rank=rank, world_size=world_size)
        self.loader = DataLoader(data, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=train,
                                 generator=torch.Generator())  # its worker base seeds: not from the training RNG
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), mean_t / std_t

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            try:
                images, labels, index = next(batches)
            except StopIteration:
                return
            except KDError as err:  # a worker's error arrives wrapped in its traceback: keep the one line
                raise KDError(worker_message(err)) from None
            x = images.to(self.device, non_blocking=True).float().mul_(self.scale).sub_(self.shift)
            yield (x.contiguous(memory_format=self.memory_format), labels.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))


def worker_message(err: KDError) -> str:
    """The KDError line a DataLoader worker raised, without the worker traceback the DataLoader wraps it in."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else str(err)
    return last.split("KDError: ", 1)[1] if "KDError: " in last else last
