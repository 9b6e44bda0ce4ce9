"""Knowledge Review (Chen, Liu, Zhao & Jia, CVPR 2021, "Distilling Knowledge via Knowledge Review").

Each teacher level is matched by a map built from the student's level at the same position and all the
student's deeper levels. Attention-based fusion (ABF) modules do the building, from the deepest level to the
shallowest. The hierarchical context loss (HCL) compares the fused maps with the teacher's:

    levels(net)   = its stage maps (Features.stages, shallow to deep), then the pooled feature as a 1x1 map
    ABF_k(x_k, r) : m = BN(conv1x1(x_k))                         (mid channels)
                    unless k is the deepest level:
                      r = nearest-resize(r, size of m);  (a, b) = sigmoid(conv1x1([m, r]))   (2 maps, with bias)
                      m = a * m + b * r
                    m = nearest-resize(m, the size of teacher level k)   (only where the sizes differ)
                    out_k = BN(conv3x3(m))                       (the teacher's channels at level k)
                    the residual passed to level k-1 is m
    hcl(f, g)     = [ MSE(f, g) + sum_j 2^-j MSE(P_lj(f), P_lj(g)) ] / (1 + sum_j 2^-j)
                    P_l = adaptive average pooling to l x l, for the l in (4, 2, 1) smaller than the map
                    (j = 1, 2, ... counts only the sizes used: an 8x8 map weighs 1, 1/2, 1/4, 1/8;
                    a 4x4 map 1, 1/2 (2x2), 1/4 (1x1); a 1x1 map only the full-size term)
    review        = feat_weight * min((epoch + 1) / warmup_epochs, 1) * sum_k hcl(out_k, teacher level k)
    total         = ce_weight * CE + review

Conventions and defaults. The reference is the DKD authors' toolkit (mdistiller). The fixture values in
../shared/fixtures come from it, and tests/test_distillers_reviewkd.py checks them:
- feat_weight 1, ce_weight 1, warmup_epochs 20: the toolkit's defaults (REVIEWKD_WEIGHT, CE_WEIGHT,
  WARMUP_EPOCHS; also the authors' --kd-loss-weight default). Both code bases tune the weight per pair.
  The authors' CIFAR-100 script uses 5 for resnet32x4->resnet8x4, resnet32x4->ShuffleV1 and
  wrn_40_2->wrn_16_2 / wrn_40_1 / ShuffleV1, 8 for resnet32x4->ShuffleV2, 0.6 for resnet56->resnet20 and
  1 for resnet110->resnet32. The toolkit's shipped resnet32x4->resnet8x4 config also sets 5. Set
  reviewkd.feat_weight per pair to reproduce them.
- Warm-up: the reference multiplies the review term by min(epoch / 20, 1) with epochs counted from 1
  (0.05 in the first epoch, full weight from the 20th on). kd's `epoch` counts from 0, so the factor here
  is min((epoch + 1) / warmup_epochs, 1), the same schedule; warmup_epochs = 0 turns it off. (The authors'
  own CIFAR script counts from 0 with the same formula, which makes the first epoch's factor 0; we follow
  the toolkit the fixtures come from.) The warm-up scales the review term only, never CE.
- Middle channels: min(max_mid_channels, channels of the student's pooled feature), max 512 as in both
  reference implementations: 256 for resnet8x4, 64 for resnet8/20/32 and wrn_40_1, 128 for wrn_16_2,
  512 for ShuffleV1/V2, MobileNetV2 and VGG.
- ABF initialisation as in the reference: Kaiming-uniform (a=1) on the 1x1 and 3x3 conv weights, PyTorch's
  defaults on the attention conv and the BatchNorms. The ABFs are child modules (`abfs`, one per level,
  shallow to deep): counted by extra_parameter_count(), optimised with the student, checkpointed with it,
  and discarded after training.
- Which maps. The student's maps are kd's stage outputs (post-ReLU for ResNets, VGG and ShuffleNets), as in
  the reference, which uses the student's post-activation features. The pooled feature is pre_pool averaged
  over H x W: for every kd zoo model, exactly the vector the classifier reads, as in the reference.
  The TEACHER's stage maps are its pre-activation maps (for ResNets, the last block's sum before its ReLU),
  as in the reference, wherever the model gives them (Features.preact_stages: kd's ResNets, WRNs, VGGs,
  MobileNetV2 and ShuffleV1); for a teacher that does not (ShuffleV2, timm:/torchvision: models) its
  post-activation stage outputs are used instead, whose targets lack the negative responses the ReLU removes.
  The teacher's pooled level is the same as the reference's (post-activation, the classifier's input).
- Pairing. Level k of the student goes with level k of the teacher (the pooled level with the pooled one),
  so both must have the same number of stages. That covers every pair the reference supports: ResNet/WRN
  and ShuffleV1/V2 with 3 stages; VGG, MobileNetV2 and ResNet50 with 4. The shapes come from one probe pass
  (kd.distillers.base.probe), never from per-architecture tables. The reference drops the student's stem map (its zip
  stops one level short); kd's stages never include the stem. Unequal stage counts are refused,
  with the stage shapes listed. Use reviewkd.student_stages / reviewkd.teacher_stages (stage indices,
  shallow to deep, negative from the end, equal lengths) to choose the levels. A fused map is enlarged to
  the teacher's size by nearest upsampling, as the reference does for ShuffleV1/V2 and MobileNetV2 students,
  whose maps are half the teacher's. The reference never shrinks one, so a student level larger than its
  teacher level is refused rather than subsampled.
- Losses are computed in float32 (the ABFs run in the network's precision under autocast). The teacher's
  maps are detached. The deepest ABF's BatchNorms see 1x1 maps, so training needs batches of 2 or more
  images (kd's loaders skip a final 1-image training batch).
- Cost: the ABFs often outweigh the student. For resnet8 <- resnet14 they add 114,278 parameters (the
  student has 83,892) and 37.5 MFLOPs per 32x32 image (the student's forward: 25.0). Most of that comes
  from the shallowest level: mid-width (64) maps at 32x32 and a 3x3 projection.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, Shape, describe_stages, pick_stage, probe
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError
from kd.models.features import Features

POOL_SIZES = (4, 2, 1)  # HCL's context levels, each weighted half the one before


def hcl_one(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """HCL of one level: full-size MSE plus MSEs after pooling to 4, 2, 1, weighted 1/2, 1/4, ... and normalised."""
    s, t = student_map.float(), teacher_map.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"hcl: fused map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ in shape")
    total, weight, weight_sum = F.mse_loss(s, t), 1.0, 1.0
    for size in POOL_SIZES:
        if size >= min(s.shape[2], s.shape[3]):  # only sizes smaller than the map (the reference: size < H)
            continue
        weight /= 2.0
        total = total + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
        weight_sum += weight
    return total / weight_sum


def hcl_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss (unweighted): the sum over levels of hcl_one, in float32."""
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"hcl: {len(student_maps)} fused maps but {len(teacher_maps)} teacher maps")
    return sum(hcl_one(s, t) for s, t in zip(student_maps, teacher_maps))


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min((epoch + 1) / warmup_epochs, 1) for kd's 0-based epoch: the reference's min(epoch / W, 1), 1-based."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


