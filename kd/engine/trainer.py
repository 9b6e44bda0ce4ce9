"""The training loop: a plain loop a reader can follow top to bottom.

Several students (one per method) can train side by side over the same batches: the teacher runs
forward once per batch, under no_grad, and every student's distiller receives its outputs.
One student is simply a group of one. The trainer never knows which method runs: it sums the loss
dict a distiller returns and logs every term.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from kd.engine.checkpoint import RESUME_ADVICE, save_atomic
from kd.engine.console import epoch_line
from kd.engine.device import Hardware
from kd.engine.evaluation import all_reduce_sum, evaluate
from kd.engine.guard import NonFiniteGuard
from kd.engine.trainee import Trainee
from kd.models.features import Features


def teacher_pass(teacher: nn.Module, images: torch.Tensor, hw: Hardware) -> Features:
    """The teacher's features for one batch, computed once for every student.

    Under no_grad: no graph is built and no gradient can reach the teacher. inference_mode would skip a little
    more bookkeeping, but its tensors may not be saved for a student's backward, so every output handed on
    (logits, stage, pre-ReLU and pre-pool maps) would have to be copied first; measured on four pairs, the two
    cost the same (results/bench/cpu-levers.md), and no_grad has no copies to keep in step with Features.
    """
    with torch.no_grad(), hw.autocast():
        return teacher.forward_features(images)


def train_step(m: Trainee, hw: Hardware, images, targets, t_out: Features | None, epoch: int, index=None):
    """One optimiser step of one student: forward through its distiller, sum the terms, backward, step."""
    extra = {"index": index} if m.needs_index else {}
    with hw.autocast():
        logits, losses = m.distiller(images, targets, t_out, epoch, **extra)
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


def sync(hw: Hardware) -> None:
    if hw.device.type == "cuda":
        torch.cuda.synchronize(hw.device)


class Trainer:
    """Trains a group of students over one stream of batches, evaluating each on every `eval_loaders` split
    ({"val": ..., "test": ...}) after every epoch. The best checkpoint is chosen on "val" when it is there."""

    def __init__(self, trainees: list[Trainee], teacher: nn.Module | None, train_loader, eval_loaders: dict,
                 hw: Hardware, epochs: int, checkpoint_every: int = 1, is_main: bool = True, console=None,
                 on_epoch_end=None):
        self.trainees, self.teacher = trainees, teacher
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.hw, self.epochs, self.checkpoint_every, self.is_main = hw, epochs, checkpoint_every, is_main
        self.console = console
        self.on_epoch_end = on_epoch_end
        self.selection = "val_top1" if "val" in eval_loaders else "test_top1"

    def train_epoch(self, trainees: list[Trainee], epoch: int, progress=None, task=None) -> dict[str, dict]:
        hw = self.hw
        for m in trainees:
            m.distiller.train()
        needs_teacher = any(m.needs_teacher for m in trainees)
        self.train_loader.set_epoch(epoch)
        # running sums per student, kept on the device so that no step waits for the GPU
        sums = [dict() for _ in trainees]
        correct = [torch.zeros((), device=hw.device) for _ in trainees]
        guards = [NonFiniteGuard(hw.device) for _ in trainees]
        seen = 0
        own_seconds = [0.0] * len(trainees)
        teacher_seconds = 0.0
        timing = len(trainees) > 1  # split the time between students only when there is more than one
        start = time.perf_counter()
        for step, (images, targets, index) in enumerate(self.train_loader):
            t0 = time.perf_counter()
            t_out = teacher_pass(self.teacher, images, hw) if needs_teacher else None
            if timing:
                sync(hw)
                teacher_seconds += time.perf_counter() - t0
            for i, m in enumerate(trainees):
                t1 = time.perf_counter()
                logits, losses = train_step(m, hw, images, targets, t_out, epoch, index)
                with torch.no_grad():
                    guards[i].record(losses, step)
                    for term, value in losses.items():
                        sums[i][term] = sums[i].get(term, 0.0) + value.detach().float() * len(targets)
                    correct[i] += (logits.argmax(1) == targets).sum()
                if timing:
                    sync(hw)
                    own_seconds[i] += time.perf_counter() - t1
            seen += len(targets)
            if hw.device.type == "cpu" or step % 25 == 24:  # on a GPU, look only now and then: it syncs
                self.check_finite(trainees, guards, epoch)
            if progress is not None:
                progress.advance(task)
        self.check_finite(trainees, guards, epoch)
        sync(hw)
        elapsed = time.perf_counter() - start
        results = {}
        count = all_reduce_sum(torch.tensor(float(seen), device=hw.device)).item()
        for i, m in enumerate(trainees):
            terms = {k: all_reduce_sum(v.clone()).item() / count for k, v in sums[i].items()}
            top1 = 100 * all_reduce_sum(correct[i].float().clone()).item() / count
            # a student's cost as if it trained alone: its own steps, plus the teacher pass if it uses one
            own = own_seconds[i] + (teacher_seconds if m.needs_teacher else 0.0) if timing else elapsed
            results[m.label] = {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()},
                                "train_top1": top1, "images_per_s": count / max(own, 1e-9), "seconds": own}
            if hw.device.type == "cuda":  # peak memory of the process so far (all students of the group)
                results[m.label]["gpu_mem_mb"] = torch.cuda.max_memory_allocated(hw.device) / 2**20
        return results

    @staticmethod
    def check_finite(trainees: list[Trainee], guards: list[NonFiniteGuard], epoch: int) -> None:
        for m, guard in zip(trainees, guards):
            guard.check(m.label, epoch, checkpoint_kept=m.files.last_checkpoint.exists())

    def fit(self, progress=None):
        """Train every student to the last epoch; students restored from a checkpoint start where they
        stopped (a student ahead of the others waits until they catch up)."""
        epochs = self.epochs
        start_epoch = min(m.done_epochs for m in self.trainees)
        epoch_task = step_task = None
        if progress is not None and start_epoch < epochs:
            epoch_task = progress.add_task("epochs", total=epochs, completed=start_epoch)
            step_task = progress.add_task("steps", total=len(self.train_loader))
        for epoch in range(start_epoch, epochs):
            active = [m for m in self.trainees if m.done_epochs == epoch]
            if progress is not None:
                progress.reset(step_task, total=len(self.train_loader), description=f"epoch {epoch + 1}/{epochs}")
            lrs = [m.optimizer.param_groups[0]["lr"] for m in active]
            results = self.train_epoch(active, epoch, progress, step_task)
            for m, lr in zip(active, lrs):
                m.scheduler.step()
                row = {"epoch": epoch + 1, "lr": lr, **results[m.label]}
                for split, loader in self.eval_loaders.items():
                    row.update(evaluate(m.student, loader, self.hw, prefix=split))
                m.history.append(row)
                m.done_epochs = epoch + 1
                if self.is_main:
                    self.save(m, row)
                    if self.console is not None:
                        self.console.print(epoch_line(m.label, row, epochs))
                        diverged = [k for k in row if k.endswith("_loss") and not math.isfinite(row[k])]
                        if diverged:  # the NaN guard watches the training terms; the evaluation can still blow up
                            self.console.print(
                                f"[yellow]warning:[/] {m.label} epoch {epoch + 1}: the evaluation gives a non-finite "
                                f"{' and '.join(diverged)} ({row[diverged[0]]}): the student's weights have "
                                f"diverged; a lower lr (or a warm-up) usually helps")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
            if progress is not None:
                progress.advance(epoch_task)
        for m in self.trainees:
            if m.scalars is not None:
                m.scalars.close()

    def save(self, m: Trainee, row: dict) -> None:
        """Checkpoint first, then the metrics row: a crash in between loses nothing, because a resumed run
        rewrites metrics.csv from the checkpoint's history."""
        epoch = m.done_epochs
        if row[self.selection] > m.best_top1:
            m.best_top1 = row[self.selection]
            save_atomic({"model": m.student.state_dict(), "arch": getattr(m.student, "arch_name", None),
                         "epoch": epoch, "test_top1": row["test_top1"], "selected_on": self.selection},
                        m.files.best_checkpoint, advice=RESUME_ADVICE)
        if epoch % self.checkpoint_every == 0 or epoch == self.epochs:
            save_atomic({**m.state(), "test_top1": row["test_top1"]}, m.files.last_checkpoint, keep_previous=True,
                        advice=RESUME_ADVICE)
        m.metrics.append(row)
        if m.scalars is not None:
            m.scalars.add(row)
