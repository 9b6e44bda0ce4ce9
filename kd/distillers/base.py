"""The distiller framework: one base class, one file per method.

A distiller owns the student and any extra modules it trains (regressors, embedding heads, ...): they are
its child modules, so they are counted, optimised and checkpointed with it. It never holds the teacher:
the trainer runs the teacher once per batch and hands its `Features` to every distiller. The teacher
module is shown to the constructor and to `check_models` only, to read shapes from it.

To add a method: subclass `Distiller` in a new file, implement `forward`, and register it with
`@DISTILLERS.register("name", options=YourOptions)` (kd.distillers.registry). Its first docstring line is
the description `run_kd.py list distillers` shows, `paper` names where it comes from, and `groups` puts
it in the recipe groups (logit, feature, cam, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kd.data.base import DataSpec
from kd.errors import KDError
from kd.models.features import Features

Shape = tuple[int, int, int]  # (C, H, W) of one stage map


@torch.no_grad()
def probe_shapes(model: nn.Module, input_size=(3, 32, 32)) -> list[Shape]:
    """(C, H, W) of every stage of `model` for a 2-image zero batch, on the model's own device."""
    return [tuple(s.shape[1:]) for s in probe(model, input_size).stages]


@torch.no_grad()
def probe(model: nn.Module, input_size=(3, 32, 32)) -> Features:
    """The model's Features for a 2-image zero batch in eval mode (BN statistics untouched)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # the class's own method: a torch.compile'd instance attribute would compile again just for this probe
    out = type(model).forward_features(model, torch.zeros(2, *input_size, device=device))
    model.train(was_training)
    return out


def describe_stages(shapes: list[Shape]) -> str:
    return ", ".join(f"{i}: {'x'.join(map(str, s))}" for i, s in enumerate(shapes)) or "none"


def pick_stage(index: int, shapes: list[Shape], role: str, option: str) -> int:
    """`index` (negative counts from the end) as a non-negative stage index, or a KDError that lists the stages."""
    n = len(shapes)
    if n == 0:
        raise KDError(f"the {role} exposes no stage maps, so '{option}' cannot be used with it")
    if not -n <= index < n:
        raise KDError(f"{option}: stage index {index} is out of range, the {role} has {n} stages (valid indices "
                      f"{-n}..{n - 1}); {role} stages (C x H x W): {describe_stages(shapes)}")
    return index % n


def choose_stage_pairs(method: str, student: list[Shape], teacher: list[Shape],
                       pairs: list[list[int]] | None) -> list[tuple[int, int]]:
    """(student stage, teacher stage) pairs as non-negative indices: `pairs` as given (negative indices count
    from the end), or with None every stage with the same index, which needs equal stage counts (then the same
    index from the end is the same index from the start). Never a silent zip: anything else is one KDError
    that names `<method>.pairs` and lists both networks' stage shapes."""
    option = f"{method}.pairs"
    listing = f"student stages: {describe_stages(student)}; teacher stages: {describe_stages(teacher)}"
    if pairs is None:
        if len(student) != len(teacher) or not student:
            raise KDError(f"{method}: the student has {len(student)} stages and the teacher {len(teacher)}, so stages "
                          f"cannot be paired by default; set {option} to [student, teacher] index pairs, e.g. "
                          f"{option}=[[0, 1], [1, 2]] ({listing})")
        return [(i, i) for i in range(len(student))]
    if not pairs:
        raise KDError(f"{option} is empty; list at least one [student, teacher] pair or set it to null ({listing})")
    chosen = []
    for pair in pairs:
        if len(pair) != 2:
            raise KDError(f"{option}: each entry must be [student_index, teacher_index], got {pair} ({listing})")
        chosen.append((pick_stage(pair[0], student, "student", option), pick_stage(pair[1], teacher, "teacher", option)))
    return chosen


def pooled_feature(features: Features) -> torch.Tensor:
    """The pooled (penultimate) feature (B, K): the global average of the pre-pool map, in float32."""
    return features.pre_pool.float().mean((2, 3))


