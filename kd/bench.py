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
from kd.models import create_model

METHODS = ["vanilla", "kd", "fitnets", "at", "cam_loss", "ccm", "ccm_kd"]


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
    from kd.data import load_data
    from kd.engine.device import resolve_hardware
    from kd.run import build_member

    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic)
    options = recipe.data_options()
    data = load_data(recipe.dataset, options) if recipe.dataset in ("shapes", "synthetic") else None
    num_classes = data.num_classes if data else {"cifar10": 10, "cifar100": 100}.get(recipe.dataset, 1000)
    size = data.image_size if data else ((224, 224) if recipe.dataset == "imagenet" else (32, 32))
    shape = type("Shape", (), {"num_classes": num_classes, "image_size": size})
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher, num_classes).to(hw.device, memory_format=hw.memory_format)
    teacher.eval().requires_grad_(False)
    images = torch.randn(recipe.batch_size, 3, *size, device=hw.device).contiguous(memory_format=hw.memory_format)
    targets = torch.randint(0, num_classes, (recipe.batch_size,), device=hw.device)
    with tempfile.TemporaryDirectory() as scratch:
        members = {m: build_member(recipe, m, 0, teacher, shape, hw, Path(scratch)) for m in METHODS}

    def teacher_forward():
        with torch.inference_mode(), hw.autocast():
            teacher.forward_features(images)

    def step(method):
        member = members[method]
        return lambda: train_step(member, hw, images, targets,
                                  teacher_pass(teacher, images, hw) if member.needs_teacher else None, 0)

    def shared():
        t_out = teacher_pass(teacher, images, hw)
        for member in members.values():
            train_step(member, hw, images, targets, t_out if member.needs_teacher else None, 0)

    work = {"teacher_forward": teacher_forward, **{m: step(m) for m in METHODS}, "shared_all": shared}
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
    for name in ["teacher_forward", *METHODS, "shared_all"]:
        row = {"step": name, "ms_per_step": 1000 * median[name],
               "images_per_s": recipe.batch_size / median[name],
               "vs_floor": median[name] / floor if name in METHODS else None,
               "vs_kd": median[name] / median["kd"] if name in ("cam_loss", "ccm", "ccm_kd") else None}
        rows.append(row)
    separate = sum(median[m] for m in METHODS)
    return {"rows": rows, "floor_ms": 1000 * floor, "machine": machine(hw), "batch_size": recipe.batch_size,
            "separate_ms": 1000 * separate, "shared_ms": 1000 * median["shared_all"],
            "extra_params": {m: members[m].distiller.extra_parameter_count() for m in METHODS}}


def write_bench(result: dict, pair: str, out_dir: Path, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if "cuda" in result["machine"] else "cpu"
    path = out_dir / f"{pair}-{device}.md"
    lines = [f"# Training-step throughput: {pair}", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {result['machine']}, batch {result['batch_size']}.", "",
             f"Floor = student step + teacher forward, measured in the same run: {result['floor_ms']:.1f} ms.", "",
             "| step | ms/step | images/s | vs floor | vs kd |", "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        ratio = "-" if row["vs_floor"] is None else f"{row['vs_floor']:.3f}"
        kd = "-" if row["vs_kd"] is None else f"{row['vs_kd']:.3f}"
        lines.append(f"| {row['step']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} | {ratio} | {kd} |")
    saving = 100 * (1 - result["shared_ms"] / result["separate_ms"])
    lines += ["", f"All seven methods over one batch: {result['separate_ms']:.1f} ms as separate steps (each with its own "
              f"teacher pass where it needs one), {result['shared_ms']:.1f} ms sharing one teacher pass ({saving:.0f} % less).",
              "", "Targets: every distiller within 1.10x of the floor; cam_loss and ccm within 1.03x of kd."]
    misses = [r["step"] for r in result["rows"] if r["vs_floor"] is not None and r["vs_floor"] > 1.10]
    misses += [f"{r['step']} (vs kd)" for r in result["rows"] if r["step"] in ("cam_loss", "ccm") and r["vs_kd"] > 1.03]
    lines.append("Missed: " + (", ".join(misses) if misses else "none") + ".")
    path.write_text("\n".join(lines) + "\n")
    return path
