"""The NaN guard: a run stops at the first loss term that is NaN or infinite, naming it, its epoch and step."""
from __future__ import annotations

import torch

from kd.errors import KDError


class LossNotFinite(KDError):
    """A loss term became NaN or infinite: the run stops, its last good checkpoint stays."""


class NonFiniteGuard:
    """Notices the first step at which a loss term is NaN or infinite, without a device sync per step."""

    def __init__(self, device):
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = None
        self.names: list[str] = []

    def record(self, losses: dict, step: int) -> None:
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()])
        first = (self.bad_step < 0) & ~finite.all()
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_terms = ~finite if self.bad_terms is None else torch.where(first, ~finite, self.bad_terms)
        self.names = list(losses)

    def check(self, label: str, epoch: int, checkpoint_kept: bool = True) -> None:
        """Raise LossNotFinite if any step so far (on any torchrun rank) had a non-finite term.
        checkpoint_kept: whether a resumable checkpoint of this student exists (the message says so)."""
        bad_step, bad_terms = self.bad_step, self.bad_terms
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must stop at the same check, or the others would wait for it at the next collective:
            # agree on the earliest bad step of any rank and on the union of the bad terms.
            # One MAX reduction does both: the step enters negated (never bad = -inf-like), the terms as 0/1.
            never = torch.iinfo(torch.long).max
            first = torch.where(bad_step < 0, torch.full_like(bad_step, never), bad_step)
            terms = torch.zeros(0, dtype=torch.long, device=first.device) if bad_terms is None else bad_terms.long()
            packed = torch.cat([-first.view(1), terms])
            torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MAX)
            bad_step = torch.where(packed[0] == -never, torch.full_like(bad_step, -1), -packed[0])
            bad_terms = packed[1:] if bad_terms is not None else None
        step = int(bad_step.item())
        if step >= 0:
            terms = [n for n, bad in zip(self.names, bad_terms.tolist()) if bad]
            kept = ("its last good checkpoint is kept" if checkpoint_kept else
                    "no checkpoint had been written yet")
            raise LossNotFinite(
                f"{label}: loss term {', '.join(repr(t) for t in terms)} became NaN or infinite at epoch {epoch + 1}, "
                f"step {step + 1}; the run stopped and {kept}; lower the learning rate "
                f"or that term's weight, or use precision: fp32")
