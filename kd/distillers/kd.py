"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

loss = ce_weight * CE + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T)), the KL averaged over the
batch. The T^2 keeps the soft-target gradients on the scale of the hard-target ones. nn.KLDivLoss's
'mean' reduction averages over classes too, which shrinks the term by the class count: never use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, Distiller
from kd.distillers.registry import DISTILLERS


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Batch-mean KL(softmax(t/T) || softmax(s/T)) times T^2, computed in float32. The teacher's logits are
    a fixed target: no gradient flows back into them (nor into a teacher that ran with autograd on)."""
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * T * T


@dataclass
class KDOptions(BaseOptions):
    ce_weight: float = field(default=0.1, metadata={"min": 0, "help": "weight of the cross-entropy term"})
    kd_weight: float = field(default=0.9, metadata={"min": 0, "help": "weight of the soft-target KL term"})
    T: float = field(default=4.0, metadata={"gt": 0, "help": "softmax temperature"})


@DISTILLERS.register("kd", options=KDOptions)
class KD(Distiller):
    """Soft targets: KL divergence between the temperature-softened teacher and student predictions."""

    groups = ("mission", "logit")
    paper = "Hinton, Vinyals, Dean, NIPS workshop 2015, Distilling the Knowledge in a Neural Network"

    def forward(self, images, targets, teacher, epoch=0):
        logits = self.student(images)
        o = self.options
        return logits, {"ce": self.ce(logits, targets), "kd": o.kd_weight * kd_loss(logits, teacher.logits, o.T)}
