"""Relational Knowledge Distillation (Park, Kim, Lu & Cho, CVPR 2019).

The student matches the relations among the samples of the batch in the teacher's pooled feature space:
pairwise distances (distance-wise) and the angles of sample triplets (angle-wise).

    d_ij    = ||f_i - f_j|| / mean_{i != j} ||f_i - f_j||            (per network; 0 on the diagonal)
    L_dist  = smooth_L1(d^s, d^t)                                     (mean over all B x B entries)
    e_ij    = (f_i - f_j) / ||f_i - f_j||,   a_ijk = <e_ji, e_jk>    (cosine of the angle at sample j)
    L_angle = smooth_L1(a^s, a^t)                                     (mean over all B^3 entries)
    rkd     = feat_weight * (distance_weight * L_dist + angle_weight * L_angle)
    total   = ce_weight * CE + rkd

Conventions (those of the DKD authors' toolkit mdistiller, whose code the CIFAR-100 benchmark's RKD
numbers come from; ../shared/fixtures/reference_losses_methods.json holds its value, case "rkd"):
- Features: the pooled feature, pre_pool.mean((2, 3)). All relations are batch x batch, so the feature
  widths may differ and RKD adds no parameters. A model without a pre-pool map is refused by name.
- Distances are Euclidean (not squared; `squared` is the reference's switch), computed from the Gram
  matrix as ||a||^2 + ||b||^2 - 2<a, b> clamped below at eps = 1e-12 before the square root; the
  normaliser is the mean over the strictly positive entries (the off-diagonal ones). Smooth L1 with
  beta 1. Unit vectors use F.normalize (eps 1e-12), so the i = j differences count as zero vectors.
  The teacher's relations carry no gradient. A batch needs at least two images (kd's training loader
  never yields a single-image batch).
- Weights: distance 25, angle 50, overall feat_weight 1, ce_weight 1 (the reference's CIFAR-100
  configuration; the paper's own settings differ per task).
- Computed in float32 with autocast off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, Distiller, pooled_feature, require_pooled_feature
from kd.distillers.registry import DISTILLERS

EPS = 1e-12


def pairwise_distances(feat: torch.Tensor, squared: bool = False, eps: float = EPS) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean (or squared) distances, exactly 0 on the diagonal."""
    sq_norms = feat.pow(2).sum(dim=1)
    dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * feat @ feat.t()).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    eye = torch.eye(len(feat), dtype=torch.bool, device=feat.device)
    return dist.masked_fill(eye, 0.0)


def _normalised_distances(feat: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    dist = pairwise_distances(feat, squared, eps)
    return dist / dist[dist > 0].mean()


def _angles(feat: torch.Tensor) -> torch.Tensor:
    """Cosines <e_ji, e_jk> of every triplet, flattened (B^3,)."""
    diff = F.normalize(feat.unsqueeze(0) - feat.unsqueeze(1), p=2, dim=2)  # diff[j, i] = f_i - f_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0, squared: bool = False, eps: float = EPS) -> torch.Tensor:
    """distance_weight * L_dist + angle_weight * L_angle between (B, Ds) and (B, Dt) features, in float32."""
    s, t = student_feat.float().flatten(1), teacher_feat.detach().float().flatten(1)
    with torch.autocast(s.device.type, enabled=False):  # the Gram matmuls stay float32 under autocast
        loss_d = F.smooth_l1_loss(_normalised_distances(s, squared, eps), _normalised_distances(t, squared, eps))
        loss_a = F.smooth_l1_loss(_angles(s), _angles(t))
        return distance_weight * loss_d + angle_weight * loss_a


@dataclass
class RKDOptions(BaseOptions):
    feat_weight: float = field(default=1.0, metadata={"min": 0, "help": "overall weight of the RKD term"})
    distance_weight: float = field(default=25.0, metadata={"min": 0, "help": "weight of the distance-wise term inside RKD"})
    angle_weight: float = field(default=50.0, metadata={"min": 0, "help": "weight of the angle-wise term inside RKD"})
    squared: bool = field(default=False, metadata={"help": "use squared Euclidean distances in the distance-wise term"})


@DISTILLERS.register("rkd", options=RKDOptions)
class RKD(Distiller):
    """Relational KD: the student matches the teacher's pairwise distances and triplet angles among the batch's pooled features."""

    groups = ("feature",)
    paper = "Park, Kim, Lu & Cho, CVPR 2019, Relational Knowledge Distillation"

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        self.check_models(student, teacher, options, data)

    @classmethod
    def check_models(cls, student, teacher, options, data):
        require_pooled_feature(student, "student", "rkd", data.input_size)
        require_pooled_feature(teacher, "teacher", "rkd", data.input_size)

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        term = rkd_loss(pooled_feature(out), pooled_feature(teacher).detach(), o.distance_weight, o.angle_weight, o.squared)
        return out.logits, {"ce": self.ce(out.logits, targets), "rkd": o.feat_weight * term}
