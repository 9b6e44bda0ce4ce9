"""Variational information distillation (Ahn et al., CVPR 2019, "Variational Information Distillation for
Knowledge Transfer").

VID maximises a variational lower bound on the mutual information between paired student and teacher maps.
For each pair a regressor predicts the mean of a Gaussian over the teacher map, with one learnable variance
per teacher channel, and the student minimises the Gaussian negative log-likelihood of the teacher's map:

    mu        = regressor(f_student)               1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv
    sigma^2_c = softplus(log_scale_c) + eps
    nll       = mean over (B, C, H, W) of  0.5 * ((mu - f_teacher)^2 / sigma^2_c + log sigma^2_c)
    vid       = feat_weight * sum over pairs of nll            total = ce_weight * CE + vid

(the constant 0.5 * log 2*pi is dropped, as in the reference). Conventions and defaults are those of the
standard CIFAR-100 benchmark's reference code (RepDistiller's VIDLoss, "code from the author"; the DKD authors'
toolkit has the same loss); ../shared/fixtures/reference_losses_methods.json case "vid" holds its value:
- feat_weight 1, ce_weight 1 (the benchmark's `-a 0 -b 1`).
- Regressor: three bias-free 1x1 convs, s -> t -> t -> t channels (the middle width is the teacher's channel
  count), ReLU between them and none at the end, PyTorch's default initialisation.
- log_scale starts at softplus^-1(init_pred_var - eps), so the initial variance is init_pred_var = 5.0;
  eps = 1e-5. The log_scales are learned with the student and the regressors, as in the reference the
  benchmark's numbers come from (the DKD authors' re-implementation keeps them in a plain Python list, so
  there they are never optimised; kd does not copy that slip).
- Pairs: by default every student stage with the teacher stage of the same index (the benchmark pairs all
  its intermediate stage maps, feat[1:-1], this way), and only when both networks have the same number of
  stages; other counts are refused with the stage shapes listed, and `vid.pairs` ([student, teacher] index
  pairs, negative counts from the end) names them explicitly. Never a silent zip.
- Different spatial sizes: the larger map (student's or teacher's) is adaptive-average-pooled to the smaller
  one BEFORE the regressor, as in the reference (which compares heights only and assumes square maps; kd pools
  each dimension to the smaller of the two), so every pair of stages can be matched.
- The regressors and log_scales are child modules of the distiller: counted, optimised, checkpointed; they
  are dropped after training. Losses are computed in float32, whatever precision the networks ran in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, Shape, choose_stage_pairs, probe_shapes
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError


def vid_loss(pred_mean: torch.Tensor, teacher_map: torch.Tensor, log_scale: torch.Tensor,
             eps: float = 1e-5) -> torch.Tensor:
    """Gaussian negative log-likelihood of the teacher map under N(pred_mean, softplus(log_scale) + eps),
    one variance per channel, averaged over every element (unweighted, float32)."""
    variance = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
    squared = (pred_mean.float() - teacher_map.detach().float()).pow(2)
    return (0.5 * (squared / variance + variance.log())).mean()


def common_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller size in each direction (adaptive average pooling); a map already that size is
    left as it is."""
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    student = student if student.shape[2:] == size else F.adaptive_avg_pool2d(student, size)
    teacher = teacher if teacher.shape[2:] == size else F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


@dataclass
class VIDOptions(BaseOptions):
    feat_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the VID term (Gaussian negative log-likelihood, summed over stage pairs)"})
    init_pred_var: float = field(default=5.0, metadata={"gt": 0, "help": "initial variance of the Gaussian over each teacher channel"})
    eps: float = field(default=1e-5, metadata={"gt": 0, "help": "floor added to the variance, softplus(log_scale) + eps"})
    pairs: list[list[int]] | None = field(default=None, metadata={"help": "[student, teacher] stage index pairs, e.g. [[0, 0], [1, 1]] (negative: from the end); null: every stage with the same index (needs equal stage counts)"})


def check_vid(student: list[Shape], teacher: list[Shape], o: VIDOptions) -> list[tuple[int, int]]:
    if o.init_pred_var <= o.eps:
        raise KDError(f"vid.init_pred_var ({o.init_pred_var}) must be larger than vid.eps ({o.eps}), because the "
                      f"variance is softplus(log_scale) + eps; raise vid.init_pred_var or lower vid.eps")
    return choose_stage_pairs("vid", student, teacher, o.pairs)


def make_regressor(student_channels: int, teacher_channels: int) -> nn.Sequential:
    s, t = student_channels, teacher_channels
    return nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.ReLU(), nn.Conv2d(t, t, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(t, t, 1, bias=False))


@DISTILLERS.register("vid", options=VIDOptions)
class VID(Distiller):
    """Variational information distillation: per stage pair, a regressor predicts a Gaussian over the teacher map (learned per-channel variance), trained by its negative log-likelihood."""

    groups = ("feature",)
    paper = "Ahn et al., CVPR 2019, Variational Information Distillation for Knowledge Transfer"
    step_cost = 1.2

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        s_shapes, t_shapes = probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size)
        self.pairs = check_vid(s_shapes, t_shapes, options)
        self.regressors = nn.ModuleList(make_regressor(s_shapes[s][0], t_shapes[t][0]) for s, t in self.pairs)
        # softplus^-1(v) = log(exp(v) - 1), so softplus(log_scale) + eps starts at init_pred_var.
        start = math.log(math.expm1(options.init_pred_var - options.eps))
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((t_shapes[t][0],), start)) for _, t in self.pairs)

    @classmethod
    def check_models(cls, student, teacher, options, data):
        check_vid(probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size), options)

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        term = 0.0
        for (s, t), regressor, log_scale in zip(self.pairs, self.regressors, self.log_scales):
            f_s, f_t = common_size(out.stages[s], teacher.stages[t].detach())
            term = term + vid_loss(regressor(f_s), f_t, log_scale, o.eps)
        return out.logits, {"ce": self.ce(out.logits, targets), "vid": o.feat_weight * term}
