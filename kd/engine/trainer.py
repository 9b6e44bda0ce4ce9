"""The training loop: a plain loop a reader can follow top to bottom.

Several students (one per method) can train side by side over the same batches: the teacher runs
forward once per batch, under inference_mode, and every student's distiller receives its outputs.
One student is simply a group of one. The trainer never knows which method runs: it sums the loss
dict a distiller returns and logs every term.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kd.distillers.base import Distiller
from kd.engine.checkpoint import save_atomic
from kd.engine.device import Hardware
from kd.engine.rundir import MetricsFile
from kd.models.features import Features


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


@dataclass
class Member:
    """One student in training: its distiller, optimiser, files and history."""

    label: str
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    run_dir: Path
    scaler: torch.amp.GradScaler | None = None
    metrics: MetricsFile = None
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.metrics = MetricsFile(self.run_dir / "metrics.csv")


def make_optimizer(distiller: Distiller, recipe):
    # No weight decay exemption for BN/bias: the benchmark recipes decay every parameter.
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov and recipe.momentum > 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(
        e, recipe.epochs, recipe.schedule, recipe.milestones, recipe.gamma, recipe.warmup_epochs))
    return optimizer, scheduler


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == targets[:, None]
    return [hits[:, :min(k, k_max)].any(1).sum() for k in ks]


@torch.inference_mode()
def evaluate(model: nn.Module, loader, hw: Hardware) -> dict[str, float]:
    """Test top-1, top-5 (percent) and mean cross-entropy of `model` over `loader`."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=hw.device)  # top1, top5, loss sum, count
    for images, targets in loader:
        with hw.autocast():
            logits = model(images)
        top1, top5 = topk_correct(logits, targets)
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        totals += torch.stack([top1.double(), top5.double(), loss.double(), torch.tensor(len(targets), device=hw.device, dtype=torch.float64)])
    totals = all_reduce_sum(totals)
    model.train(was_training)
    top1, top5, loss, n = totals.tolist()
    return {"test_top1": 100 * top1 / n, "test_top5": 100 * top5 / n, "test_loss": loss / n}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def teacher_pass(teacher: nn.Module, images: torch.Tensor, hw: Hardware) -> Features:
    """The teacher's features for one batch, computed once for every student.

    inference_mode skips all autograd bookkeeping; its tensors may not be saved for backward, so the
    few outputs handed on are cloned into ordinary tensors (a copy far cheaper than the forward).
    """
    with torch.inference_mode(), hw.autocast():
        out = teacher.forward_features(images)
    return Features(out.logits.clone(), [s.clone() for s in out.stages],
                    None if out.pre_pool is None else out.pre_pool.clone(), out.classifier)


