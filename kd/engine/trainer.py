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
from kd.errors import KDError
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
    done_epochs: int = 0  # epochs finished (more than 0 after a resume)

    def __post_init__(self):
        self.metrics = MetricsFile(self.run_dir / "metrics.csv")

    @property
    def needs_teacher(self) -> bool:
        return unwrap(self.distiller).needs_teacher

    def state(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one stopped."""
        student = unwrap(self.distiller).student
        return {"model": student.state_dict(), "arch": getattr(student, "arch_name", None),
                "epoch": self.done_epochs, "distiller": unwrap(self.distiller).state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "best_top1": self.best_top1, "history": self.history, "rng": rng_state()}

    def restore(self, state: dict) -> None:
        unwrap(self.distiller).load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_top1, self.history, self.done_epochs = state["best_top1"], list(state["history"]), state["epoch"]
        set_rng_state(state["rng"])
        self.metrics.replace(self.history)  # rows written after the checkpoint are redone


def rng_state() -> dict:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LossNotFinite(KDError):
    """A loss term became NaN or infinite: the run stops, its last good checkpoint stays."""


def make_optimizer(distiller: Distiller, recipe):
    # No weight decay exemption for BN/bias: the benchmark recipes decay every parameter.
    lr = recipe.lr * recipe.batch_size / recipe.lr_batch if recipe.lr_batch else recipe.lr  # linear scaling rule
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=lr, momentum=recipe.momentum,
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


def train_step(m: Member, hw: Hardware, images, targets, t_out: Features | None, epoch: int):
    """One optimiser step of one student: forward through its distiller, sum the terms, backward, step."""
    with hw.autocast():
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


class Trainer:
    """Trains a group of students over one stream of batches."""

    def __init__(self, members: list[Member], teacher: nn.Module | None, train_loader, test_loader,
                 recipe, hw: Hardware, is_main: bool = True, console=None, on_epoch_end=None):
        self.members, self.teacher = members, teacher
        self.train_loader, self.test_loader = train_loader, test_loader
        self.recipe, self.hw, self.is_main = recipe, hw, is_main
        self.console = console
        self.on_epoch_end = on_epoch_end

    def train_epoch(self, members: list[Member], epoch: int, progress=None, task=None) -> dict[str, dict]:
        hw = self.hw
        for m in members:
            m.distiller.train()
        needs_teacher = any(m.needs_teacher for m in members)
        self.train_loader.set_epoch(epoch)
        # running sums per member, kept on the device so that no step waits for the GPU
        sums = [dict() for _ in members]
        correct = [torch.zeros((), device=hw.device) for _ in members]
        guards = [NonFiniteGuard(hw.device) for _ in members]
        seen = 0
        member_seconds = [0.0] * len(members)
        teacher_seconds = 0.0
        timing = len(members) > 1  # split the time between students only when there is more than one
        start = time.perf_counter()
        for step, (images, targets) in enumerate(self.train_loader):
            t0 = time.perf_counter()
            t_out = teacher_pass(self.teacher, images, hw) if needs_teacher else None
            if timing:
                sync(hw)
                teacher_seconds += time.perf_counter() - t0
            for i, m in enumerate(members):
                t1 = time.perf_counter()
                logits, losses = self.step(m, images, targets, t_out, epoch)
                with torch.no_grad():
                    guards[i].record(losses, step)
                    for term, value in losses.items():
                        sums[i][term] = sums[i].get(term, 0.0) + value.detach().float() * len(targets)
                    correct[i] += (logits.argmax(1) == targets).sum()
                if timing:
                    sync(hw)
                    member_seconds[i] += time.perf_counter() - t1
            seen += len(targets)
            if hw.device.type == "cpu" or step % 25 == 24:  # on a GPU, look only now and then: it syncs
                for m, guard in zip(members, guards):
                    guard.check(m.label, epoch)
            if progress is not None:
                progress.advance(task)
        for m, guard in zip(members, guards):
            guard.check(m.label, epoch)
        sync(hw)
        elapsed = time.perf_counter() - start
        results = {}
        count = all_reduce_sum(torch.tensor(float(seen), device=hw.device)).item()
        for i, m in enumerate(members):
            terms = {k: all_reduce_sum(v.clone()).item() / count for k, v in sums[i].items()}
            top1 = 100 * all_reduce_sum(correct[i].float().clone()).item() / count
            # a student's cost as if it trained alone: its own steps, plus the teacher pass if it uses one
            own = member_seconds[i] + (teacher_seconds if m.needs_teacher else 0.0) if timing else elapsed
            results[m.label] = {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()},
                                "train_top1": top1, "images_per_s": count / max(own, 1e-9), "seconds": own}
            if hw.device.type == "cuda":  # peak memory of the process so far (all students of the group)
                results[m.label]["gpu_mem_mb"] = torch.cuda.max_memory_allocated(hw.device) / 2**20
        return results

    def step(self, m: Member, images, targets, t_out, epoch):
        return train_step(m, self.hw, images, targets, t_out, epoch)

    def fit(self, progress=None):
        """Train every member to the recipe's last epoch; members restored from a checkpoint start
        where they stopped (a member ahead of the others waits until they catch up)."""
        epochs = self.recipe.epochs
        start_epoch = min(m.done_epochs for m in self.members)
        epoch_task = step_task = None
        if progress is not None and start_epoch < epochs:
            epoch_task = progress.add_task("epochs", total=epochs, completed=start_epoch)
            step_task = progress.add_task("steps", total=len(self.train_loader))
        for epoch in range(start_epoch, epochs):
            active = [m for m in self.members if m.done_epochs == epoch]
            if progress is not None:
                progress.reset(step_task, total=len(self.train_loader), description=f"epoch {epoch + 1}/{epochs}")
            lrs = [m.optimizer.param_groups[0]["lr"] for m in active]
            results = self.train_epoch(active, epoch, progress, step_task)
            for m, lr in zip(active, lrs):
                m.scheduler.step()
                row = {"epoch": epoch + 1, "lr": lr, **results[m.label],
                       **evaluate(unwrap(m.distiller).student, self.test_loader, self.hw)}
                m.history.append(row)
                m.done_epochs = epoch + 1
                if self.is_main:
                    self.save(m, row)
                    if self.console is not None:
                        self.console.print(epoch_line(m.label, row, epochs))
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
            if progress is not None:
                progress.advance(epoch_task)

    def save(self, m: Member, row: dict) -> None:
        """Checkpoint first, then the metrics row: a crash in between loses nothing, because a resumed run
        rewrites metrics.csv from the checkpoint's history."""
        epoch = m.done_epochs
        if row["test_top1"] > m.best_top1:
            m.best_top1 = row["test_top1"]
            student = unwrap(m.distiller).student
            save_atomic({"model": student.state_dict(), "arch": getattr(student, "arch_name", None),
                         "epoch": epoch, "test_top1": row["test_top1"]}, m.run_dir / "checkpoints" / "best.pt")
        if epoch % self.recipe.checkpoint_every == 0 or epoch == self.recipe.epochs:
            save_atomic({**m.state(), "test_top1": row["test_top1"]}, m.run_dir / "checkpoints" / "last.pt",
                        keep_previous=True)
        m.metrics.append(row)


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

    def check(self, label: str, epoch: int) -> None:
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
            raise LossNotFinite(
                f"{label}: loss term {', '.join(repr(t) for t in terms)} became NaN or infinite at epoch {epoch + 1}, "
                f"step {step + 1}; the run stopped and its last good checkpoint is kept; lower the learning rate "
                f"or that term's weight, or use precision: fp32")


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
