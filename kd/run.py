"""recipe -> (data, teacher, students) -> trainer -> run directory. The one path every command takes."""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from kd.data import load_data
from kd.data.loader import TensorLoader
from kd.data.base import ImageSet
from kd.engine.checkpoint import load_weights
from kd.engine.device import Hardware, resolve_hardware
from kd.engine.rundir import new_run_dir
from kd.engine.distributed import Distributed, barrier, broadcast, init_distributed, wrap
from kd.engine.trainer import Member, Trainer, evaluate, make_optimizer, unwrap
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
    return compiled(teacher, recipe.compile_mode) if recipe.compile else teacher


def compiled(model, mode: str = "default"):
    """torch.compile the two entry points the trainer uses; the module (and its state dict) stays the same."""
    model.forward = torch.compile(model.forward, mode=mode)
    model.forward_features = torch.compile(model.forward_features, mode=mode)
    return model


def build_member(recipe: Recipe, method: str, seed: int, teacher, data, hw: Hardware, run_dir: Path,
                 ctx: Distributed = Distributed()) -> Member:
    torch.manual_seed(seed)  # every method of a seed starts from the same student weights
    student = create_model(recipe.student, data.num_classes)
    if recipe.sync_bn and ctx.active:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    cls = method_class(method)
    options = recipe.method_options(method)
    student.to(hw.device, memory_format=hw.memory_format)
    if recipe.compile:
        compiled(student, recipe.compile_mode)
    distiller = cls(student, teacher if cls.needs_teacher else None, options, (3, *data.image_size))
    distiller.to(hw.device, memory_format=hw.memory_format)
    optimizer, scheduler = make_optimizer(distiller, recipe)
    scaler = torch.amp.GradScaler(hw.device.type) if hw.use_scaler else None
    label = f"{method}-s{seed}"
    if ctx.is_main:
        (run_dir / label).mkdir(parents=True, exist_ok=True)
    return Member(label, wrap(distiller, hw, ctx, options), optimizer, scheduler, run_dir / label, scaler)


def prepare(recipe: Recipe, console=None, progress=None, ctx: Distributed = Distributed()):
    """Everything that can fail on bad input, done before any file is written."""
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic, ctx.local_rank)
    data = load_data(recipe.dataset, recipe.data_options(), recipe.data_root, recipe.download, recipe.subset_per_class)
    teacher = build_teacher(recipe, data.num_classes, hw, console, progress)
    for method in recipe.methods:  # a method that refuses the pair (e.g. CAM on a non-GAP head) says so now
        method_class(method).check_models(create_model(recipe.student, data.num_classes), teacher,
                                          recipe.method_options(method), (3, *data.image_size))
    return hw, data, teacher


def run_recipe(recipe: Recipe, console=None, progress=None) -> RunResult:
    """Train every (method, seed) student of the recipe into a new run directory, or into
    `recipe.resume`, continuing each student from its last checkpoint."""
    ctx = init_distributed(recipe.device)
    if not ctx.is_main:
        console = progress = None  # one voice: rank 0 prints and writes
    resume_dir = check_resume(recipe) if recipe.resume else None
    hw, data, teacher = prepare(recipe, console, progress, ctx)
    if resume_dir is None:
        run_dir = None
        if ctx.is_main:
            run_dir = new_run_dir(recipe.output_dir, recipe.name)
            (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        run_dir = broadcast(run_dir)
    else:
        run_dir = resume_dir
    if console is not None:
        console.print(f"{'resuming' if resume_dir else 'run directory'} [bold]{run_dir}[/]  ({hw.describe()}, "
                      f"{len(data.train)} train / {len(data.test)} test images, {data.num_classes} classes)")
    teacher_top1 = None
    if teacher is not None:
        _, test_loader = make_loaders(data, recipe, hw, 0, ctx.rank, ctx.world_size)
        teacher_top1 = evaluate(teacher, test_loader, hw)["test_top1"]
        if console is not None:
            console.print(f"teacher {recipe.teacher}: test top-1 {teacher_top1:.2f}%")
    groups = [[(m, s) for m in recipe.methods] for s in recipe.seeds] if recipe.shared_teacher else \
        [[(m, s)] for s in recipe.seeds for m in recipe.methods]
    members_done = []
    for group in groups:
        seed = group[0][1]
        train_loader, test_loader = make_loaders(data, recipe, hw, seed, ctx.rank, ctx.world_size)
        members = [build_member(recipe, m, s, teacher, data, hw, run_dir, ctx) for m, s in group]
        for member in members:
            state = last_state(member.run_dir)
            if state is not None:
                member.restore(state)
        Trainer(members, teacher, train_loader, test_loader, recipe, hw, is_main=ctx.is_main,
                console=console).fit(progress=progress)
        members_done += [(m, s, member) for (m, s), member in zip(group, members)]
    rows = [summary_row(m, s, member, teacher_top1) for m, s, member in members_done]
    if ctx.is_main:
        write_summary(run_dir / "summary.csv", rows)
    barrier()
    return RunResult(run_dir, teacher_top1, rows)


def check_resume(recipe: Recipe) -> Path:
    """The run directory to resume; it must be a run made by this same recipe."""
    run_dir = Path(recipe.resume)
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        raise KDError(f"resume: {run_dir} is not a run directory (it has no recipe.yaml); pass a folder a run printed")
    ours, theirs = yaml.safe_load(recipe.to_yaml()), yaml.safe_load(saved.read_text())
    ours.pop("resume", None), theirs.pop("resume", None)
    differ = [k for k in dict.fromkeys([*ours, *theirs]) if ours.get(k) != theirs.get(k)]
    if differ:
        raise KDError(f"resume: {run_dir} was made by a different recipe ({', '.join(differ)} differ); "
                      f"resume it without a recipe (run_kd.py run --resume {run_dir}) or start a new run")
    return run_dir


def interrupted_run(recipe: Recipe) -> Path | None:
    """The newest run directory of this same recipe that has no summary yet (it was interrupted)."""
    base = Path(recipe.output_dir)
    candidates = sorted(base.glob(f"{recipe.name}-*/recipe.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for saved in candidates:
        if (saved.parent / "summary.csv").exists():
            continue
        try:
            recipe.resume = str(saved.parent)
            return check_resume(recipe)
        except KDError:
            continue
        finally:
            recipe.resume = None
    return None


def last_state(member_dir: Path) -> dict | None:
    """The newest readable checkpoint of a student, falling back to the previous one if the newest is corrupt."""
    from kd.engine.checkpoint import previous, read_checkpoint

    last = member_dir / "checkpoints" / "last.pt"
    errors = []
    for path in (last, previous(last)):
        if not path.is_file():
            continue
        try:
            state = read_checkpoint(path, "checkpoint")
        except KDError as err:
            errors.append(str(err))
            continue
        if isinstance(state, dict) and "distiller" in state and "history" in state:
            if errors:
                print(f"warning: {errors[0]}; resuming from {path} instead", file=sys.stderr)
            return state
        errors.append(f"{path} is not a resumable checkpoint")
    if errors:
        raise KDError(f"cannot resume {member_dir}: {errors[-1]}")
    return None


def summary_row(method: str, seed: int, member: Member, teacher_top1) -> dict:
    history = member.history
    return {"method": method, "seed": seed, "epochs": len(history),
            "teacher_top1": teacher_top1, "last_top1": history[-1]["test_top1"],
            "best_top1": max(h["test_top1"] for h in history), "last_top5": history[-1]["test_top5"],
            "extra_params": unwrap(member.distiller).extra_parameter_count()}


def write_summary(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