class ABF(nn.Module):
    """Attention-based fusion of one level: reduce to the middle width, fuse with the deeper level's residual
    through two sigmoid attention maps, resize to the teacher's size, project to the teacher's channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        # The deepest level has no residual to fuse, hence no attention conv.
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.project = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(out_channels))
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused map at the teacher's size and channels, residual for the next shallower level)."""
        x = self.reduce(x)
        if self.attention is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, residual], dim=1))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.project(x), x


@dataclass
class ReviewKDOptions(BaseOptions):
    feat_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the review (HCL) term; the reference tunes it per pair (5 for resnet32x4->resnet8x4)"})
    warmup_epochs: int = field(default=20, metadata={"min": 0, "help": "the review term grows linearly to full weight over this many epochs: factor min((epoch+1)/warmup_epochs, 1) (0: off)"})
    max_mid_channels: int = field(default=512, metadata={"gt": 0, "help": "ABF middle width = min(this, channels of the student's pooled feature)"})
    student_stages: list[int] | None = field(default=None, metadata={"help": "student stages used as levels, shallow to deep (negative: from the end); null: all"})
    teacher_stages: list[int] | None = field(default=None, metadata={"help": "teacher stages used as levels, shallow to deep (negative: from the end); null: all"})


@dataclass
class ReviewPlan:
    """The stages used on each side and the (C, H, W) of every level (chosen stages, then the pooled 1x1)."""
    student_stages: list[int]
    teacher_stages: list[int]
    student_levels: list[Shape]
    teacher_levels: list[Shape]


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _pooled_level(out: Features, model: nn.Module, role: str) -> Shape:
    if out.pre_pool is None or out.pre_pool.ndim != 4:
        name = getattr(model, "arch_name", type(model).__name__)
        raise KDError(f"reviewkd needs the map that global average pooling consumes (its deepest level is the "
                      f"pooled feature), but the {role} '{name}' exposes none; choose a convolutional {role} "
                      f"whose features end in a spatial map")
    return (out.pre_pool.shape[1], 1, 1)


def _choose(indices: list[int] | None, shapes: list[Shape], role: str) -> list[int]:
    option = f"reviewkd.{role}_stages"
    if not shapes:
        raise KDError(f"reviewkd needs stage maps, but the {role} exposes none; choose a {role} with stages")
    if indices is None:
        return list(range(len(shapes)))
    if not indices:
        raise KDError(f"{option} is empty; list at least one stage or set it to null for all "
                      f"({role} stages: {describe_stages(shapes)})")
    chosen = [pick_stage(i, shapes, role, option) for i in indices]
    if any(a >= b for a, b in zip(chosen, chosen[1:])):
        raise KDError(f"{option}: stages must go from shallow to deep, each once, got {indices} (= {chosen}); "
                      f"{role} stages: {describe_stages(shapes)}")
    return chosen


def _fits(student: Shape, teacher: Shape) -> bool:
    """A fused student map can be brought to the teacher's size (equal or nearest-upsampled)."""
    return student[1] <= teacher[1] and student[2] <= teacher[2]


