"""The optimiser and the learning-rate schedule of a student."""
from __future__ import annotations

import math

import torch


def lr_factor(epoch: int, epochs: int, schedule: str, milestones, gamma: float, warmup: int) -> float:
    """Multiplier of the base learning rate during `epoch` (0-based); stepped once per epoch."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "multistep":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        span = max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))
    return 1.0


def make_optimizer(parameters, lr: float, momentum: float, nesterov: bool, weight_decay: float):
    """SGD over `parameters`. No weight decay exemption for BN/bias: the benchmark recipes decay every parameter."""
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def make_scheduler(optimizer, epochs: int, schedule: str, milestones, gamma: float, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, epochs, schedule, milestones, gamma, warmup))
