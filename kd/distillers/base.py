"""The distiller framework: one base class, one file per method.

A distiller owns the student and any extra modules it trains (regressors, embedding heads, ...): they are
its child modules, so they are counted, optimised and checkpointed with it. It never holds the teacher:
the trainer runs the teacher once per batch and hands its `Features` to every distiller. The teacher
module is shown to the constructor and to `check_models` only, to read shapes from it.

To add a method: subclass `Distiller` in a new file, implement `forward`, and register it with
`@DISTILLERS.register("name", options=YourOptions)` (kd.distillers.registry). Its first docstring line is
the description `run_kd.py list distillers` shows, `paper` names where it comes from, and `groups` puts
it in the recipe groups (logit, feature, cam, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kd.data.base import DataSpec
from kd.errors import KDError
from kd.models.features import Features

Shape = tuple[int, int, int]  # (C, H, W) of one stage map


@torch.no_grad()
def probe_shapes(model: nn.Module, input_size=(3, 32, 32)) -> list[Shape]:
    """(C, H, W) of every stage of `model` for a 2-image zero batch, on the model's own device."""
    return [tuple(s.shape[1:]) for s in probe(model, input_size).stages]


@torch.no_grad()
def probe(model: nn.Module, input_size=(3, 32, 32)) -> Features:
    """The model's Features for a 2-image zero batch in eval mode (BN statistics untouched)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # the class's own method: a torch.compile'd instance attribute would compile again just for this probe
    out = type(model).forward_features(model, torch.zeros(2, *input_size, device=device))
    model.train(was_training)
    return out


def describe_stages(shapes: list[Shape]) -> str:
    return ", ".join(f"{i}: {'x'.join(map(str, s))}" for i, s in enumerate(shapes)) or "none"


def pick_stage(index: int, shapes: list[Shape], role: str, option: str) -> int:
    """`index` (negative counts from the end) as a non-negative stage index, or a KDError that lists the stages."""
    n = len(shapes)
    if n == 0:
        raise KDError(f"the {role} exposes no stage maps, so '{option}' cannot be used with it")
    if not -n <= index < n:
        raise KDError(f"{option}: stage index {index} is out of range, the {role} has {n} stages (valid indices "
                      f"{-n}..{n - 1}); {role} stages (C x H x W): {describe_stages(shapes)}")
    return index % n


@dataclass
class BaseOptions:
    ce_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the cross-entropy term"})


class Distiller(nn.Module):
    """Base of every method.

    forward(images, targets, teacher, epoch) -> (student_logits, {term: weighted_loss}); the trainer
    sums the dict and logs each term. `teacher` is the teacher's Features for this batch (None for
    methods with needs_teacher = False). Methods with needs_index = True also get `index=`, each image's
    position in the training set (the same on every torchrun rank).
    """

    Options = BaseOptions
    needs_teacher = True
    needs_index = False
    groups: tuple[str, ...] = ()
    paper = ""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options, data: DataSpec):
        super().__init__()
        self.student = student
        self.options = options
        self.data = data

    @classmethod
    def check_models(cls, student: nn.Module, teacher: nn.Module | None, options, data: DataSpec) -> None:
        """Refuse (with KDError) a student/teacher pair this method cannot work with; called before any file is written."""

    @classmethod
    def summary(cls) -> str:
        """One line: what the method does (the class docstring's first line)."""
        return (cls.__doc__ or "").strip().split("\n")[0]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, teacher: Features | None,
                epoch: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.options.ce_weight * nn.functional.cross_entropy(logits.float(), targets)

    def may_leave_parameters_unused(self) -> bool:
        """True when some steps give part of the parameters no gradient (DDP must then look for them)."""
        return False

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student (empty for most methods)."""
        return [m for name, m in self.named_children() if name != "student"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def extra_parameter_count(self) -> int:
        return sum(p.numel() for m in self.extra_modules() for p in m.parameters())
