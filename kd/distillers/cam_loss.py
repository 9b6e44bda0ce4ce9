"""CAM-loss (Wang et al., ICCV 2021, "CAM-loss: Towards Learning Spatially Discriminative Feature
Representations", arXiv:2109.01359). No teacher: the student's own CAM supervises its CAAM.

    L_cam = mean | N(CAAM) - N(CAM_y) |        total = ce_weight * CE + cam_weight * L_cam

with F the pre-pool map, W the classifier weight, y the ground-truth class, CAM_y = sum_k W[y,k] F_k and
CAAM = sum_k F_k. The classifier gets no gradient from L_cam: W is detached, otherwise the easiest way
to shrink L_cam is to make W[y] constant, which turns CAM_y into a scaled CAAM and the term into nothing.

The paper leaves open the normalisation N, the weight, what is detached and a warm-up; each is an option
here. The weight's default, 0.05, is the best of the toolkit's own sweep (recipes/ablations/cam*.yaml,
results/ablations/cam/: 0.05 to 10 with minmax, and 0.5 with a 2-epoch warm-up); every larger weight
lowered accuracy there, and even 0.05 only matched the student trained alone. The other defaults:
- normalise: minmax (default) | l2 | softmax, per sample over H x W (see kd.cam.normalise)
- detach: weight (default: only W is detached; the features get gradient through both maps) |
  target (CAM_y is a fixed target: the features get gradient through the CAAM only)
- warmup_epochs: epochs at the start with the CAM term off
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from kd.cam import caam, cam, l1_map_loss, normalise
from kd.distillers.base import BaseOptions, Distiller
from kd.distillers.registry import DISTILLERS
from kd.models.features import Features, require_cam

@dataclass
class CamOptions(BaseOptions):
    # 0.05 with minmax: the best of the sweep in results/ablations/cam/ (larger weights hurt accuracy)
    cam_weight: float = field(default=0.05, metadata={"min": 0, "help": "weight of the CAM term"})
    normalise: Literal["minmax", "l2", "softmax"] = field(default="minmax", metadata={"help": "per-sample normalisation of both maps over H x W"})
    detach: Literal["weight", "target"] = field(default="weight", metadata={"help": "weight: detach the classifier weight only; target: detach the whole CAM target"})
    warmup_epochs: int = field(default=0, metadata={"min": 0, "help": "epochs at the start with the CAM term off"})
    eps: float = field(default=1e-6, metadata={"gt": 0, "help": "epsilon of the normalisation (a constant map stays finite)"})


def self_cam_term(student: Features, targets: torch.Tensor, o: CamOptions) -> torch.Tensor:
    """The CAM-loss L1 term of a network against its own CAM of the ground-truth class."""
    target = cam(student.pre_pool, student.classifier.weight.detach(), targets)
    if o.detach == "target":
        target = target.detach()
    return l1_map_loss(normalise(caam(student.pre_pool), o.normalise, o.eps), normalise(target, o.normalise, o.eps))


def cam_active(o: CamOptions, epoch: int) -> bool:
    return o.cam_weight > 0 and epoch >= o.warmup_epochs


@DISTILLERS.register("cam_loss", options=CamOptions)
class CamLoss(Distiller):
    """CAM-loss without a teacher: the student's own CAM of the true class supervises its class-agnostic map (CAAM)."""

    needs_teacher = False
    groups = ("mission", "cam")
    paper = "Wang et al., ICCV 2021, CAM-loss: Towards Learning Spatially Discriminative Feature Representations"
    step_cost = 0.55

    @classmethod
    def check_models(cls, student, teacher, options, data):
        require_cam(student, "student", "cam_loss")

    def forward(self, images, targets, teacher=None, epoch=0):
        out = self.student.forward_features(images)
        o = self.options
        term = self_cam_term(out, targets, o) if cam_active(o, epoch) else out.logits.new_zeros(())
        return out.logits, {"ce": self.ce(out.logits, targets), "cam": o.cam_weight * term}
