"""Overhaul of feature distillation (Heo et al., ICCV 2019, "A Comprehensive Overhaul of Feature Distillation").

The student's stage maps BEFORE their last ReLU go through a connector (1x1 conv + BN) and are matched to the
teacher's pre-ReLU maps with a partial L2 distance that ignores what the teacher's ReLU would discard anyway:

    target  = max(f_teacher, margin_c)        margin_c < 0: expected teacher response where it is negative
    partial = sum over (C, H, W), mean over B, of (s - target)^2 where s > target or f_teacher > 0
    ofd     = feat_weight * sum over pairs i = 0..n-1 of partial_i / 2^(n-1-i)
    total   = ce_weight * CE + ofd

s = connector(student pre-ReLU map). The three cases of the reference are: teacher at or below its margin ->
penalise only s above the margin; teacher between margin and 0 -> penalise only s above the teacher; teacher
positive -> plain squared error. `ofd_loss` implements them literally, for any margin.

The margin of teacher channel c comes from the BatchNorm whose output (plus the shortcut, in residual nets)
the stage's last ReLU acts on: taking that BN's output as Gaussian with mean = BN bias (beta) and
std = |BN weight| (gamma), the margin is its expected value where it is negative,

    margin = E[x | x < 0] = beta - |gamma| * phi(beta / |gamma|) / Phi(-beta / |gamma|)

(phi, Phi: standard normal density and distribution), or -3 |gamma| where Phi(-beta/|gamma|) <= 0.001, as in
the reference (a BN with gamma = 0 gets min(beta, 0), the limit; the reference divides by zero there). The
margins are computed once from the teacher given to the constructor and kept as buffers (checkpointed).

Defaults and conventions are those of the DKD authors' toolkit (mdistiller), whose OFD the CIFAR-100
benchmark tables use; ../shared/fixtures/reference_losses_methods.json case "ofd_feat" holds its loss value:
- feat_weight 0.001, ce_weight 1; connectors are a bias-free 1x1 conv (He normal, std sqrt(2 / out_channels))
  then BN (weight 1, bias 0), trained with the student, counted, optimised and checkpointed.
- Pairs: by default every student stage with the teacher stage of the same index, and only when both networks
  have the same number of stages (true of every benchmark pair); other counts are refused with the stage
  shapes listed, and `ofd.pairs` names [student, teacher] pairs explicitly. The i-th of n listed pairs weighs
  1/2^(n-1-i), so list them shallow to deep (the last weighs 1). Each pair's margin is that of its own
  teacher stage (the reference indexes margins by position, which goes wrong when its from-the-end
  alignment drops teacher stages; kd does not drop any silently).
- Spatial sizes: the teacher map is adaptive-average-pooled to the student's size, as in the reference. A
  teacher map SMALLER than the student's would be enlarged by that pooling; kd refuses such a pair instead.
- Losses are computed in float32, whatever precision the networks ran in.
Deviation: the reference switches its teacher to training mode along with the student (its OFD overrides
train()), so its teacher's pre-ReLU maps use batch statistics. kd's trainer runs the teacher once per batch
in eval mode for every method, so here they use the running statistics. The margins (BN weight and bias) are
the same either way.

How kd obtains pre-ReLU maps and margins from its own models (kd/models): `forward_features` fills
`Features.preact_stages` (None when a model cannot) and `model.bn_before_relu()` lists the BN per stage (None
when there is none). Both come from tensors the forward pass computes anyway: where a stage's last ReLU
was in place (CIFAR ResNets) it now runs out of place, so its input survives instead of being overwritten;
nothing else is computed, and other methods pay nothing measurable for it.
- Teacher or student (maps and margins):
  resnet8 ... resnet110, resnet8x4, resnet32x4: the last block's bn2(...) + shortcut; BN = that block's bn2.
  ResNet50: the last bottleneck's bn3(...) + shortcut; BN = its bn3.
  vgg8 ... vgg19: each block's last BN output (the block ends in conv-BN; ReLU follows); BN = that BN.
  wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2: a stage ends without a ReLU, so its pre-ReLU map is the output of
  the BN the next ReLU acts on: the next group's first-block bn1, and the final bn1 for the last stage (the
  reference's WRN does the same); BN = those BNs.
- Student only (maps, no margins):
  MobileNetV2: linear bottlenecks end in no ReLU, so each stage map is its own pre-ReLU map; with no ReLU
  there is no margin.
  ShuffleV1: the last unit's branch + shortcut before its ReLU; no margins, because the reference does not
  take ShuffleNets as OFD teachers either.
- Neither: ShuffleV2 (its stage output shuffles a pass-through half with a ReLU'd half; a pre-ReLU map would
  cost an extra concatenation in every forward pass) and the timm:/torchvision: adapters. check_models
  refuses them by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, Shape, choose_stage_pairs, describe_stages, probe
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError
from kd.models.features import Features

TEACHERS = "resnet8 ... resnet110, resnet8x4, resnet32x4, ResNet50, vgg8 ... vgg19, wrn_*"
STUDENTS = TEACHERS + ", MobileNetV2, ShuffleV1"


def ofd_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 of one stage (unweighted, float32): summed over C, H, W, averaged over the batch.

    source: connector output (B, C, H, W); target: teacher pre-ReLU map of the same shape; margin: (1, C, 1, 1)."""
    s, t, m = source.float(), target.detach().float(), margin.float()
    below_margin = (t <= m) & (s > m)            # teacher cut off by its ReLU: only s above the margin counts
    negative = (t > m) & (t <= 0) & (s > t)      # teacher negative but above its margin: only s above t counts
    loss = (s - m).pow(2) * below_margin + (s - t).pow(2) * (negative | (t > 0))
    return loss.sum() / s.shape[0]


