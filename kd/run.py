"""recipe -> (data, teacher, students) -> trainer -> run directory. The one path every training command takes.

The teacher checkpoint must exist before a run starts (kd.teacher.ensure_teacher trains the ones a pair
may train on demand); building the teacher here only loads it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kd.data import DataSpec, load_data
from kd.engine.checkpoint import load_weights
from kd.engine.device import Hardware, machine, resolve_hardware
from kd.engine.distributed import Distributed, barrier, broadcast, init_distributed, wrap_ddp
from kd.engine.evaluation import evaluate
from kd.engine.optim import make_optimizer, make_scheduler
from kd.engine.rundir import RunDir
from kd.engine.scalars import TensorBoardLog, require_tensorboard
from kd.engine.trainee import Trainee, unwrap
from kd.engine.trainer import Trainer
from kd.errors import KDError, Stopped, WriteFailed
from kd.models import create_model
from kd.recipe import Recipe, method_class, shown_value


@dataclass
class RunResult:
    run_dir: RunDir
    teacher_top1: float | None
    rows: list[dict]  # one per student: method, seed, last/best top-1 ...
    is_main: bool = True  # False on the torchrun ranks other than 0, which neither print nor write


def build_teacher(recipe: Recipe, num_classes: int, hw: Hardware, console=None):
    """The frozen teacher in eval mode, loaded from its checkpoint, or None when no method needs it."""
    if not any(method_class(m).needs_teacher for m in recipe.methods):
        if recipe.teacher and console is not None:
            console.print(f"[yellow]warning:[/] {', '.join(recipe.methods)} use no teacher; "
                          f"the teacher '{recipe.teacher}' in the recipe is ignored")
        return None
    teacher = create_model(recipe.teacher, num_classes)
    load_weights(teacher, recipe.require_teacher_checkpoint(), "teacher", recipe.teacher, num_classes,
                 recipe.teacher_hint())
    teacher.to(hw.device, memory_format=hw.memory_format).eval().requires_grad_(False)
    return compiled(teacher, recipe.compile_mode, frozen=True) if recipe.compile else teacher


def teacher_for_passes(teacher, recipe: Recipe, spec: DataSpec, hw: Hardware, console=None):
    """The module the trainer runs the teacher's passes with: the teacher itself, or a copy with its BatchNorm
    layers folded into its convolutions (recipe teacher_fold_bn, kd.models.fold) and/or compiled with frozen
    weights (compile_teacher). Distillers and evaluation keep the original, whose BatchNorm layers OFD reads."""
    module, done = prepare_passes(teacher, recipe, spec, hw, console)
    if done and console is not None:
        console.print(f"teacher passes {' and '.join(done)}")
    return module


def prepare_passes(teacher, recipe: Recipe, spec: DataSpec, hw: Hardware, console=None) -> tuple:
    """teacher_for_passes' module and what was done to it (["with N BatchNorm layers folded ...", "compiled
    ..."], empty for the teacher as it is), which the run header and the bench state."""
    if teacher is None or recipe.compile:  # compile: build_teacher compiled the teacher, frozen
        return teacher, []
    module, done = teacher, []
    if recipe.teacher_fold_bn:
        from kd.models.fold import fold_batchnorm

        folded = fold_batchnorm(teacher, spec.input_size)
        if folded is None and console is not None:
            console.print(f"[yellow]warning:[/] teacher_fold_bn: folding the BatchNorm layers of '{recipe.teacher}' "
                          f"does not reproduce it, so its passes run unfolded")
        if folded is not None:
            module = folded[0].to(hw.device, memory_format=hw.memory_format)
            done.append(f"with {folded[1]} BatchNorm layers folded into their convolutions")
    if compile_teacher_passes(recipe, spec, hw):
        import copy

        # a copy, so that evaluation and the distillers keep the eager teacher
        module = compiled(copy.deepcopy(module) if module is teacher else module, "default", frozen=True)
        done.append("compiled (torch.compile, frozen weights)")
    return module, done


# Teacher passes from which compiling them pays on the CPU: a compiled, frozen teacher pass is 1.06-1.13x as fast
# on the standard pairs after a one-off of 10-15 s, which it repays after 1,400-10,200 passes
# (results/bench/compile-teacher-cpu.md); this threshold is twice the largest, and leaves the short demo and CPU
# studies eager.
COMPILE_TEACHER_MIN_PASSES = 20_000


