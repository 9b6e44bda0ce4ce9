"""Data sets too large for memory (ImageNet): files decoded by DataLoader workers.

Workers return uint8 tensors; normalisation happens on the device, as for in-memory sets, so the
host-to-device copy moves a quarter of the bytes float32 would.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class FileSet(Dataset):
    """(path, label) samples with the standard ImageNet train / eval transforms, as uint8 tensors."""

    def __init__(self, samples, classes, image_size: int, train: bool):
        from torchvision.transforms import v2

        self.samples, self.classes = samples, classes
        self.labels = torch.tensor([label for _, label in samples])
        if train:
            self.transform = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])
        else:
            resize = int(round(image_size * 256 / 224))  # the usual 256 -> 224 ratio
            self.transform = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from kd.data.folder import read_rgb

        path, label = self.samples[i]
        return self.transform(read_rgb(path)), label


class StreamLoader:
    """DataLoader over a FileSet (pinned memory, persistent workers, non-blocking copies), normalised on the device."""

    def __init__(self, data: FileSet, batch_size: int, mean, std, device: torch.device, train: bool,
                 workers: int = 8, seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.sampler = None
        if world_size > 1:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(data, world_size, rank, shuffle=train, seed=seed, drop_last=train)
        generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(data, batch_size=batch_size, shuffle=train and self.sampler is None,
                                 sampler=self.sampler, num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0, drop_last=train, generator=generator)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), mean_t / std_t

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            x = images.to(self.device, non_blocking=True).float().mul_(self.scale).sub_(self.shift)
            yield x.contiguous(memory_format=self.memory_format), labels.to(self.device, non_blocking=True)