def require_pooled_feature(model: nn.Module, role: str, method: str, input_size) -> int:
    """The channel count of the model's pooled feature, or a KDError naming a model that exposes no pre-pool map."""
    pre_pool = probe(model, input_size).pre_pool
    if pre_pool is not None:
        return pre_pool.shape[1]
    name = getattr(model, "arch_name", type(model).__name__)
    reason = getattr(model, "cam_unavailable", None)
    raise KDError(f"{method} distils the pooled (penultimate) feature, but the {role} '{name}' exposes no pre-pool map "
                  f"(the tensor its global average pooling consumes){': ' + reason if reason else ''}; choose a model "
                  f"whose head is global average pooling -> Linear (any kd CIFAR model, timm:resnet18, torchvision:resnet18, ...)")


@dataclass
class BaseOptions:
    ce_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the cross-entropy term"})


class Distiller(nn.Module):
    """Base of every method.

    forward(images, targets, teacher, epoch) -> (student_logits, {term: weighted_loss}); the trainer
    sums the dict and logs each term. `teacher` is the teacher's Features for this batch (None for
    methods with needs_teacher = False). Methods with needs_index = True also get `index=`, each image's
    position in the training set (the same on every torchrun rank).
    """

    Options = BaseOptions
    needs_teacher = True
    needs_index = False
    groups: tuple[str, ...] = ()
    paper = ""
    # The time of one training step relative to a KD step (student step + teacher forward), as a rough median of
    # results/bench/*-cpu.md; `compare --shard` deals students out by it so that the shards take about equal time.
    step_cost = 1.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options, data: DataSpec):
        super().__init__()
        self.student = student
        self.options = options
        self.data = data

    @classmethod
    def check_models(cls, student: nn.Module, teacher: nn.Module | None, options, data: DataSpec) -> None:
        """Refuse (with KDError) a student/teacher pair this method cannot work with; called before any file is written."""

    @classmethod
    def summary(cls) -> str:
        """One line: what the method does (the class docstring's first line)."""
        return (cls.__doc__ or "").strip().split("\n")[0]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, teacher: Features | None,
                epoch: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.options.ce_weight * nn.functional.cross_entropy(logits.float(), targets)

    def buffers_synced_by_the_method(self) -> list[str]:
        """Names of buffers the method itself keeps equal on every torchrun rank (CRD's memory banks, updated
        from the batches of all ranks), which DDP therefore need not copy from rank 0 at every forward."""
        return []

    def may_leave_parameters_unused(self) -> bool:
        """True when some steps give part of the parameters no gradient (DDP must then look for them)."""
        return False

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student (empty for most methods)."""
        return [m for name, m in self.named_children() if name != "student"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def extra_parameter_count(self) -> int:
        return sum(p.numel() for m in self.extra_modules() for p in m.parameters())


class StagePairDistiller(Distiller):
    """Base of the methods that match student and teacher stage maps pair by pair (AT, SP, NST).

    The pairs come from `options.pairs` (or every stage with the same index) and are checked against the
    models' stage shapes before a run starts. A subclass gives `pair_loss(student_map, teacher_map)`, the
    unweighted term of one pair; the method's term is feat_weight times its sum over the pairs."""

    def __init__(self, student, teacher, options, data):
        super().__init__(student, teacher, options, data)
        self.pairs = self.choose_pairs(student, teacher, options, data)

    @classmethod
    def choose_pairs(cls, student, teacher, options, data) -> list[tuple[int, int]]:
        return choose_stage_pairs(cls.registered_name, probe_shapes(student, data.input_size),
                                  probe_shapes(teacher, data.input_size), options.pairs)

    @classmethod
    def check_models(cls, student, teacher, options, data):
        cls.choose_pairs(student, teacher, options, data)

    def pair_loss(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images, targets, teacher, epoch=0):
        out = self.student.forward_features(images)
        term = sum(self.pair_loss(out.stages[s], teacher.stages[t].detach()) for s, t in self.pairs)
        return out.logits, {"ce": self.ce(out.logits, targets), self.registered_name: self.options.feat_weight * term}