@torch.no_grad()
def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, weight^2), or -3|weight| where P(x < 0) <= 0.001 (float32)."""
    std, mean = weight.detach().double().abs(), bias.detach().double()
    z = mean / std
    below = torch.special.ndtr(-z)  # P(x < 0)
    expected = mean - std * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / below
    margin = torch.where(below > 1e-3, expected, -3 * std)
    return torch.where(std > 0, margin, mean.clamp(max=0)).float()


def _name(model: nn.Module) -> str:
    return getattr(model, "arch_name", type(model).__name__)


def _bns(model: nn.Module):
    method = getattr(model, "bn_before_relu", None)
    return method() if method is not None else None


def check_ofd(student: nn.Module, teacher: nn.Module, s_out: Features, t_out: Features,
              o: "OFDOptions") -> list[tuple[int, int]]:
    """The stage pairs, or a KDError naming what the pair of models lacks."""
    if s_out.preact_stages is None:
        raise KDError(f"ofd needs the student's stage maps before their last ReLU, but the student '{_name(student)}' "
                      f"does not give them; choose a student that does ({STUDENTS})")
    bns = _bns(teacher)
    if t_out.preact_stages is None or bns is None:
        raise KDError(f"ofd needs the teacher's stage maps before their last ReLU and the BatchNorms that feed "
                      f"those ReLUs (for its margins), but the teacher '{_name(teacher)}' does not give them; "
                      f"choose a teacher that does ({TEACHERS})")
    s_shapes: list[Shape] = [tuple(p.shape[1:]) for p in s_out.preact_stages]
    t_shapes: list[Shape] = [tuple(p.shape[1:]) for p in t_out.preact_stages]
    assert len(bns) == len(t_shapes) and all(bn.num_features == c for bn, (c, _, _) in zip(bns, t_shapes))
    pairs = choose_stage_pairs("ofd", s_shapes, t_shapes, o.pairs)
    for s, t in pairs:
        (_, hs, ws), (_, ht, wt) = s_shapes[s], t_shapes[t]
        if ht < hs or wt < ws:
            raise KDError(
                f"ofd: the teacher's stage {t} ({'x'.join(map(str, t_shapes[t]))}) is smaller than the student's "
                f"stage {s} ({'x'.join(map(str, s_shapes[s]))}); the teacher map is average-pooled down to the "
                f"student's size, never enlarged, so pair stages with ofd.pairs where the teacher's is at least as "
                f"large (student stages: {describe_stages(s_shapes)}; teacher stages: {describe_stages(t_shapes)})")
    return pairs


def make_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))  # He normal, fan_out of a 1x1 conv
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))  # BN starts as weight 1, bias 0


@dataclass
class OFDOptions(BaseOptions):
    feat_weight: float = field(default=0.001, metadata={"min": 0, "help": "weight of the OFD term (partial L2, summed over C, H, W, mean over the batch)"})
    pairs: list[list[int]] | None = field(default=None, metadata={"help": "[student, teacher] stage index pairs, shallow to deep (the i-th of n weighs 1/2^(n-1-i)); negative: from the end; null: every stage with the same index (needs equal stage counts)"})


@DISTILLERS.register("ofd", options=OFDOptions)
class OFD(Distiller):
    """Overhaul of feature distillation: connectors map the student's pre-ReLU stage maps onto the teacher's, with a partial L2 that ignores what the teacher's ReLU cuts below its BN-derived margin."""

    groups = ("feature",)
    paper = "Heo et al., ICCV 2019, A Comprehensive Overhaul of Feature Distillation"
    step_cost = 1.2

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        s_out, t_out = probe(student, data.input_size), probe(teacher, data.input_size)
        self.pairs = check_ofd(student, teacher, s_out, t_out, options)
        bns = _bns(teacher)
        self.connectors = nn.ModuleList(
            make_connector(s_out.preact_stages[s].shape[1], t_out.preact_stages[t].shape[1]) for s, t in self.pairs)
        for i, (_, t) in enumerate(self.pairs):
            # A buffer: fixed by the teacher, saved with the distiller, moved to the device with it.
            self.register_buffer(f"margin{i}", bn_margin(bns[t].weight, bns[t].bias).view(1, -1, 1, 1).cpu())

    @classmethod
    def check_models(cls, student, teacher, options, data):
        check_ofd(student, teacher, probe(student, data.input_size), probe(teacher, data.input_size), options)

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.pairs))]

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        n = len(self.pairs)
        term = 0.0
        for i, ((s, t), connector, margin) in enumerate(zip(self.pairs, self.connectors, self.margins())):
            source = connector(out.preact_stages[s])
            target = teacher.preact_stages[t].detach().float()
            if target.shape[2:] != source.shape[2:]:
                target = F.adaptive_avg_pool2d(target, source.shape[2:])
            term = term + ofd_loss(source, target, margin) / 2 ** (n - 1 - i)
        return out.logits, {"ce": self.ce(out.logits, targets), "ofd": o.feat_weight * term}
