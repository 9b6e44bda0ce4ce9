"""Neuron Selectivity Transfer (Huang & Wang, arXiv:1707.01219, 2017, "Like What You Like: Knowledge
Distill via Neuron Selectivity Transfer").

Each channel of a stage map is one sample of a distribution over spatial positions (the neuron's
"selectivity pattern"); the student matches the teacher's distribution by squared maximum mean
discrepancy with a polynomial kernel, at paired stages:

    s_c = f^s_c / ||f^s_c||,  t_c = f^t_c / ||f^t_c||        (each channel map L2-normalised over H*W)
    k(a, b) = <a, b>^2                                       (polynomial kernel, d = 2, c = 0)
    MMD^2 = mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c') - 2 mean_{c,c'} k(s_c, t_c')
    nst   = feat_weight * sum over pairs of MMD^2             (means also over the batch)
    total = ce_weight * CE + nst

Conventions (those of the DKD authors' toolkit mdistiller, the same as RepDistiller's; the CIFAR-100
benchmark's NST numbers come from it; ../shared/fixtures/reference_losses_methods.json holds its value,
case "nst"):
- The channel counts of a pair may differ (the kernels compare channels within and across networks,
  averaged), so NST adds no parameters. When the maps differ in size, the larger is adaptive-average-
  pooled to the smaller one first (to the smaller size in each direction; the reference pools square
  maps by their height, which is the same there).
- The teacher-teacher term is a constant; it is kept (detached), as in the reference, so the term is the
  MMD itself and is zero when the student matches.
- Stages: the reference distils every stage after the stem (its feats[1:], i.e. all of kd's
  Features.stages), paired by position with zip. Here the default pairs every student stage with the
  teacher stage of the same index and only when both networks have the same number of stages; unequal
  counts are refused with the stage shapes listed: set `nst.pairs` ([student, teacher] index pairs,
  negative counts from the end) explicitly. Never a silent zip.
- Weights: feat_weight 50, ce_weight 1 (the reference's CIFAR-100 configuration).
- Computed in float32 with autocast off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, StagePairDistiller
from kd.distillers.registry import DISTILLERS


def _pool_to_smaller(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if s.shape[2:] != t.shape[2:]:
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        s = s if s.shape[2:] == size else F.adaptive_avg_pool2d(s, size)
        t = t if t.shape[2:] == size else F.adaptive_avg_pool2d(t, size)
    return s, t


def _poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch and all channel pairs of <a_c, b_c'>^2; a (B, Ca, N), b (B, Cb, N)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Squared MMD (polynomial kernel) of one stage pair (unweighted), in float32."""
    with torch.autocast(student_map.device.type, enabled=False):  # the kernels' matmuls stay float32 under autocast
        s, t = _pool_to_smaller(student_map.float(), teacher_map.detach().float())
        s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)
        return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


@dataclass
class NSTOptions(BaseOptions):
    feat_weight: float = field(default=50.0, metadata={"min": 0, "help": "weight of the NST (MMD) term, summed over stage pairs"})
    pairs: list[list[int]] | None = field(default=None, metadata={"help": "[student, teacher] stage index pairs, e.g. [[0, 1], [1, 2]] (negative: from the end); null: every stage with the same index (needs equal stage counts)"})


@DISTILLERS.register("nst", options=NSTOptions)
class NST(StagePairDistiller):
    """Neuron selectivity transfer: MMD (polynomial kernel) between the student's and teacher's channel-map distributions, stage by stage."""

    groups = ("feature",)
    paper = "Huang & Wang, arXiv:1707.01219 2017, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
    step_cost = 1.5

    def pair_loss(self, student_map, teacher_map):
        return nst_loss(student_map, teacher_map)
