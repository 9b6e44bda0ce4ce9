"""KD-SVD (Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition").

Each stage map is compressed by a truncated SVD to its leading right singular vectors; the knowledge
is the relation between the compressed features of consecutive stages, which the student matches:

    X        = f reshaped to (B, C*H, W)                      (per stage, per image)
    V^t      = the teacher's first k right singular vectors,  times its first k singular values
               L2-normalised over the k (so for k = 1 the factor is 1)
    V^s      = the student's first k+3 right singular vectors, of which the one with the largest
               |cosine| to each teacher vector is kept, with the sign of that cosine; times the
               teacher's normalised singular values
    R_i      = exp(-(V_i[:, a, :] - V_{i-1}[:, b, :])^2 / 8)  (Gaussian RBF between every entry a of
                                                                pair i and every entry b of pair i-1)
    kdsvd    = feat_weight * sum over consecutive pairs of  sum (R^s_i - R^t_i)^2 / B
    total    = ce_weight * CE + kdsvd

Conventions (those of the DKD authors' toolkit mdistiller, whose code the CIFAR-100 benchmark's KDSVD
numbers come from; ../shared/fixtures/reference_losses_methods.json holds its value, case "kdsvd", which
this module reproduces to about 1e-6 relative on the CPU):
- The matrix given to the SVD is the NCHW map viewed as (B, C*H, W), so the singular vectors run along
  the map's width W: this is what the reference computes (the authors' TensorFlow code decomposes the
  (H*W) x C matrix of an NHWC map instead, and RepDistiller's port uses (H*W) x C too, which gives a
  different value on the fixture). Paired student and teacher stages must therefore have the same
  width; consecutive stages may differ.
- Stages: the reference uses every stage after the stem (its feats[1:], i.e. all of kd's
  Features.stages), paired by position, and relates each pair to the previous one (so at least two
  pairs are needed). The default here pairs every student stage with the teacher stage of the same
  index and only when both networks have the same number of stages; otherwise set `kdsvd.pairs`
  ([student, teacher] index pairs, shallow to deep; negative counts from the end). Never a silent zip.
- The sign of a singular vector is arbitrary. The student's vectors are sign-aligned to the teacher's,
  but the teacher's relative sign between consecutive stages is whatever the SVD routine returns, as in
  the reference; the value may therefore differ between SVD back ends (CPU LAPACK, CUDA) for the same
  maps, not between runs on the same one.
- Non-finite singular values/vectors and non-finite RBF differences are set to zero, as in the reference.
  In addition (not in the reference) a non-finite gradient reaching a student map through the SVD is set
  to zero: the SVD's gradient is undefined for a map with repeated singular values (an all-zero map
  after ReLU, say), and such an image then simply gives no KD-SVD gradient instead of NaN weights.
- Weights: k = 1, feat_weight 1, ce_weight 1 (the reference's CIFAR-100 configuration). The loss is
  numerically delicate (the SVD and the arg-max alignment); the fixture is compared at 1e-3 relative.
- Computed in float32 with autocast off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kd.distillers.base import BaseOptions, Distiller, Shape, choose_stage_pairs, describe_stages, probe_shapes
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError

EXTRA_STUDENT_VECTORS = 3  # the student offers k + 3 candidate vectors to align with the teacher's k


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _zero_non_finite_grad(grad: torch.Tensor) -> torch.Tensor:
    return _finite(grad)


def truncated_svd(feature: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (singular values (B, n) L2-normalised over n, right singular vectors (B, W, n)
    L2-normalised over W), from the SVD of the map viewed as (B, C*H, W), in float32."""
    b, c, h, w = feature.shape
    x = feature.float().reshape(b, c * h, w)
    if x.requires_grad:
        x.register_hook(_zero_non_finite_grad)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s[:, :n]), _finite(vh[:, :n, :].transpose(1, 2))
    return F.normalize(s, dim=1), F.normalize(v, dim=1)


