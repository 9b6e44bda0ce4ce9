"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

The KD loss splits into a target-class part and a non-target-class part, which DKD weights separately.
With p = softmax(z / T) of the logits z and y the ground-truth class:

    b     = [p_y, 1 - p_y]                     binary target / non-target probabilities
    p_hat = softmax over the classes c != y     (the non-target classes alone)
    TCKD  = KL(b_teacher || b_student)         NCKD = KL(p_hat_teacher || p_hat_student)

each KL summed over its entries and over the batch, divided by the batch size, times T^2. Then

    L_dkd = warm(epoch) * (tckd_weight * TCKD + nckd_weight * NCKD)      total = ce_weight * CE + L_dkd

tckd_weight and nckd_weight are the paper's alpha and beta (named by their terms, as every weight in kd).

Defaults: those of the reference code (mdistiller, the DKD authors' code base; its cfg.DKD): CE weight 1,
alpha 1, beta 8, T 4, warm-up over 20 epochs. The reference changes beta per CIFAR-100 pair (2 for
resnet56->resnet20 and resnet110->resnet32, 6 for the vgg13 and wrn_40_2->wrn pairs, 8 otherwise); the pair
recipes (recipes/cifar100/<pair>/students.yaml) carry those values.

Warm-up: the reference scales the whole DKD term (not CE) by min(epoch / warmup, 1) with epochs counted
from 1. kd counts epochs from 0, so the factor here is

    warm(epoch) = min((epoch + 1) / warmup_epochs, 1)       (1 when warmup_epochs is 0)

which gives the same schedule: 1/20 in the first epoch, the full term from the 20th epoch (kd's epoch 19) on.

Numerics: log(1 - p_y) is computed as logsumexp of the non-target logits minus logsumexp of all logits
(equal to the reference's log of summed probabilities, but finite when p_y rounds to 1), and the
non-target distributions are taken over the C - 1 non-target logits themselves (the reference subtracts
1000 from the target logit instead; the values agree). Computed in float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, probe
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
             alpha: float, beta: float, T: float) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD, each KL summed over classes and batch / batch size, times T^2 (float32)."""
    s, t = student_logits.float() / T, teacher_logits.float() / T
    batch, classes = s.shape
    target = F.one_hot(targets.long(), classes).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        # log [p_y, 1 - p_y] from the logits: no log of a probability that may round to 0
        all_classes = z.logsumexp(1)
        log_target = z[target] - all_classes
        log_others = z.masked_fill(target, float("-inf")).logsumexp(1) - all_classes
        return torch.stack([log_target, log_others], 1)

    def non_target_log_probs(z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(z[~target].view(batch, classes - 1), dim=1)

    tckd = F.kl_div(binary_log_probs(s), binary_log_probs(t), reduction="sum", log_target=True) / batch
    nckd = F.kl_div(non_target_log_probs(s), non_target_log_probs(t), reduction="sum", log_target=True) / batch
    return (alpha * tckd + beta * nckd) * T * T


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min((epoch + 1) / warmup_epochs, 1) for kd's 0-based epoch: the reference's min(epoch / warmup, 1)
    with its epochs counted from 1."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


def require_same_classes(student: nn.Module, teacher: nn.Module, data, method: str) -> None:
    """Refuse a pair whose logits do not cover the same classes (logit-matching methods compare them class by class)."""
    if data.num_classes < 2:
        raise KDError(f"{method} compares class distributions, but the data set has {data.num_classes} class; "
                      f"use a data set with at least 2 classes")
    s = probe(student, data.input_size).logits.shape[1]
    t = probe(teacher, data.input_size).logits.shape[1]
    if s != t:
        raise KDError(f"{method} compares the student's and the teacher's class probabilities class by class, but "
                      f"the student has {s} classes and the teacher {t}; build both for the data set's "
                      f"{data.num_classes} classes (a teacher trained on these classes)")


@dataclass
class DKDOptions(BaseOptions):
    ce_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the cross-entropy term"})
    tckd_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the target-class term TCKD (the paper's alpha)"})
    nckd_weight: float = field(default=8.0, metadata={"min": 0, "help": "weight of the non-target-class term NCKD (the paper's beta; per pair 2-8 on CIFAR-100)"})
    T: float = field(default=4.0, metadata={"gt": 0, "help": "softmax temperature"})
    warmup_epochs: int = field(default=20, metadata={"min": 0, "help": "epochs over which the DKD term ramps up linearly, (epoch+1)/warmup_epochs (0: off)"})


@DISTILLERS.register("dkd", options=DKDOptions)
class DKD(Distiller):
    """Decoupled KD: target-class and non-target-class KL terms of the softened predictions, weighted apart."""

    groups = ("logit",)
    paper = "Zhao, Cui, Song, Qiu, Liang, CVPR 2022, Decoupled Knowledge Distillation"

    @classmethod
    def check_models(cls, student, teacher, options, data):
        require_same_classes(student, teacher, data, "dkd")

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        logits = self.student(images)
        term = dkd_loss(logits, teacher.logits.detach(), targets, o.tckd_weight, o.nckd_weight, o.T)
        return logits, {"ce": self.ce(logits, targets), "dkd": warmup_factor(epoch, o.warmup_epochs) * term}