class Trainer:
    """Trains a group of students over one stream of batches."""

    def __init__(self, members: list[Member], teacher: nn.Module | None, train_loader, test_loader,
                 recipe, hw: Hardware, is_main: bool = True, console=None, on_epoch_end=None):
        self.members, self.teacher = members, teacher
        self.train_loader, self.test_loader = train_loader, test_loader
        self.recipe, self.hw, self.is_main = recipe, hw, is_main
        self.console = console
        self.on_epoch_end = on_epoch_end
        self.needs_teacher = any(m.distiller.needs_teacher for m in members)

    def train_epoch(self, epoch: int, progress=None, task=None) -> dict[str, dict]:
        hw = self.hw
        for m in self.members:
            m.distiller.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.train_loader.set_epoch(epoch)
        n_members = len(self.members)
        # per member: [sum of each term..., correct, seen]; kept on the device to avoid a sync per step
        sums = [dict() for _ in self.members]
        correct = [torch.zeros((), device=hw.device) for _ in self.members]
        seen = 0
        member_seconds = [0.0] * n_members
        teacher_seconds = 0.0
        timing = n_members > 1  # split the time between students only when there is more than one
        start = time.perf_counter()
        for images, targets in self.train_loader:
            t0 = time.perf_counter()
            t_out = teacher_pass(self.teacher, images, hw) if self.needs_teacher else None
            if timing:
                sync(hw)
                teacher_seconds += time.perf_counter() - t0
            for i, m in enumerate(self.members):
                t1 = time.perf_counter()
                logits, losses = self.step(m, images, targets, t_out, epoch)
                with torch.no_grad():
                    for term, value in losses.items():
                        sums[i][term] = sums[i].get(term, 0.0) + value.detach().float() * len(targets)
                    correct[i] += (logits.argmax(1) == targets).sum()
                if timing:
                    sync(hw)
                    member_seconds[i] += time.perf_counter() - t1
            seen += len(targets)
            if progress is not None:
                progress.advance(task)
        sync(hw)
        elapsed = time.perf_counter() - start
        results = {}
        count = all_reduce_sum(torch.tensor(float(seen), device=hw.device)).item()
        for i, m in enumerate(self.members):
            terms = {k: all_reduce_sum(v.clone()).item() / count for k, v in sums[i].items()}
            top1 = 100 * all_reduce_sum(correct[i].float().clone()).item() / count
            own = (member_seconds[i] + teacher_seconds) if timing else elapsed
            results[m.label] = {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()},
                                "train_top1": top1, "images_per_s": count / max(own, 1e-9), "seconds": own}
        return results

    def step(self, m: Member, images, targets, t_out, epoch):
        with self.hw.autocast():
            logits, losses = m.distiller(images, targets, t_out, epoch)
        loss = sum(losses.values())
        m.optimizer.zero_grad(set_to_none=True)
        if m.scaler is not None:
            m.scaler.scale(loss).backward()
            m.scaler.step(m.optimizer)
            m.scaler.update()
        else:
            loss.backward()
            m.optimizer.step()
        return logits, losses

    def fit(self, start_epoch: int = 0, progress=None):
        epochs = self.recipe.epochs
        epoch_task = step_task = None
        if progress is not None:
            epoch_task = progress.add_task("epochs", total=epochs, completed=start_epoch)
            step_task = progress.add_task("steps", total=len(self.train_loader))
        for epoch in range(start_epoch, epochs):
            if progress is not None:
                progress.reset(step_task, total=len(self.train_loader), description=f"epoch {epoch + 1}/{epochs}")
            lrs = [m.optimizer.param_groups[0]["lr"] for m in self.members]
            results = self.train_epoch(epoch, progress, step_task)
            for m, lr in zip(self.members, lrs):
                m.scheduler.step()
                row = {"epoch": epoch + 1, "lr": lr, **results[m.label], **evaluate(m.distiller.student, self.test_loader, self.hw)}
                m.history.append(row)
                if self.is_main:
                    self.save(m, row, epoch)
                    if self.console is not None:
                        self.console.print(epoch_line(m.label, row, epochs))
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
            if progress is not None:
                progress.advance(epoch_task)

    def save(self, m: Member, row: dict, epoch: int) -> None:
        m.metrics.append(row)
        student = unwrap(m.distiller).student
        weights = {"model": student.state_dict(), "arch": getattr(student, "arch_name", None),
                   "epoch": epoch + 1, "test_top1": row["test_top1"]}
        if row["test_top1"] > m.best_top1:
            m.best_top1 = row["test_top1"]
            save_atomic(weights, m.run_dir / "checkpoints" / "best.pt")
        if (epoch + 1) % self.recipe.checkpoint_every == 0 or epoch + 1 == self.recipe.epochs:
            state = {**weights, "distiller": unwrap(m.distiller).state_dict(),
                     "optimizer": m.optimizer.state_dict(), "scheduler": m.scheduler.state_dict(),
                     "scaler": m.scaler.state_dict() if m.scaler is not None else None,
                     "best_top1": m.best_top1}
            save_atomic(state, m.run_dir / "checkpoints" / "last.pt")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def sync(hw: Hardware) -> None:
    if hw.device.type == "cuda":
        torch.cuda.synchronize(hw.device)


def epoch_line(label: str, row: dict, epochs: int) -> str:
    terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("loss_"))
    return (f"[bold]{label}[/] epoch {row['epoch']}/{epochs}  loss {row['loss']:.3f} ({terms})  "
            f"train {row['train_top1']:.1f}%  test {row['test_top1']:.2f}% (top-5 {row['test_top5']:.1f}%)  "
            f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")