def compile_teacher_passes(recipe: Recipe, spec: DataSpec, hw: Hardware) -> bool:
    """recipe.compile_teacher, or for null (auto): on a CPU with a C++ compiler, whether the run makes enough
    teacher passes."""
    if recipe.compile_teacher is not None:
        return recipe.compile_teacher
    if hw.device.type != "cpu" or not spec.train_size or not cpp_compiler():
        return False
    seeds = len({seed for _, seed in recipe.students()}) if recipe.shared_teacher else len(recipe.students())
    passes = recipe.epochs * -(-spec.train_size // recipe.batch_size) * seeds
    return passes >= COMPILE_TEACHER_MIN_PASSES


def cpp_compiler() -> bool:
    """Whether inductor can build CPU kernels here: it needs a C++ compiler (auto stays eager without one)."""
    import shutil

    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


# torch.compile's modes as inductor options, so that the frozen teacher can add "freezing" to them
MODE_OPTIONS = {"default": {}, "reduce-overhead": {"triton.cudagraphs": True},
                "max-autotune": {"max_autotune": True, "triton.cudagraphs": True}}


def compiled(model, mode: str = "default", frozen: bool = False):
    """torch.compile the two entry points the trainer uses; the module (and its state dict) stays the same.

    frozen: the model's weights never change (the teacher), so inductor may treat them as constants: it folds
    each BatchNorm into the convolution before it and pre-packs the weights. Never for a student: its
    evaluation graph would keep the weights of the first evaluation."""
    options = {**MODE_OPTIONS[mode], **({"freezing": True} if frozen else {})}
    model.forward = torch.compile(model.forward, options=options)
    model.forward_features = torch.compile(model.forward_features, options=options)
    return model


def build_trainee(recipe: Recipe, method: str, seed: int, teacher, spec: DataSpec, hw: Hardware, run: RunDir,
                  ctx: Distributed = Distributed()) -> Trainee:
    """One student with its distiller, optimiser and schedule, in its folder of the run directory."""
    torch.manual_seed(seed)  # every method of a seed starts from the same student weights
    student = create_model(recipe.student, spec.num_classes)
    if recipe.sync_bn and ctx.active:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    cls = method_class(method)
    student.to(hw.device, memory_format=hw.memory_format)
    if recipe.compile:
        compiled(student, recipe.compile_mode)
    distiller = cls(student, teacher if cls.needs_teacher else None, recipe.method_options(method), spec)
    distiller.to(hw.device, memory_format=hw.memory_format)
    lr = recipe.lr * recipe.batch_size / recipe.lr_batch if recipe.lr_batch else recipe.lr  # linear scaling rule
    optimizer = make_optimizer(distiller.trainable_parameters(), lr, recipe.momentum, recipe.nesterov,
                               recipe.weight_decay)
    scheduler = make_scheduler(optimizer, recipe.epochs, recipe.schedule, recipe.milestones, recipe.gamma,
                               recipe.warmup_epochs)
    scaler = torch.amp.GradScaler(hw.device.type) if hw.use_scaler else None
    files = run.student(method, seed)
    scalars = TensorBoardLog(files.tensorboard_dir) if "tensorboard" in recipe.log else None
    return Trainee(files.path.name, wrap_ddp(distiller, hw, ctx), optimizer, scheduler, files, scaler, scalars=scalars,
                   machine=machine(hw))


def load_inputs(recipe: Recipe, console=None, ctx: Distributed = Distributed()):
    """Everything that can fail on bad input (hardware, data, teacher, each method's check of the models),
    done before any file is written."""
    if "tensorboard" in recipe.log:
        require_tensorboard(recipe.source or "recipe")
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic, ctx.local_rank)
    data = load_data(recipe.dataset, recipe.data_options(), recipe.data_root, recipe.download, recipe.subset_per_class,
                     recipe.val_split)
    height, width = data.spec.image_size
    if min(height, width) < SMALLEST_SIDE and console is not None:
        console.print(f"[yellow]warning:[/] the {recipe.dataset} images are {height}x{width} pixels, smaller than "
                      f"any data set kd is tested with ({SMALLEST_SIDE}x{SMALLEST_SIDE} at least): a network sees "
                      f"next to nothing in them; check data_root, or resize them (e.g. {recipe.dataset}: "
                      f"{{image_size: 32}} where the data set has that option)")
    teacher = build_teacher(recipe, data.num_classes, hw, console)
    student = create_model(recipe.student, data.num_classes)
    for role, model in (("student", student), ("teacher", teacher)):
        if model is not None:
            check_input_size(model, role, getattr(recipe, role), data.spec, recipe)
    for method in recipe.methods:  # a method that refuses the pair (e.g. CAM on a non-GAP head) says so now
        method_class(method).check_models(student, teacher, recipe.method_options(method), data.spec)
    return hw, data, teacher