def align_to_teacher(student_v: torch.Tensor, teacher_v: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector with the largest |cosine| to it, times that cosine's sign:
    (B, W, ks), (B, W, kt) -> (B, W, kt)."""
    cosine = (student_v.transpose(1, 2) @ teacher_v).detach()
    best = cosine.abs().amax(dim=1, keepdim=True)
    select = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return student_v @ select


def _rbf(v: torch.Tensor, v_before: torch.Tensor) -> torch.Tensor:
    """(B, Wi, k), (B, Wj, k) -> (B, Wi, Wj, k): exp(-(v_a - v_before_b)^2 / 8)."""
    return torch.exp(-(v.unsqueeze(2) - v_before.unsqueeze(1)).pow(2) / 8)


def kdsvd_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    """KD-SVD loss (unweighted) over paired stage maps, shallow to deep, in float32."""
    with torch.autocast(student_maps[0].device.type, enabled=False):  # SVD, alignment and RBF in float32
        total = student_maps[0].new_zeros((), dtype=torch.float32)
        before = None
        for f_s, f_t in zip(student_maps, teacher_maps, strict=True):
            with torch.no_grad():
                s_t, v_t = truncated_svd(f_t.detach(), k)
            _, v_s = truncated_svd(f_s, k + EXTRA_STUDENT_VECTORS)
            v_s = align_to_teacher(v_s, v_t)
            scale = s_t.unsqueeze(1)
            v_t, v_s = v_t * scale, v_s * scale
            if before is not None:
                diff = (_rbf(v_s, before[0]) - _rbf(v_t, before[1])).pow(2)
                total = total + _finite(diff).sum()
            before = (v_s, v_t)
        return total / student_maps[0].shape[0]


def check_kdsvd_pairs(student: list[Shape], teacher: list[Shape], pairs: list[tuple[int, int]], k: int) -> None:
    """Refuse pairs the loss cannot use: fewer than two, unequal widths, or fewer than k teacher vectors."""
    listing = f"student stages (C x H x W): {describe_stages(student)}; teacher stages: {describe_stages(teacher)}"
    if len(pairs) < 2:
        raise KDError(f"kdsvd relates each stage pair to the previous one, so it needs at least two stage pairs, got "
                      f"{[list(p) for p in pairs]}; list two or more in kdsvd.pairs ({listing})")
    for s, t in pairs:
        (_, _, ws), (ct, ht, wt) = student[s], teacher[t]
        if ws != wt:
            raise KDError(f"kdsvd: student stage {s} ({'x'.join(map(str, student[s]))}) and teacher stage {t} "
                          f"({'x'.join(map(str, teacher[t]))}) differ in width ({ws} vs {wt}); KD-SVD compares "
                          f"singular vectors along the width, so pair stages of equal width in kdsvd.pairs ({listing})")
        if k > min(ct * ht, wt):
            raise KDError(f"kdsvd.k is {k}, but teacher stage {t} ({'x'.join(map(str, teacher[t]))}) has only "
                          f"{min(ct * ht, wt)} singular vectors; lower kdsvd.k or choose other stages ({listing})")


@dataclass
class KDSVDOptions(BaseOptions):
    feat_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the KD-SVD term"})
    k: int = field(default=1, metadata={"min": 1, "help": "number of the teacher's leading singular vectors per stage (the student offers k + 3)"})
    pairs: list[list[int]] | None = field(default=None, metadata={"help": "[student, teacher] stage index pairs, shallow to deep, each pair of equal width (negative: from the end); null: every stage with the same index (needs equal stage counts)"})


def choose_kdsvd_pairs(student: list[Shape], teacher: list[Shape], o: KDSVDOptions) -> list[tuple[int, int]]:
    pairs = choose_stage_pairs("kdsvd", student, teacher, o.pairs)
    check_kdsvd_pairs(student, teacher, pairs, o.k)
    return pairs


@DISTILLERS.register("kdsvd", options=KDSVDOptions)
class KDSVD(Distiller):
    """KD-SVD: the student matches RBF relations between the leading singular vectors of consecutive stages."""

    groups = ("feature",)
    paper = "Lee, Kim & Song, ECCV 2018, Self-supervised Knowledge Distillation Using Singular Value Decomposition"
    step_cost = 1.8

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        self.pairs = choose_kdsvd_pairs(probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size), options)

    @classmethod
    def check_models(cls, student, teacher, options, data):
        choose_kdsvd_pairs(probe_shapes(student, data.input_size), probe_shapes(teacher, data.input_size), options)

    def forward(self, images, targets, teacher, epoch=0):
        o = self.options
        out = self.student.forward_features(images)
        term = kdsvd_loss([out.stages[s] for s, _ in self.pairs], [teacher.stages[t].detach() for _, t in self.pairs], o.k)
        return out.logits, {"ce": self.ce(out.logits, targets), "kdsvd": o.feat_weight * term}
