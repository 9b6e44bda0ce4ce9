"""Class Attention Transfer (Guo, Liu, Chen, Wang, CVPR 2023, "Class Attention Transfer Based Knowledge
Distillation"), CAT-KD: the student reproduces the teacher's class activation maps of *all* classes.

With F the pre-pool map (B, K, H, W) (the exact tensor global average pooling consumes) and W the
classifier weight (C, K), a network's CAM stack is

    CAM[b, c] = sum_k W[c, k] F[b, k]          (B, C, H, W): one map per class, the bias left out

Both stacks are adaptive-average-pooled to cam_resolution x cam_resolution, optionally L2-normalised over
(H, W) per sample and class (normalise: l2, as torch's F.normalize: x / max(||x||, 1e-12)), and compared by
mean squared error over all entries:

    L_cat = MSE(N(pool(CAM_student)), N(pool(CAM_teacher)))        total = ce_weight * CE + cam_weight * L_cat

The student's CAMs carry gradient into its features and its classifier weight (in the reference the
classifier is a 1x1 conv whose output is the CAM stack, trained by both terms); the teacher's carry none.
The reference's student has no classifier bias; kd's models keep theirs, and since the bias is not part of
a CAM the CAT term never touches it. The reference's student classifier is a 1x1 conv and so starts from the
He (fan_out) init of convs; kd's students keep their benchmark Linear init, whose smaller weights give smaller
CAMs at the start (with normalise l2 the CAT gradient grows as 1 / |CAM|).

Not CCM (kd/distillers/ccm.py): CCM matches one map, the teacher's CAM of the true class, against the
student's class-agnostic map (CAAM, the channel sum) with an L1 loss after min-max/L2/softmax
normalisation. CAT-KD matches the whole C-map stack class by class, at a small pooled resolution, with
MSE, and so needs student and teacher to share the classes (C maps each) but no common map size.

Defaults: the reference code's global defaults (the authors' repository, GzyAftermath/CAT-KD,
mdistiller/engine/cfg.py): cam_weight (the paper's beta) 400, cam_resolution 2, L2 normalisation on,
binarisation off, CE weight 1, no KD term (CAT-KD is CE + CAT; its onlyCAT variant drops CE). The
reference tunes beta, the resolution and the normalisation per pair (e.g. resnet32x4->resnet8x4: 15 at 2x2
without normalisation; resnet32x4->ShuffleV1: 600 at 4x4 with it); the CIFAR-100 pair recipes
(recipes/cifar100/<pair>/students.yaml) carry those values. The authors advise tuning beta so that the
CAT term is roughly 1-50 after the first epoch.

binarise (off by default, as in the reference, which uses it only in its CAT-alone experiments): before
pooling, every teacher map becomes 1 where it exceeds its own mean absolute value over (H, W), else 0.

A cam_resolution larger than either pre-pool map is refused: pooling "up" would only repeat values.
The reference's option of transferring only some classes' CAMs (top / bottom n by the teacher's score) is
not implemented. Computed in float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, Distiller, probe
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError
from kd.models.features import Features, require_cam


def cam_stack(pre_pool: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Every class's CAM: (B, K, H, W), (C, K) -> (B, C, H, W), in float32 (also under autocast, which
    would otherwise run the contraction in half precision)."""
    with torch.autocast(pre_pool.device.type, enabled=False):
        return torch.einsum("bkhw,ck->bchw", pre_pool.float(), weight.float())


def binarise_cams(cams: torch.Tensor) -> torch.Tensor:
    """1 where a map exceeds its mean absolute value over (H, W), else 0 (the reference's threshold)."""
    threshold = cams.abs().mean((2, 3), keepdim=True)
    return (cams > threshold).to(cams.dtype)


def cat_kd_loss(student_cams: torch.Tensor, teacher_cams: torch.Tensor, cam_resolution: int,
                normalise: bool) -> torch.Tensor:
    """MSE of the two CAM stacks pooled to cam_resolution x cam_resolution, each map optionally
    L2-normalised over (H, W) first; (B, C, Hs, Ws), (B, C, Ht, Wt) -> scalar, in float32."""
    size = (cam_resolution, cam_resolution)
    s = F.adaptive_avg_pool2d(student_cams.float(), size)
    t = F.adaptive_avg_pool2d(teacher_cams.float(), size)
    if normalise:
        s = s / s.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        t = t / t.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return F.mse_loss(s, t)


@dataclass
class CATKDOptions(BaseOptions):
    ce_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the cross-entropy term"})
    cam_weight: float = field(default=400.0, metadata={"min": 0, "help": "weight of the class-attention-transfer term (the paper's beta; tuned per pair)"})
    cam_resolution: int = field(default=2, metadata={"min": 1, "help": "side of the pooled CAMs that are compared"})
    normalise: Literal["l2", "none"] = field(default="l2", metadata={"help": "l2: normalise each pooled CAM over H x W; none: compare raw CAMs"})
    binarise: bool = field(default=False, metadata={"help": "binarise the teacher's CAMs at their mean absolute value before pooling"})


def check_pair(student, teacher, options: CATKDOptions, data) -> None:
    require_cam(student, "student", "cat_kd")
    require_cam(teacher, "teacher", "cat_kd")
    s_out, t_out = probe(student, data.input_size), probe(teacher, data.input_size)
    s_classes, t_classes = s_out.classifier.out_features, t_out.classifier.out_features
    if s_classes != t_classes:
        raise KDError(f"cat_kd transfers the teacher's CAM of every class to the student's CAM of the same class, but "
                      f"the student has {s_classes} classes and the teacher {t_classes}; build both for the data "
                      f"set's {data.num_classes} classes")
    for role, out in (("student", s_out), ("teacher", t_out)):
        h, w = out.pre_pool.shape[-2:]
        if options.cam_resolution > min(h, w):
            raise KDError(f"cat_kd.cam_resolution {options.cam_resolution} is larger than the {role}'s {h}x{w} "
                          f"pre-pool map (at {data.image_size[0]}x{data.image_size[1]} input), so pooling would only "
                          f"repeat values; set cat_kd.cam_resolution to at most {min(h, w)}")


@DISTILLERS.register("cat_kd", options=CATKDOptions)
class CATKD(Distiller):
    """CAT-KD: the student's CAMs of all classes, pooled to a small size, match the teacher's (MSE)."""

    groups = ("cam",)
    paper = "Guo, Liu, Chen, Wang, CVPR 2023, Class Attention Transfer Based Knowledge Distillation"

    @classmethod
    def check_models(cls, student, teacher, options, data):
        check_pair(student, teacher, options, data)

    def forward(self, images, targets, teacher: Features, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        student_cams = cam_stack(out.pre_pool, out.classifier.weight)
        teacher_cams = cam_stack(teacher.pre_pool.detach(), teacher.classifier.weight.detach())
        if o.binarise:
            teacher_cams = binarise_cams(teacher_cams)
        term = cat_kd_loss(student_cams, teacher_cams, o.cam_resolution, o.normalise == "l2")
        return out.logits, {"ce": self.ce(out.logits, targets), "cat": o.cam_weight * term}