SMALLEST_SIDE = 8  # the least image side kd's data set options accept (synthetic, imagefolder's image_size)


def check_input_size(model, role: str, name: str, spec: DataSpec, recipe: Recipe) -> None:
    """One line, before anything is written, for a model that cannot take the data set's images (a ViT built for
    224x224 on 32x32 images fails deep inside timm otherwise): a forward of two blank images of the data's size."""
    import dataclasses

    from kd.data import DATASETS

    height, width = spec.image_size
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, height, width, device=device))
    except Exception as err:  # timm asserts, torch raises RuntimeError: any failure here is the size's
        inner = getattr(model, "model", model)
        needs = (getattr(inner, "pretrained_cfg", None) or getattr(inner, "default_cfg", None) or {}).get("input_size")
        needed = f"it is built for {needs[-2]}x{needs[-1]} images" if needs else f"it fails on them ({err})"
        keys = {f.name for f in dataclasses.fields(DATASETS.get(recipe.dataset).Options)}
        fix = (f"set {recipe.dataset}: {{image_size: {needs[-1] if needs else 'N'}}} in the recipe, or choose a "
               f"{role} that takes {height}x{width} images" if "image_size" in keys else
               f"choose a {role} that takes {height}x{width} images (the {recipe.dataset} images have no other size)")
        raise KDError(f"{recipe.source or 'recipe'}: the {role} '{name}' cannot take the {recipe.dataset} images "
                      f"of {height}x{width}: {needed}; {fix}") from None
    finally:
        model.train(was_training)


def eval_loaders(data, recipe: Recipe, hw: Hardware, ctx: Distributed) -> dict:
    splits = (["val"] if data.val is not None else []) + ["test"]
    return {s: data.loader(s, recipe.eval_batch_size, hw.device, 0, ctx.rank, ctx.world_size, hw.channels_last)
            for s in splits}


def run_recipe(recipe: Recipe, console=None, progress=None) -> RunResult:
    """Train every (method, seed) student of the recipe into a new run directory, or into
    `recipe.resume`, continuing each student from its last checkpoint."""
    ctx = init_distributed(recipe.device)
    if not ctx.is_main:
        console = progress = None  # one voice: rank 0 prints and writes
    if recipe.resume:
        run = RunDir.open(recipe.resume)
        check_same_recipe(run, recipe)
        with locked(run, ctx), stopped_in(run):  # locked before loading: a second resume of the run stops at once
            hw, data, teacher = load_inputs(recipe, console, ctx)
            return train_students(recipe, run, hw, data, teacher, ctx, console, progress, resuming=True)
    if ctx.is_main:
        RunDir.check_writable(recipe.output_dir)
    hw, data, teacher = load_inputs(recipe, console, ctx)
    run = RunDir.create(recipe.output_dir, recipe.run_name) if ctx.is_main else None
    try:
        if run is not None:
            run.write_recipe(recipe.to_yaml(),
                             f"resolved on this machine: device, precision, memory format = {hw.describe()}")
        run = RunDir(broadcast(None if run is None else str(run.path)))  # the folder rank 0 made, on every rank
        with locked(run, ctx), stopped_in(run):
            return train_students(recipe, run, hw, data, teacher, ctx, console, progress)
    except (KDError, OSError) as err:
        if ctx.is_main and run.discard_if_unused():  # failed before any student finished an epoch: no debris
            if isinstance(err, WriteFailed):  # nothing was kept, so there is nothing to resume
                raise KDError(f"{err.problem}; no epoch had finished, so the run directory {run} was removed: free "
                              f"space or make the folder writable, then start the run again") from None
        raise


@contextlib.contextmanager
def stopped_in(run: RunDir):
    """Ctrl-C or SIGTERM while training in `run` becomes Stopped(run): the command line says how to resume it."""
    try:
        yield
    except Stopped as stop:
        raise Stopped(run.path, stop.signal_name) from None
    except KeyboardInterrupt:
        raise Stopped(run.path) from None


def locked(run: RunDir, ctx: Distributed):
    """The run directory's lock, held by rank 0 (the only rank that writes)."""
    return run.lock() if ctx.is_main else contextlib.nullcontext()


