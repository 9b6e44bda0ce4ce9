"""Throughput of a pair's training step: the student alone, the teacher forward alone, every distiller,
and all of them sharing one teacher pass. `python run_kd.py bench PAIR`.

Each distiller's step is compared with the floor, student step + teacher forward, measured in the same
run: whatever a method costs beyond that is the price of its loss. Steps run on one fixed random batch
of the pair's input shape (the speed of a step does not depend on the data), in interleaved rounds so
that drift of a busy machine spreads over all methods alike; each figure is the median over rounds.
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kd.engine.trainer import sync, teacher_pass, train_step
from kd.recipe import method_class
from kd.models import create_model


def machine(hw) -> str:
    if hw.device.type == "cuda":
        return f"{torch.cuda.get_device_name(hw.device)}, torch {torch.__version__}, {hw.describe()}"
    cpu = platform.processor() or "CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {hw.describe()}"


def bench_pair(recipe, steps: int = 10, rounds: int = 5, warmup: int = 3, console=None) -> dict:
    """Median step times of every method of `recipe.methods` (default: every registered distiller)."""
    from dataclasses import replace

    from kd.data import data_spec
    from kd.engine.device import resolve_hardware
    from kd.engine.rundir import RunDir
    from kd.run import build_trainee

    methods = recipe.methods
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic)
    spec = data_spec(recipe.dataset, recipe.data_options(), recipe.data_root)
    train_size = 50_000  # per-image state (CRD's memory banks) sized as for CIFAR
    spec = replace(spec, train_size=train_size)
    num_classes, size = spec.num_classes, spec.image_size
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher, num_classes).to(hw.device, memory_format=hw.memory_format)
    teacher.eval().requires_grad_(False)
    images = torch.randn(recipe.batch_size, 3, *size, device=hw.device).contiguous(memory_format=hw.memory_format)
    targets = torch.randint(0, num_classes, (recipe.batch_size,), device=hw.device)
    index = torch.randperm(train_size, device=hw.device)[:recipe.batch_size]
    for method in methods:
        method_class(method).check_models(create_model(recipe.student, num_classes), teacher,
                                          recipe.method_options(method), spec)
    with tempfile.TemporaryDirectory() as scratch:
        members = {m: build_trainee(recipe, m, 0, teacher, spec, hw, RunDir(scratch)) for m in methods}

    def teacher_forward():
        with torch.inference_mode(), hw.autocast():
            teacher.forward_features(images)

    def step(method):
        member = members[method]
        return lambda: train_step(member, hw, images, targets,
                                  teacher_pass(teacher, images, hw) if member.needs_teacher else None, 0, index)

    def shared():
        t_out = teacher_pass(teacher, images, hw)
        for member in members.values():
            train_step(member, hw, images, targets, t_out if member.needs_teacher else None, 0, index)

    work = {"teacher_forward": teacher_forward, **{m: step(m) for m in methods}, "shared_all": shared}
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
    for name in ["teacher_forward", *methods, "shared_all"]:
        rows.append({"step": name, "ms_per_step": 1000 * median[name], "images_per_s": recipe.batch_size / median[name],
                     "vs_floor": median[name] / floor if name in methods else None})
    separate = sum(median[m] for m in methods)
    return {"rows": rows, "floor_ms": 1000 * floor, "machine": machine(hw), "batch_size": recipe.batch_size,
            "methods": methods, "separate_ms": 1000 * separate, "shared_ms": 1000 * median["shared_all"],
            "extra_params": {m: members[m].distiller.extra_parameter_count() for m in methods}}


def write_bench(result: dict, pair: str, out_dir: Path, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if "cuda" in result["machine"] else "cpu"
    path = out_dir / f"{pair}-{device}.md"
    lines = [f"# Training-step throughput: {pair}", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {result['machine']}, batch {result['batch_size']}.", "",
             f"Floor = student step + teacher forward, measured in the same run: {result['floor_ms']:.1f} ms.", "",
             "| step | ms/step | images/s | vs floor |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        ratio = "-" if row["vs_floor"] is None else f"{row['vs_floor']:.3f}"
        lines.append(f"| {row['step']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} | {ratio} |")
    saving = 100 * (1 - result["shared_ms"] / result["separate_ms"])
    lines += ["", f"All {len(result['methods'])} methods over one batch: {result['separate_ms']:.1f} ms as separate steps "
              f"(each with its own teacher pass where it needs one), {result['shared_ms']:.1f} ms sharing one teacher "
              f"pass ({saving:.0f} % less).", "", "Target: every distiller within 1.10x of the floor."]
    misses = [r["step"] for r in result["rows"] if r["vs_floor"] is not None and r["vs_floor"] > 1.10]
    lines.append("Missed: " + (", ".join(misses) if misses else "none") + ".")
    path.write_text("\n".join(lines) + "\n")
    return path
