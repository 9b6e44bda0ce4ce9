"""FitNets (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets").

A regressor maps the student's "guided" stage onto the teacher's "hint" stage, and the student learns
to reproduce the hint:

    hint = feat_weight * MSE(regressor(student_stage), teacher_stage)       total = ce_weight * CE + hint

Conventions (those of the standard CIFAR-100 benchmark, whose FitNet numbers we compare with):
- Default stages: the middle one of each network, index (n-1)//2 (the 2nd of 3): deep enough to carry
  structure, shallow enough that the thinner student can still be shaped by it. Negative indices count
  from the end, as in Python.
- Regressor: conv + BatchNorm + ReLU, sized from one probe pass: 1x1 conv when the two maps have the same
  size, 3x3 stride-2 conv when the student's map is twice as large, 4x4 stride-2 transposed conv when it is
  half as large. Other size relations are refused (KDError) rather than guessed at: pick other stages.
  The conv has no bias because the BatchNorm after it has its own shift.
- The regressor is a child module, so it is trained with the student, counted by extra_parameter_count()
  and saved in the distiller's state dict; it is discarded after training (the student alone is deployed).
- hint_epochs > 0 is the paper's two-stage variant: for the first hint_epochs epochs the loss is the hint
  term alone, which trains only the student's layers up to the guided stage and the regressor; after that,
  ordinary training with CE + hint.
- Losses are computed in float32 so that they are right under autocast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, Shape, describe_stages, pick_stage, probe_shapes
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError

def hint_loss(regressed: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the regressed student map and the teacher map, in float32."""
    return F.mse_loss(regressed.float(), teacher_map.detach().float())


def regressor_kind(student: Shape, teacher: Shape) -> str | None:
    """Which conv maps a student map of this size onto the teacher's: '1x1', 'stride2', 'transposed' or None."""
    (_, hs, ws), (_, ht, wt) = student, teacher
    if (hs, ws) == (ht, wt):
        return "1x1"
    if (hs, ws) == (2 * ht, 2 * wt):
        return "stride2"
    if (2 * hs, 2 * ws) == (ht, wt):
        return "transposed"
    return None


def make_regressor(student: Shape, teacher: Shape) -> nn.Sequential:
    cs, ct = student[0], teacher[0]
    conv = {"1x1": lambda: nn.Conv2d(cs, ct, 1, bias=False),
            "stride2": lambda: nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=False),
            "transposed": lambda: nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=False)}
    return nn.Sequential(conv[regressor_kind(student, teacher)](), nn.BatchNorm2d(ct), nn.ReLU(inplace=True))


@dataclass
class FitNetsOptions(BaseOptions):
    feat_weight: float = field(default=100.0, metadata={"min": 0, "help": "weight of the hint (MSE) term"})
    student_stage: int | None = field(default=None, metadata={"help": "student stage guided by the hint (negative: from the end); null: the middle one, (n-1)//2"})
    teacher_stage: int | None = field(default=None, metadata={"help": "teacher stage giving the hint (negative: from the end); null: the middle one, (n-1)//2"})
    hint_epochs: int = field(default=0, metadata={"min": 0, "help": "two-stage FitNets: epochs at the start trained on the hint term alone (0: off)"})


def choose_hint(student: list[Shape], teacher: list[Shape], o: FitNetsOptions) -> tuple[int, int]:
    """(student stage, teacher stage) for the hint, checked to be a size relation the regressor can map."""
    s = pick_stage((len(student) - 1) // 2 if o.student_stage is None else o.student_stage, student, "student", "fitnets.student_stage")
    t = pick_stage((len(teacher) - 1) // 2 if o.teacher_stage is None else o.teacher_stage, teacher, "teacher", "fitnets.teacher_stage")
    if regressor_kind(student[s], teacher[t]) is None:
        raise KDError(
            f"fitnets: the student's stage {s} ({'x'.join(map(str, student[s]))}) cannot be regressed onto the "
            f"teacher's stage {t} ({'x'.join(map(str, teacher[t]))}): the regressor maps only equal, twice or half "
            f"the spatial size; choose fitnets.student_stage / fitnets.teacher_stage whose sizes match "
            f"(student stages: {describe_stages(student)}; teacher stages: {describe_stages(teacher)})")
    return s, t


@DISTILLERS.register("fitnets", options=FitNetsOptions)
class FitNets(Distiller):
    """Hints: a regressor maps a middle student stage onto the teacher's, trained with MSE."""

    groups = ("mission", "feature")
    paper = "Romero et al., ICLR 2015, FitNets: Hints for Thin Deep Nets"

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        s_shapes, t_shapes = probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size)
        self.student_stage, self.teacher_stage = choose_hint(s_shapes, t_shapes, options)
        # Built on the CPU; run.py moves the whole distiller (student and regressor) to the device after.
        self.regressor = make_regressor(s_shapes[self.student_stage], t_shapes[self.teacher_stage])

    @classmethod
    def check_models(cls, student, teacher, options, data):
        choose_hint(probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size), options)

    def may_leave_parameters_unused(self) -> bool:
        return self.options.hint_epochs > 0  # hint epochs train only the layers up to the guided stage

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        regressed = self.regressor(out.stages[self.student_stage])
        hint = o.feat_weight * hint_loss(regressed, teacher.stages[self.teacher_stage])
        if epoch < o.hint_epochs:
            # Hint pre-training: no CE, so the layers above the guided stage (and the classifier) get no
            # gradient; the logits are still returned for the trainer's accuracy count.
            return out.logits, {"hint": hint}
        return out.logits, {"ce": self.ce(out.logits, targets), "hint": hint}
