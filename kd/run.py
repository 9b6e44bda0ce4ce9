"""recipe -> (data, teacher, students) -> trainer -> run directory. The one path every command takes."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.data import load_data
from kd.data.loader import TensorLoader
from kd.data.base import ImageSet
from kd.engine.checkpoint import load_weights
from kd.engine.device import Hardware, resolve_hardware
from kd.engine.rundir import new_run_dir
from kd.engine.trainer import Member, Trainer, evaluate, make_optimizer
from kd.errors import KDError
from kd.models import create_model
from kd.recipe import Recipe, method_class


@dataclass
class RunResult:
    run_dir: Path
    teacher_top1: float | None
    rows: list[dict]  # one per student: method, seed, last/best top-1 ...


def make_loaders(data, recipe: Recipe, hw: Hardware, seed: int, rank: int = 0, world_size: int = 1):
    """Train and test loaders; in-memory sets are resident on the device, large sets stream."""
    per_rank_batch = max(1, recipe.batch_size // world_size)
    if isinstance(data.train, ImageSet):
        def make(split, batch, train):
            return TensorLoader(split, batch, data.mean, data.std, hw.device, train, data.augment,
                                data.crop_padding, seed, rank, world_size, hw.channels_last)
    else:
        from kd.data.streaming import StreamLoader

        def make(split, batch, train):
            return StreamLoader(split, batch, data.mean, data.std, hw.device, train, data.extra.get("workers", 4),
                                seed, rank, world_size, hw.channels_last)
    return make(data.train, per_rank_batch, True), make(data.test, recipe.eval_batch_size, False)


def build_teacher(recipe: Recipe, num_classes: int, hw: Hardware, console=None, progress=None):
    """The frozen teacher in eval mode, or None when no method needs it."""
    if not any(method_class(m).needs_teacher for m in recipe.methods):
        if recipe.teacher and console is not None:
            console.print(f"[yellow]warning:[/] {', '.join(recipe.methods)} use no teacher; "
                          f"the teacher '{recipe.teacher}' in the recipe is ignored")
        return None
    from kd.teacher import teacher_checkpoint

    path = teacher_checkpoint(recipe, console, progress)
    teacher = create_model(recipe.teacher, num_classes)
    load_weights(teacher, path, "teacher", recipe.teacher, num_classes)
    teacher.to(hw.device, memory_format=hw.memory_format).eval().requires_grad_(False)
    return compiled(teacher) if recipe.compile else teacher


def compiled(model):
    """torch.compile the two entry points the trainer uses; the module (and its state dict) stays the same."""
    model.forward = torch.compile(model.forward)
    model.forward_features = torch.compile(model.forward_features)
    return model


def build_member(recipe: Recipe, method: str, seed: int, teacher, data, hw: Hardware, run_dir: Path) -> Member:
    torch.manual_seed(seed)  # every method of a seed starts from the same student weights
    student = create_model(recipe.student, data.num_classes)
    cls = method_class(method)
    options = recipe.method_options(method)
    student.to(hw.device, memory_format=hw.memory_format)
    if recipe.compile:
        compiled(student)
    distiller = cls(student, teacher if cls.needs_teacher else None, options, (3, *data.image_size))
    distiller.to(hw.device, memory_format=hw.memory_format)
    optimizer, scheduler = make_optimizer(distiller, recipe)
    scaler = torch.amp.GradScaler(hw.device.type) if hw.use_scaler else None
    label = f"{method}-s{seed}"
    (run_dir / label).mkdir(parents=True, exist_ok=True)
    return Member(label, distiller, optimizer, scheduler, run_dir / label, scaler)


def prepare(recipe: Recipe, console=None, progress=None):
    """Everything that can fail on bad input, done before any file is written."""
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic)
    data = load_data(recipe.dataset, recipe.data_options(), recipe.data_root, recipe.download, recipe.subset_per_class)
    teacher = build_teacher(recipe, data.num_classes, hw, console, progress)
    for method in recipe.methods:  # a method that refuses the pair (e.g. CAM on a non-GAP head) says so now
        method_class(method).check_models(create_model(recipe.student, data.num_classes), teacher,
                                          recipe.method_options(method), (3, *data.image_size))
    return hw, data, teacher


def run_recipe(recipe: Recipe, console=None, progress=None) -> RunResult:
    hw, data, teacher = prepare(recipe, console, progress)
    run_dir = new_run_dir(recipe.output_dir, recipe.name)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    if console is not None:
        console.print(f"run directory [bold]{run_dir}[/]  ({hw.describe()}, {len(data.train)} train / "
                      f"{len(data.test)} test images, {data.num_classes} classes)")
    teacher_top1 = None
    if teacher is not None:
        _, test_loader = make_loaders(data, recipe, hw, seed=0)
        teacher_top1 = evaluate(teacher, test_loader, hw)["test_top1"]
        if console is not None:
            console.print(f"teacher {recipe.teacher}: test top-1 {teacher_top1:.2f}%")
    groups = [[(m, s) for m in recipe.methods] for s in recipe.seeds] if recipe.shared_teacher else \
        [[(m, s)] for s in recipe.seeds for m in recipe.methods]
    members_done = []
    for group in groups:
        seed = group[0][1]
        train_loader, test_loader = make_loaders(data, recipe, hw, seed)
        members = [build_member(recipe, m, s, teacher, data, hw, run_dir) for m, s in group]
        Trainer(members, teacher, train_loader, test_loader, recipe, hw, console=console).fit(progress=progress)
        members_done += [(m, s, member) for (m, s), member in zip(group, members)]
    rows = [summary_row(m, s, member, teacher_top1) for m, s, member in members_done]
    write_summary(run_dir / "summary.csv", rows)
    return RunResult(run_dir, teacher_top1, rows)


def summary_row(method: str, seed: int, member: Member, teacher_top1) -> dict:
    history = member.history
    return {"method": method, "seed": seed, "epochs": len(history),
            "teacher_top1": teacher_top1, "last_top1": history[-1]["test_top1"],
            "best_top1": max(h["test_top1"] for h in history), "last_top5": history[-1]["test_top5"],
            "extra_params": member.distiller.extra_parameter_count()}


def write_summary(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
