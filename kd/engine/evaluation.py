"""Accuracy and loss of a model over a loader, summed over torchrun ranks."""
from __future__ import annotations

import torch
from torch import nn

from kd.engine.device import Hardware


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == targets[:, None]
    return [hits[:, :min(k, k_max)].any(1).sum() for k in ks]


@torch.inference_mode()
def evaluate(model: nn.Module, loader, hw: Hardware, prefix: str = "test") -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of `model` over `loader`, named `<prefix>_top1` etc."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=hw.device)  # top1, top5, loss sum, count
    for images, targets, _ in loader:
        with hw.autocast():
            logits = model(images)
        top1, top5 = topk_correct(logits, targets)
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        totals += torch.stack([top1.double(), top5.double(), loss.double(),
                               torch.tensor(len(targets), device=hw.device, dtype=torch.float64)])
    totals = all_reduce_sum(totals)
    model.train(was_training)
    top1, top5, loss, n = totals.tolist()
    return {f"{prefix}_top1": 100 * top1 / n, f"{prefix}_top5": 100 * top5 / n, f"{prefix}_loss": loss / n}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t
