"""Throughput of a pair's training step: the student alone, the teacher forward alone, every distiller,
all of them sharing one teacher pass, and a plain KD step. `python run_kd.py bench PAIR`.

Each distiller's step is compared with the floor, student step + teacher forward, measured in the same
run: whatever a method costs beyond that is the price of its loss. The `plain` row is the KD step written
the way the CIFAR-100 benchmark code writes it (same models, NCHW, fp32, eager, teacher under no_grad,
the benchmark's KL): each method's speed-up over it is what kd's defaults (memory format, precision, the
shared teacher pass) buy. Steps run on one fixed random batch of the pair's input shape (the speed of a step
does not depend on the data), in interleaved rounds so that drift of a busy machine spreads over all methods
alike; each figure is the median over rounds.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from kd.engine.device import machine
from kd.engine.trainer import sync, teacher_pass, train_step
from kd.recipe import method_class
from kd.models import create_model


def bench_pair(recipe, steps: int = 10, rounds: int = 5, warmup: int = 3, console=None) -> dict:
    """Median step times of every method of `recipe.methods` (default: every registered distiller)."""
    from dataclasses import replace

    from kd.data import data_spec
    from kd.engine.device import resolve_hardware
    from kd.engine.rundir import RunDir
    from kd.run import build_trainee, compiled, prepare_passes

    methods = recipe.methods
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic)
    spec = data_spec(recipe.dataset, recipe.data_options(), recipe.data_root)
    train_size = 50_000  # per-image state (CRD's memory banks and its negatives by class) sized as for CIFAR
    spec = replace(spec, train_size=train_size, train_labels=torch.arange(train_size) % spec.num_classes)
    num_classes, size = spec.num_classes, spec.image_size
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher, num_classes).to(hw.device, memory_format=hw.memory_format)
    teacher.eval().requires_grad_(False)
    if recipe.compile:
        compiled(teacher, recipe.compile_mode, frozen=True)  # as kd.run.build_teacher does
    images = torch.randn(recipe.batch_size, 3, *size, device=hw.device).contiguous(memory_format=hw.memory_format)
    targets = torch.randint(0, num_classes, (recipe.batch_size,), device=hw.device)
    index = torch.randperm(train_size, device=hw.device)[:recipe.batch_size]
    for method in methods:
        method_class(method).check_models(create_model(recipe.student, num_classes), teacher,
                                          recipe.method_options(method), spec)
    with tempfile.TemporaryDirectory() as scratch:
        members = {m: build_trainee(recipe, m, 0, teacher, spec, hw, RunDir(scratch)) for m in methods}
    teacher, done = prepare_passes(teacher, recipe, spec, hw, console)  # the module a run's passes use
    passes = ("compiled with the student" if recipe.compile else
              f"run {' and '.join(done)}" if done else "run on the teacher as it is, eager")

    def teacher_forward():
        teacher_pass(teacher, images, hw)

    def step(method):
        member = members[method]
        return lambda: train_step(member, hw, images, targets,
                                  teacher_pass(teacher, images, hw) if member.needs_teacher else None, 0, index)

    def shared():
        t_out = teacher_pass(teacher, images, hw)
        for member in members.values():
            train_step(member, hw, images, targets, t_out if member.needs_teacher else None, 0, index)

    work = {"teacher_forward": teacher_forward, "plain": plain_kd_step(recipe, num_classes, size, hw.device),
            **{m: step(m) for m in methods}, "shared_all": shared}
    times = {name: [] for name in work}
    for name, fn in work.items():
        for _ in range(warmup):
            fn()
    for r in range(rounds):
        for name, fn in work.items():
            sync(hw)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(hw)
            times[name].append((time.perf_counter() - start) / steps)
        if console is not None:
            console.print(f"round {r + 1}/{rounds} done")
    median = {name: statistics.median(t) for name, t in times.items()}
    floor = median["vanilla"] + median["teacher_forward"]
    rows = []
    for name in ["plain", "teacher_forward", *methods, "shared_all"]:
        rows.append({"step": name, "ms_per_step": 1000 * median[name], "images_per_s": recipe.batch_size / median[name],
                     "vs_floor": median[name] / floor if name in methods else None,
                     "speedup_vs_plain": median["plain"] / median[name] if name in methods else None})
    separate = sum(median[m] for m in methods)
    return {"rows": rows, "floor_ms": 1000 * floor, "machine": machine(hw), "batch_size": recipe.batch_size,
            "methods": methods, "teacher_passes": passes, "separate_ms": 1000 * separate, "shared_ms": 1000 * median["shared_all"],
            "extra_params": {m: members[m].distiller.extra_parameter_count() for m in methods},
            "rounds_ms": {name: [1000 * t for t in ts] for name, ts in times.items()}}


def plain_kd_step(recipe, num_classes: int, size, device):
    """One KD training step as the CIFAR-100 benchmark code writes it: the same two models in the default
    (NCHW) memory format, fp32, eager, the teacher under no_grad, its KL (sum over the batch / batch size,
    times T^2), CE 0.1 + KD 0.9 at T 4, SGD with momentum and weight decay."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    teacher = create_model(recipe.teacher, num_classes).to(device).eval()
    student = create_model(recipe.student, num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    images = torch.randn(recipe.batch_size, 3, *size, device=device)
    targets = torch.randint(0, num_classes, (recipe.batch_size,), device=device)
    T = 4.0

    def step():
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = student(images)
        kl = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1), reduction="sum")
        loss = 0.1 * F.cross_entropy(logits, targets) + 0.9 * kl * T * T / logits.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def write_bench(result: dict, pair: str, out_dir: Path, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if "cuda" in result["machine"] else "cpu"
    path = out_dir / f"{pair}-{device}.md"
    lines = [f"# Training-step throughput: {pair}", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {result['machine']}, batch {result['batch_size']}"
             + (f"; the teacher's passes {result['teacher_passes']} (as in a run of the recipe's length)."
                if "teacher_passes" in result else "."), "",
             f"Floor = student step + teacher forward, measured in the same run: {result['floor_ms']:.1f} ms. "
             "plain = the KD step as the CIFAR-100 benchmark code writes it (same models, NCHW, fp32, eager, "
             "teacher under no_grad); speed-up = plain's time / the step's time.", "",
             "| step | ms/step | images/s | vs floor | speed-up over plain |", "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        ratio = "-" if row["vs_floor"] is None else f"{row['vs_floor']:.3f}"
        speedup = "-" if row["speedup_vs_plain"] is None else f"{row['speedup_vs_plain']:.2f}"
        lines.append(f"| {row['step']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} | {ratio} | {speedup} |")
    saving = 100 * (1 - result["shared_ms"] / result["separate_ms"])
    lines += ["", f"All {len(result['methods'])} methods over one batch: {result['separate_ms']:.1f} ms as separate steps "
              f"(each with its own teacher pass where it needs one), {result['shared_ms']:.1f} ms sharing one teacher "
              f"pass ({saving:.0f} % less).", "",
              "Targets: every distiller within 1.10x of the floor (except where its own computation costs more: "
              "see the README); kd at least 2.0x faster than plain."]
    misses = [r["step"] for r in result["rows"] if r["vs_floor"] is not None and r["vs_floor"] > 1.10]
    misses += [f"{r['step']} (speed-up over plain {r['speedup_vs_plain']:.2f})" for r in result["rows"]
               if r["step"] == "kd" and r["speedup_vs_plain"] < 2.0]
    lines.append("Missed: " + (", ".join(misses) if misses else "none") + ".")
    path.write_text("\n".join(lines) + "\n")
    return path
