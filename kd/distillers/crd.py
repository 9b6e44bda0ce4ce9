"""Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020, "Contrastive Representation
Distillation").

The student's and the teacher's pooled features are embedded (Linear to feat_dim, then L2-normalised) and
the pair of embeddings of the same image is told apart from the embeddings of other images, which come from
two memory banks (one row per training image, one bank per network) rather than from the batch. With the
image itself in slot 0 and K other images in slots 1..K of its sample list, and a bank row m_j:

    P(i, j)  = exp(<m_j, v_i> / nce_t) / Z                      (v_i: the anchor's embedding of image i)
    L_nce    = -1/B sum_i [ log P(i,0) / (P(i,0) + K/N)  +  sum_{k=1..K} log (K/N) / (P(i,k) + K/N) ]
    crd      = feat_weight * ( L_nce(student anchor, teacher bank) + L_nce(teacher anchor, student bank) )
    total    = ce_weight * CE + crd  [+ kd_weight * KD]

N is the training-set size (K/N: the noise distribution is uniform over the set, 1/N per image), and an
epsilon 1e-7 sits in both denominators, as in the reference. This is the NCE form of the CRD objective
(the paper's Eq. 18), the one behind the CRD numbers of the CIFAR-100 benchmark.

Conventions and defaults (those of the reference code, HobbitLong/RepDistiller crd/ and train_student.py,
also used by mdistiller; ../shared/fixtures/README.md lists them):
- feat_weight 0.8, ce_weight 1, kd_weight 0: the benchmark's CRD row is `-r 1 -a 0 -b 0.8` (CE 1, KD 0,
  CRD 0.8); its "CRD+KD" variant is `-a 1`, reachable here as kd_weight=1 (KD at temperature kd_T = 4).
- feat_dim 128, nce_k 16384 negatives per image, nce_t 0.07, nce_m 0.5 (memory momentum).
- Features: the pooled vector pre_pool.mean((2, 3)) of each network (the reference's last `is_feat`
  output, the one the classifier reads). A model without a pre-pool map is refused by name.
- Heads: one Linear(C, feat_dim) with bias per network, then L2 normalisation. Both are extra modules of
  the distiller, trained with the student; the teacher's head is trained too, on the frozen teacher's
  (detached) features, as in the reference. Both are discarded after training.
- Banks: persistent buffers memory_student and memory_teacher of train_size x feat_dim float32 (not
  parameters: never optimised, but checkpointed with the distiller). Initialised uniform in
  [-s, s], s = 1 / sqrt(feat_dim / 3) (rows of norm about 1), as the reference does. After the loss of
  a batch is computed, the rows of the batch's images are updated: row <- normalise(nce_m * row +
  (1 - nce_m) * embedding), the student's embedding into the student's bank and the teacher's into the
  teacher's. The loss of a batch therefore sees the banks as they were before that batch.
- Z: the NCE normalisation constant of each direction is estimated once, on the first batch, as
  mean(exp(<m, v> / nce_t)) * N over that batch's samples, and kept fixed; it is the buffer nce_z (-1:
  not yet estimated), so a resumed run uses the same constants.
- Negatives: the reference's default CIFAR-100 setting (mode "exact") has its data set hand each image K
  indices drawn without replacement from the images of the OTHER classes. `negatives: other_classes` (the
  default) draws, with replacement, only among the images of the other classes, read from the training labels
  the data set declares (DataSpec.train_labels): the reference's mode but for replacement (at K = 16,384 of
  49,500 images a draw without replacement would cost a permutation per image). `negatives: any` does what the
  reference's memory module does when it is given no sample lists: draw uniformly over the whole set with
  replacement, with the image itself in slot 0; unlike that fallback, the image itself is never drawn as one
  of its own negatives (drawn from the other N - 1), and images of the same class can be (about 1/num_classes
  of them). Both draw from torch's global RNG, which checkpoints save.
- Cost: the reference gathers the B x (K+1) sampled rows of each bank (about 1 M rows of 128 floats at
  batch 64) and multiplies them with the anchors. When that gather moves more floats than reading the
  whole bank once and scoring the batch against every row (N x (D + B) against B x (K+1) x D), the
  scores are computed densely (B x N) and the sampled ones picked out; both give the same values.
- torchrun: every rank's batch indices and embeddings are all-gathered before the bank update, so every
  rank applies the same update and the banks stay equal; Z is averaged over the ranks' first batches.
  The loaders give every rank batches of the same size (an all_gather needs that).
- Losses are computed in float32 with autocast off (exp(s / 0.07) magnifies low-precision rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import BaseOptions, Distiller, require_pooled_feature
from kd.distillers.kd import kd_loss
from kd.distillers.registry import DISTILLERS
from kd.errors import KDError

NCE_EPS = 1e-7  # the reference's epsilon in both NCE denominators


def contrast_scores(memory: torch.Tensor, samples: torch.Tensor, embedding: torch.Tensor,
                    dense: bool | None = None) -> torch.Tensor:
    """(B, K+1) dot products <memory[samples[i, k]], embedding[i]>; gradient flows to `embedding` only.

    dense=None picks the cheaper way: gather the sampled rows (the reference's way) or score the batch
    against the whole bank and pick the sampled columns. The dense way works on a copy of the bank,
    because the caller updates the bank in place before backward runs."""
    (b, k1), (n, d) = samples.shape, memory.shape
    if dense is None:
        dense = n * (d + b) < b * k1 * d
    if dense:
        return (embedding @ memory.detach().clone().t()).gather(1, samples)
    rows = memory.detach().index_select(0, samples.reshape(-1)).view(b, k1, d)
    return torch.bmm(rows, embedding.unsqueeze(2)).squeeze(2)


def nce_loss(probs: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of (B, K+1) normalised scores P, the positive in column 0, noise K / n_data per sample."""
    k = probs.shape[1] - 1
    noise = k / n_data
    positive, negatives = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + NCE_EPS))
    log_d0 = torch.log(noise / (negatives + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


def crd_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, student_memory: torch.Tensor,
             teacher_memory: torch.Tensor, samples: torch.Tensor, nce_t: float,
             z: tuple[float, float] | torch.Tensor) -> torch.Tensor:
    """Unweighted CRD loss, in float32: the student's embedding against the teacher's bank, plus the
    teacher's embedding against the student's bank; z = (Z of the student anchor, Z of the teacher anchor)."""
    n = student_memory.shape[0]
    exp_s = contrast_scores(teacher_memory, samples, student_embedding.float()).div(nce_t).exp()
    exp_t = contrast_scores(student_memory, samples, teacher_embedding.float()).div(nce_t).exp()
    return nce_loss(exp_s / z[0], n) + nce_loss(exp_t / z[1], n)


def momentum_update(rows: torch.Tensor, embedding: torch.Tensor, momentum: float) -> torch.Tensor:
    """New bank rows: L2-normalise(momentum * old row + (1 - momentum) * embedding)."""
    return F.normalize(rows * momentum + embedding * (1 - momentum), dim=1)


def draw_samples(index: torch.Tensor, n_data: int, k: int) -> torch.Tensor:
    """(B, k+1) bank rows per image: the image itself in column 0, then k others drawn uniformly with
    replacement from the n_data - 1 other images (global torch RNG of index's device)."""
    others = torch.randint(0, n_data - 1, (len(index), k), device=index.device)
    others += others >= index[:, None]  # skip the image itself: n_data - 1 values onto the other rows
    return torch.cat([index[:, None], others], 1)


def draw_other_class_samples(index: torch.Tensor, targets: torch.Tensor, by_class: torch.Tensor,
                             class_start: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k+1) bank rows per image: the image itself in column 0, then k images of the OTHER classes, drawn
    uniformly with replacement (global torch RNG). by_class: the training images' indices grouped by class;
    class c's images are by_class[class_start[c]:class_start[c + 1]]."""
    own_start, own_end = class_start[targets], class_start[targets + 1]
    others = len(by_class) - (own_end - own_start)  # how many images the other classes hold, per anchor
    position = (torch.rand(len(index), k, device=index.device) * others[:, None]).long()
    position = torch.minimum(position, (others - 1)[:, None])  # rand can round up to exactly 1.0 in float32
    position += (own_end - own_start)[:, None] * (position >= own_start[:, None])  # skip the anchor's class
    return torch.cat([index[:, None], by_class[position]], 1)


def all_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` of every torchrun rank concatenated along dim 0 (rank order); `t` itself outside torchrun."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@dataclass
class CRDOptions(BaseOptions):
    feat_weight: float = field(default=0.8, metadata={"min": 0, "help": "weight of the CRD (NCE) term"})
    kd_weight: float = field(default=0.0, metadata={"min": 0, "help": "weight of an added KD term (the benchmark's CRD+KD uses 1; 0: off)"})
    kd_T: float = field(default=4.0, metadata={"gt": 0, "help": "softmax temperature of the added KD term"})
    feat_dim: int = field(default=128, metadata={"min": 1, "help": "dimension of the embeddings and bank rows"})
    nce_k: int = field(default=16384, metadata={"min": 1, "help": "negatives drawn per image"})
    nce_t: float = field(default=0.07, metadata={"gt": 0, "help": "NCE temperature"})
    nce_m: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "momentum of the memory-bank update"})
    negatives: Literal["any", "other_classes"] = field(default="other_classes", metadata={"help": "other_classes: uniform over the images of the other classes (the reference's CIFAR-100 mode, which draws them without replacement); any: uniform over every other training image; both with replacement"})


def check_data(data, options=None) -> None:
    if data.train_size is None:
        raise KDError("crd keeps one memory-bank row per training image, but the data set declared no training-set "
                      "size (DataSpec.train_size is None); build the distiller with the loaded data set's spec")
    if data.train_size < 2:
        raise KDError(f"crd draws negatives among the other training images, but the training set has "
                      f"{data.train_size} image(s); use at least 2")
    if options is not None and options.negatives == "other_classes":
        if data.train_labels is None:
            raise KDError("crd.negatives other_classes draws negatives by class, but the data set declared no labels "
                          "of its training images (DataSpec.train_labels); build the distiller with the loaded data "
                          "set's spec, or use crd.negatives: any")
        if len(torch.unique(data.train_labels)) < 2:
            raise KDError("crd.negatives other_classes needs images of at least two classes in the training set")


def forget_z(module: "CRD", incompatible_keys) -> None:
    """After load_state_dict: nce_z may have been replaced (by an unset one too), so look at it again."""
    module._z_known = False


@DISTILLERS.register("crd", options=CRDOptions)
class CRD(Distiller):
    """Contrastive representation distillation: NCE between student and teacher embeddings, negatives from memory banks."""

    groups = ("feature",)
    paper = "Tian, Krishnan, Isola, ICLR 2020, Contrastive Representation Distillation"
    step_cost = 1.7
    needs_index = True

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        check_data(data, options)
        d = options.feat_dim
        self.embed_student = nn.Linear(require_pooled_feature(student, "student", "crd", data.input_size), d)
        self.embed_teacher = nn.Linear(require_pooled_feature(teacher, "teacher", "crd", data.input_size), d)
        bound = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_student", torch.rand(data.train_size, d).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_teacher", torch.rand(data.train_size, d).mul_(2 * bound).sub_(bound))
        self.register_buffer("nce_z", torch.full((2,), -1.0))  # Z of (student anchor, teacher anchor); -1: unset
        self._z_known = False  # whether nce_z is known to be set: saves a host sync per step
        self.register_load_state_dict_post_hook(forget_z)
        if options.negatives == "other_classes":  # derived from the data set, so not saved in checkpoints
            labels = data.train_labels.long()
            self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
            counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
            self.register_buffer("class_start", torch.cat([counts.new_zeros(1), counts.cumsum(0)]), persistent=False)

    def buffers_synced_by_the_method(self) -> list[str]:
        # the all-gathered bank update and the rank-averaged Z keep these equal on every rank; broadcasting
        # them from rank 0 at each forward would move both banks (51 MB on CIFAR) every step
        return ["memory_student", "memory_teacher", "nce_z"]

    @classmethod
    def check_models(cls, student, teacher, options, data):
        check_data(data, options)
        require_pooled_feature(student, "student", "crd", data.input_size)
        require_pooled_feature(teacher, "teacher", "crd", data.input_size)

    def normalisers(self, exp_s: torch.Tensor, exp_t: torch.Tensor) -> torch.Tensor:
        """nce_z, estimated from this batch (averaged over torchrun ranks) the first time it is needed."""
        if not self._z_known:
            if bool((self.nce_z < 0).any()):  # the same on every rank: the buffers are equal
                estimate = torch.stack([exp_s.detach().mean(), exp_t.detach().mean()]) * self.memory_student.shape[0]
                if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                    dist.all_reduce(estimate)
                    estimate /= dist.get_world_size()
                self.nce_z.copy_(estimate)
            self._z_known = True
        return self.nce_z

    @torch.no_grad()
    def update_memory(self, index: torch.Tensor, student_embedding: torch.Tensor, teacher_embedding: torch.Tensor):
        """Momentum update of the batch's bank rows, with the batches of all torchrun ranks."""
        index = all_ranks(index)
        both = all_ranks(torch.cat([student_embedding, teacher_embedding], 1).detach())
        d = self.memory_student.shape[1]
        for memory, embedding in ((self.memory_student, both[:, :d]), (self.memory_teacher, both[:, d:])):
            memory.index_copy_(0, index, momentum_update(memory[index], embedding, self.options.nce_m))

    def forward(self, images, targets, teacher, epoch=0, index=None):
        if index is None:
            raise KDError("crd needs each image's index in the training set (forward(..., index=...))")
        o = self.options
        out = self.student.forward_features(images)
        with torch.autocast(images.device.type, enabled=False):
            v_s = F.normalize(self.embed_student(out.pre_pool.float().mean((2, 3))), dim=1)
            v_t = F.normalize(self.embed_teacher(teacher.pre_pool.detach().float().mean((2, 3))), dim=1)
            n = self.memory_student.shape[0]
            samples = (draw_samples(index, n, o.nce_k) if o.negatives == "any" else
                       draw_other_class_samples(index, targets, self.by_class, self.class_start, o.nce_k))
            exp_s = contrast_scores(self.memory_teacher, samples, v_s).div(o.nce_t).exp()
            exp_t = contrast_scores(self.memory_student, samples, v_t).div(o.nce_t).exp()
            z = self.normalisers(exp_s, exp_t).clone()  # a copy: the buffer may be overwritten before backward
            loss = nce_loss(exp_s / z[0], n) + nce_loss(exp_t / z[1], n)
            self.update_memory(index, v_s, v_t)
        terms = {"ce": self.ce(out.logits, targets), "crd": o.feat_weight * loss}
        if o.kd_weight > 0:
            terms["kd"] = o.kd_weight * kd_loss(out.logits, teacher.logits.detach(), o.kd_T)
        return out.logits, terms