def train_students(recipe: Recipe, run: RunDir, hw, data, teacher, ctx: Distributed, console, progress,
                   resuming: bool = False) -> RunResult:
    if console is not None:
        console.print(f"{'resuming' if resuming else 'run directory'} [bold]{run}[/]  ({hw.describe()}, "
                      f"{len(data.train)} train{'' if data.val is None else f' / {len(data.val)} val'} / "
                      f"{len(data.test)} test images, {data.num_classes} classes)")
    evals = eval_loaders(data, recipe, hw, ctx)
    teacher_top1 = None
    if teacher is not None:
        teacher_top1 = evaluate(teacher, evals["test"], hw)["test_top1"]
        if console is not None:
            console.print(f"teacher {recipe.teacher}: test top-1 {teacher_top1:.2f}%")
    passes = teacher_for_passes(teacher, recipe, data.spec, hw, console)
    students = recipe.students()  # all of the recipe's, or its shard's slice
    groups = [[(m, s) for m, s in students if s == seed] for seed in dict.fromkeys(s for _, s in students)] \
        if recipe.shared_teacher else [[student] for student in students]
    per_rank_batch = recipe.batch_size // ctx.world_size
    if per_rank_batch < 2 or len(data.train) // ctx.world_size < 2:
        raise KDError(f"each of the {ctx.world_size} processes would train on batches of {per_rank_batch} of "
                      f"{len(data.train) // ctx.world_size} images, but batch normalisation needs at least 2 per "
                      f"batch; raise batch_size (it is the global batch) or use more training images")
    done, warned = [], set()
    for group in groups:
        seed = group[0][1]
        train_loader = data.loader("train", per_rank_batch, hw.device, seed, ctx.rank, ctx.world_size,
                                   hw.channels_last)
        trainees = [build_trainee(recipe, m, s, teacher, data.spec, hw, run, ctx) for m, s in group]
        elsewhere = set()
        for trainee in trainees:
            state = trainee.files.last_state()
            if state is not None:
                trainee.restore(state)
                elsewhere.add(state.get("machine") or "")
            elif resuming and ctx.is_main:
                trainee.metrics.replace([])  # no checkpoint yet: the rows an interrupted epoch left are redone
        warn_if_elsewhere(elsewhere - {"", machine(hw)} - warned, machine(hw), console)
        warned |= elsewhere
        Trainer(trainees, passes, train_loader, evals, hw, recipe.epochs, recipe.checkpoint_every,
                is_main=ctx.is_main, console=console).fit(progress=progress)
        done += [(m, s, trainee) for (m, s), trainee in zip(group, trainees)]
    rows = [summary_row(m, s, trainee, teacher_top1) for m, s, trainee in done]
    if ctx.is_main:
        run.write_summary(rows)
    barrier()
    return RunResult(run, teacher_top1, rows, ctx.is_main)


def warn_if_elsewhere(before: set[str], now: str, console) -> None:
    """A resume is exact only with the same device, thread count, torch and precision: say so when they differ."""
    if before and console is not None:
        console.print(f"[yellow]warning:[/] resuming on other hardware or settings than the checkpoints were written "
                      f"with ({'; '.join(sorted(before))}; now: {now}): the run continues, but its numbers will "
                      f"differ from an uninterrupted run's at rounding level and beyond (resume is exact with the same "
                      f"device, thread count, torch and precision)")


def check_same_recipe(run: RunDir, recipe: Recipe) -> None:
    """A run is resumed only with the recipe it was started with: nothing in it can change on resume."""
    import yaml

    differ = run.recipe_differences(recipe.to_yaml())
    if differ:
        theirs, ours = run.recipe_mapping(), yaml.safe_load(recipe.to_yaml())
        changes = "; ".join(f"{k}: {shown_value(theirs, k)} in the run, {shown_value(ours, k)} now" for k in differ)
        raise KDError(f"resume: {run} was started with a different recipe ({changes}); a resumed run keeps the recipe "
                      f"it started with, so --resume takes no changes: resume with none, or train the changed recipe "
                      f"as a new run (run_kd.py RECIPE.yaml key=value, without --resume)")


def summary_row(method: str, seed: int, trainee: Trainee, teacher_top1) -> dict:
    history = trainee.history
    row = {"method": method, "seed": seed, "epochs": len(history), "teacher_top1": teacher_top1,
           "last_top1": history[-1]["test_top1"], "best_top1": max(h["test_top1"] for h in history),
           "last_top5": history[-1]["test_top5"], "extra_params": unwrap(trainee.distiller).extra_parameter_count()}
    if "val_top1" in history[-1]:
        row["last_val_top1"] = history[-1]["val_top1"]
    return row
