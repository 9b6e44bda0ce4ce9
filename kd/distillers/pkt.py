"""Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer").

The student matches the teacher's conditional probability distribution over the samples of the batch,
as given by a cosine-similarity kernel on the pooled (penultimate) features:

    f~_i   = f_i / (||f_i|| + eps)                   (per sample, student and teacher separately)
    K_ij   = (cos(f_i, f_j) + 1) / 2                 (cosine similarity scaled to 0..1)
    P_j|i  = K_ij / sum_j K_ij                        (row-normalised: a distribution over j for each i)
    pkt    = feat_weight * mean_ij  P^t_j|i * log((P^t_j|i + eps) / (P^s_j|i + eps))
    total  = ce_weight * CE + pkt

Conventions (those of the DKD authors' toolkit mdistiller, whose code the CIFAR-100 benchmark's PKT
numbers come from; ../shared/fixtures/reference_losses_methods.json holds its value, case "pkt"):
- Features: the pooled feature, pre_pool.mean((2, 3)) (the benchmark's "pooled_feat"). The kernels are
  batch x batch, so student and teacher feature widths may differ and PKT adds no parameters. A model
  without a pre-pool map (an adapter whose head is not global average pooling) is refused by name.
- The KL divergence is averaged over all B x B entries (a mean, not a sum over j), eps = 1e-7 both in
  the norm and inside the log, as in the reference. (The reference also zeroes NaN entries of the
  normalised features; finite features have none, and a NaN feature would already make the logits NaN,
  so that step is left out.)
- Weights: feat_weight 30000, ce_weight 1 (the reference's CIFAR-100 configuration).
- Computed in float32 with autocast off, so that bf16 runs give the same loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kd.distillers.base import BaseOptions, Distiller, pooled_feature, require_pooled_feature
from kd.distillers.registry import DISTILLERS

EPS = 1e-7


def _cosine_probabilities(feat: torch.Tensor, eps: float) -> torch.Tensor:
    feat = feat / (feat.norm(dim=1, keepdim=True) + eps)
    kernel = (feat @ feat.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """PKT loss (unweighted) between (B, Ds) student and (B, Dt) teacher features, in float32."""
    s, t = student_feat.float(), teacher_feat.detach().float()
    with torch.autocast(s.device.type, enabled=False):  # the kernels' matmuls stay float32 under autocast
        p_s, p_t = _cosine_probabilities(s, eps), _cosine_probabilities(t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass
class PKTOptions(BaseOptions):
    feat_weight: float = field(default=30000.0, metadata={"min": 0, "help": "weight of the PKT term (KL between the cosine-kernel distributions)"})


@DISTILLERS.register("pkt", options=PKTOptions)
class PKT(Distiller):
    """Probabilistic knowledge transfer: the student matches the teacher's cosine-kernel distribution over the batch (pooled features)."""

    groups = ("feature",)
    paper = "Passalis & Tefas, ECCV 2018, Learning Deep Representations with Probabilistic Knowledge Transfer"

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        self.check_models(student, teacher, options, data)

    @classmethod
    def check_models(cls, student, teacher, options, data):
        require_pooled_feature(student, "student", "pkt", data.input_size)
        require_pooled_feature(teacher, "teacher", "pkt", data.input_size)

    def forward(self, images, targets, teacher, epoch=0):
        out = self.student.forward_features(images)
        term = pkt_loss(pooled_feature(out), pooled_feature(teacher).detach())
        return out.logits, {"ce": self.ce(out.logits, targets), "pkt": self.options.feat_weight * term}
