"""The distiller framework: one registry, one base class, one file per method.

A distiller owns the student and any extra modules it trains (regressors, ...). The frozen teacher is
held by reference only: it is not a submodule, so it never shows up in `parameters()`, the optimiser or
the checkpoint. The trainer runs the teacher once per batch and hands its `Features` to every distiller;
a distiller never calls the teacher itself.

To add a method: subclass `Distiller` in a new file, declare its options as a dataclass named
`Options`, implement `forward`, and decorate the class with `@DISTILLERS.register("name")`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kd.errors import KDError
from kd.models.features import Features
from kd.registry import Registry

DISTILLERS: Registry = Registry("distiller")

Shape = tuple[int, int, int]  # (C, H, W) of one stage map


@torch.no_grad()
def probe_shapes(model: nn.Module, input_size=(3, 32, 32)) -> list[Shape]:
    """(C, H, W) of every stage of `model` for a 2-image zero batch, on the model's own device."""
    was_training = model.training
    model.eval()  # batch statistics of two zero images would be meaningless (and BN state must not move)
    device = next(model.parameters()).device
    # the class's own method: a torch.compile'd instance attribute would compile again just for this probe
    out = type(model).forward_features(model, torch.zeros(2, *input_size, device=device))
    model.train(was_training)
    return [tuple(s.shape[1:]) for s in out.stages]


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
    methods with needs_teacher = False).
    """

    Options = BaseOptions
    needs_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options, input_size=(3, 32, 32)):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple keeps the teacher out of the module tree on purpose
        self.options = options
        self.input_size = tuple(input_size)

    @classmethod
    def check_models(cls, student: nn.Module, teacher: nn.Module | None, options, input_size=(3, 32, 32)) -> None:
        """Refuse (with KDError) a student/teacher pair this method cannot work with; called before any file is written."""

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, teacher: Features | None,
                epoch: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.options.ce_weight * nn.functional.cross_entropy(logits, targets)

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student (empty for most methods)."""
        return [m for name, m in self.named_children() if name != "student"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def extra_parameter_count(self) -> int:
        return sum(p.numel() for m in self.extra_modules() for p in m.parameters())
