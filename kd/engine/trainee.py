"""One student in training (a Trainee): its distiller, optimiser, schedule, files and history, and the
full state that lets a resumed run continue exactly where an interrupted one stopped (RNG streams included)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kd.engine.rundir import MetricsFile, StudentDir


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


@dataclass
class Trainee:
    """One student in training: its distiller (possibly DDP-wrapped), optimiser, files and history."""

    label: str
    distiller: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    files: StudentDir
    scaler: torch.amp.GradScaler | None = None
    metrics: MetricsFile = None
    scalars: object | None = None  # a TensorBoardLog (kd.engine.scalars) when the recipe logs to TensorBoard
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)
    done_epochs: int = 0  # epochs finished (more than 0 after a resume)
    machine: str = ""  # what it computes with (kd.engine.device.machine): a resume elsewhere is not bit-exact

    def __post_init__(self):
        self.metrics = MetricsFile(self.files.metrics_file)

    @property
    def needs_teacher(self) -> bool:
        return unwrap(self.distiller).needs_teacher

    @property
    def needs_index(self) -> bool:
        return unwrap(self.distiller).needs_index

    @property
    def student(self) -> nn.Module:
        return unwrap(self.distiller).student

    def state(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one stopped."""
        return {"model": self.student.state_dict(), "arch": getattr(self.student, "arch_name", None),
                "epoch": self.done_epochs, "distiller": unwrap(self.distiller).state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "best_top1": self.best_top1, "history": self.history, "rng": rng_state(), "machine": self.machine}

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