def _suggest(s_idx: list[int], t_idx: list[int], s_shapes: list[Shape], t_shapes: list[Shape]) -> str:
    """An option setting for unequal stage counts: a run of the longer side's stages as deep as the sizes allow."""
    n = min(len(s_idx), len(t_idx))
    if len(t_idx) > len(s_idx):
        role, count = "teacher", len(t_shapes)
        fits = lambda run: all(_fits(s_shapes[s], t_shapes[t]) for s, t in zip(s_idx, run))  # noqa: E731
    else:
        role, count = "student", len(s_shapes)
        fits = lambda run: all(_fits(s_shapes[s], t_shapes[t]) for s, t in zip(run, t_idx))  # noqa: E731
    runs = [list(range(start, start + n)) for start in range(count - n, -1, -1)]
    return f"reviewkd.{role}_stages={next((run for run in runs if fits(run)), runs[0])}"


def plan_review(student: nn.Module, teacher: nn.Module, options: ReviewKDOptions, input_size) -> ReviewPlan:
    """Pair the student's levels with the teacher's, or refuse the pair with one KDError."""
    s_out, t_out = probe(student, input_size), probe(teacher, input_size)
    s_shapes = [tuple(x.shape[1:]) for x in s_out.stages]
    t_shapes = [tuple(x.shape[1:]) for x in t_out.stages]
    s_pooled, t_pooled = _pooled_level(s_out, student, "student"), _pooled_level(t_out, teacher, "teacher")
    listing = f"student stages: {describe_stages(s_shapes)}; teacher stages: {describe_stages(t_shapes)}"
    s_idx = _choose(options.student_stages, s_shapes, "student")
    t_idx = _choose(options.teacher_stages, t_shapes, "teacher")
    if len(s_idx) != len(t_idx):
        raise KDError(f"reviewkd: the student has {len(s_idx)} stages and the teacher {len(t_idx)}, so their levels "
                      f"cannot be paired one to one; set reviewkd.student_stages / reviewkd.teacher_stages to "
                      f"lists of equal length, e.g. {_suggest(s_idx, t_idx, s_shapes, t_shapes)} ({listing})")
    for s, t in zip(s_idx, t_idx):
        if not _fits(s_shapes[s], t_shapes[t]):
            raise KDError(f"reviewkd: the student's stage {s} ({_shape(s_shapes[s])}) is larger than the teacher's "
                          f"stage {t} ({_shape(t_shapes[t])}) it is paired with; ABF only enlarges a fused map to "
                          f"the teacher's size (nearest upsampling, as the reference); choose "
                          f"reviewkd.student_stages / reviewkd.teacher_stages so that no student stage is larger "
                          f"than its teacher stage ({listing})")
    return ReviewPlan(s_idx, t_idx, [s_shapes[i] for i in s_idx] + [s_pooled],
                      [t_shapes[i] for i in t_idx] + [t_pooled])


def review_levels(out: Features, stages: list[int], preact: bool = False) -> list[torch.Tensor]:
    """The chosen stage maps (before their last ReLU when `preact` and the model gives them), then the pooled
    feature as a (B, C, 1, 1) map, shallow to deep."""
    maps = out.preact_stages if preact and out.preact_stages is not None else out.stages
    return [maps[i] for i in stages] + [F.adaptive_avg_pool2d(out.pre_pool, 1)]


@DISTILLERS.register("reviewkd", options=ReviewKDOptions)
class ReviewKD(Distiller):
    """Knowledge review: ABF modules fuse each student level with its deeper ones; HCL matches them to the teacher's."""

    groups = ("feature",)
    paper = "Chen, Liu, Zhao & Jia, CVPR 2021, Distilling Knowledge via Knowledge Review"
    step_cost = 2.5

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        plan = plan_review(student, teacher, options, data.input_size)
        self.student_stages, self.teacher_stages = plan.student_stages, plan.teacher_stages
        self.out_sizes = [tuple(shape[1:]) for shape in plan.teacher_levels]
        mid = min(options.max_mid_channels, plan.student_levels[-1][0])
        deepest = len(plan.student_levels) - 1
        # One ABF per level, shallow to deep; built on the CPU, moved to the device with the distiller.
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=k < deepest)
                                  for k, (s, t) in enumerate(zip(plan.student_levels, plan.teacher_levels)))

    @classmethod
    def check_models(cls, student, teacher, options, data):
        plan_review(student, teacher, options, data.input_size)

    def fuse(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's levels (shallow to deep) -> fused maps at the teacher's shapes (shallow to deep)."""
        fused, residual = [None] * len(levels), None
        for k in reversed(range(len(levels))):
            fused[k], residual = self.abfs[k](levels[k], residual, self.out_sizes[k])
        return fused

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        fused = self.fuse(review_levels(out, self.student_stages))
        teacher_maps = [t.detach() for t in review_levels(teacher, self.teacher_stages, preact=True)]
        review = o.feat_weight * warmup_factor(epoch, o.warmup_epochs) * hcl_loss(fused, teacher_maps)
        return out.logits, {"ce": self.ce(out.logits, targets), "review": review}
