"""Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019).

Inputs that the teacher finds similar should be similar for the student: the student matches the
teacher's batch similarity (Gram) matrix of a stage's activations.

    Q     = flatten(f) to (B, C*H*W)
    G     = row_L2_normalise(Q Q^T)                      (B x B, student and teacher separately)
    sp    = feat_weight * sum over pairs of  ||G^t - G^s||_F^2 / B^2
    total = ce_weight * CE + sp

Conventions (those of the DKD authors' toolkit mdistiller, the same as RepDistiller's; the CIFAR-100
benchmark's SP numbers come from it; ../shared/fixtures/reference_losses_methods.json holds its value,
case "sp"):
- Stages: the last stage only (the reference's recipe: its feats[-1], the deepest stage map, which for
  wrn is the map before the final BN+ReLU). `sp.pairs` chooses others: [student, teacher] index pairs,
  negative counts from the end, summed (the paper sums over the chosen pairs in the same way).
- The Gram matrices are B x B, so channel counts and map sizes may differ and SP adds no parameters.
- The squared Frobenius norm is divided by B^2 (a mean over the B x B entries), as in the reference
  and the paper.
- Weights: feat_weight 3000, ce_weight 1 (the reference's CIFAR-100 configuration).
- Computed in float32 with autocast off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, StagePairDistiller
from kd.distillers.registry import DISTILLERS


def _similarity(feature: torch.Tensor) -> torch.Tensor:
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss of one stage pair (unweighted), in float32."""
    with torch.autocast(student_map.device.type, enabled=False):  # the Gram matmuls stay float32 under autocast
        s, t = student_map.float(), teacher_map.detach().float()
        batch = s.shape[0]
        return (_similarity(t) - _similarity(s)).pow(2).sum() / (batch * batch)


@dataclass
class SPOptions(BaseOptions):
    feat_weight: float = field(default=3000.0, metadata={"min": 0, "help": "weight of the similarity-preserving term, summed over stage pairs"})
    pairs: list[list[int]] = field(default_factory=lambda: [[-1, -1]], metadata={"help": "[student, teacher] stage index pairs (negative: from the end); default [[-1, -1]]: the last stages only"})


@DISTILLERS.register("sp", options=SPOptions)
class SP(StagePairDistiller):
    """Similarity-preserving KD: the student matches the teacher's batch similarity (Gram) matrix of the last stage."""

    groups = ("feature",)
    paper = "Tung & Mori, ICCV 2019, Similarity-Preserving Knowledge Distillation"

    def pair_loss(self, student_map, teacher_map):
        return sp_loss(student_map, teacher_map)
