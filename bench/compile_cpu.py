#!/usr/bin/env python
"""Does `compile: true` pay off on this CPU? Compile time against the time it saves, per pair:
results/bench/compile-cpu.md.

    python bench/compile_cpu.py [PAIR ...] [--repeats N] [--out FILE]
                                      (default: quickstart and the three standard CIFAR-100 pairs, 3 repeats)
    python bench/compile_cpu.py --teacher [PAIR ...] [--out FILE]  the teacher's passes alone (compile_teacher):
                                                                   results/bench/compile-teacher-cpu.md

For each pair and each of compile=false / compile=true, --repeats times, a fresh process (with an empty
inductor cache, as on a new machine) builds the pair's teacher and a KD student with the recipe defaults and times, on one random
batch of the pair's input shape: every one of the first training steps (the teacher pass included), then the
first and a later evaluation forward (eval mode is a second graph). The one-off cost of compiling is what the
first calls take beyond the steady step time; the break-even is that cost divided by what a compiled step
saves. A run shorter than the break-even is faster eager. `compile` becomes a recipe default only for pairs
whose compiled step is faster beyond the spread between processes (the t interval of its speed-up over
--repeats pairs of processes lies above 1) and whose realistic runs are longer than the break-even.

--teacher: in a fresh process per pair (empty inductor cache), the teacher's pass as a run makes it (BatchNorm
folded, eager) against the same pass compiled with frozen weights (compile_teacher), timed in interleaved rounds
in one process, so that the two see the same machine; the first compiled call is the one-off. Its break-even
must lie far below kd.run.COMPILE_TEACHER_MIN_PASSES, the threshold of compile_teacher's auto.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "bench" / "compile-cpu.md"
TEACHER_OUT = ROOT / "results" / "bench" / "compile-teacher-cpu.md"
PAIRS = ["quickstart", "resnet56-resnet20", "resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2"]
RECIPES = {"quickstart": "recipes/quickstart.yaml"}  # otherwise recipes/cifar100/<pair>/students.yaml
STEPS = 40
REPEATS = 3  # eager / compiled process pairs per pair: step times move by a few % from one process to the next


def kd_step(pair: str, overrides: list[str] = ()):
    """What one KD training step of `pair` needs, built the way a run builds it from the pair's own students
    recipe (its epochs, data and defaults; KD only, batch 64, `overrides` on top), on one random batch:
    (recipe, hardware, spec, teacher, trainee, images, targets)."""
    import torch

    from kd.data import data_spec
    from kd.engine.device import resolve_hardware
    from kd.engine.rundir import RunDir
    from kd.models import create_model
    from kd.recipe import load_recipe
    from kd.run import build_trainee, compiled

    recipe = load_recipe(RECIPES.get(pair, f"recipes/cifar100/{pair}/students.yaml"),
                         ["methods=[kd]", "batch_size=64", "compile_teacher=false", *overrides])
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last, recipe.deterministic)
    spec = data_spec(recipe.dataset, recipe.data_options(), recipe.data_root)
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher, spec.num_classes).to(hw.device, memory_format=hw.memory_format)
    teacher.eval().requires_grad_(False)
    if recipe.compile:
        compiled(teacher, recipe.compile_mode, frozen=True)
    images = torch.randn(recipe.batch_size, 3, *spec.image_size).contiguous(memory_format=hw.memory_format)
    targets = torch.randint(0, spec.num_classes, (recipe.batch_size,))
    with tempfile.TemporaryDirectory() as scratch:
        trainee = build_trainee(recipe, "kd", 0, teacher, spec, hw, RunDir(scratch))
    return recipe, hw, spec, teacher, trainee, images, targets


def measure(pair: str, compile_: bool) -> dict:
    """In this process: the first STEPS training steps and two evaluation forwards, each timed. compile=false is
    the default run: the student eager, the teacher's passes prepared as a run of the pair's recipe prepares them
    (folded, and compiled where compile_teacher's auto compiles them: the CIFAR pairs' 240 epochs)."""
    from dataclasses import replace

    import torch

    from kd.engine.trainer import teacher_pass, train_step
    from kd.run import prepare_passes

    recipe, hw, spec, teacher, trainee, images, targets = kd_step(pair, [f"compile={compile_}", "compile_teacher=null"])
    train_size = spec.train_size or getattr(recipe.data_options(), "train_size", 50_000)  # CIFAR: 50,000
    teacher, done = prepare_passes(teacher, recipe, replace(spec, train_size=train_size), hw)
    steps = []
    for _ in range(STEPS):
        start = time.perf_counter()
        train_step(trainee, hw, images, targets, teacher_pass(teacher, images, hw), 0)
        steps.append(time.perf_counter() - start)
    student = trainee.student
    student.eval()
    evals = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode(), hw.autocast():
            student(images)
        evals.append(time.perf_counter() - start)
    return {"steps": steps, "evals": evals, "hardware": hw.describe(), "teacher_passes": done,
            "recipe_steps": recipe.epochs * -(-train_size // recipe.batch_size), "epochs": recipe.epochs}


def measure_teacher(pair: str, rounds: int = 8, calls: int = 15) -> dict:
    """In this process: the eager (folded) teacher pass and the compiled one, interleaved; the compile's one-off."""
    import copy

    from kd.engine.trainer import teacher_pass
    from kd.run import compiled, teacher_for_passes

    recipe, hw, spec, teacher, _, images, _ = kd_step(pair)
    eager = teacher_for_passes(teacher, recipe, spec, hw)
    frozen = compiled(copy.deepcopy(eager), "default", frozen=True)

    def timed(module, n):
        start = time.perf_counter()
        for _ in range(n):
            teacher_pass(module, images, hw)
        return (time.perf_counter() - start) / n

    first = timed(frozen, 1)
    timed(eager, 10), timed(frozen, 10)
    times = {"eager": [], "compiled": []}
    for _ in range(rounds):
        times["eager"].append(timed(eager, calls))
        times["compiled"].append(timed(frozen, calls))
    return {"first": first, **{k: statistics.median(v) for k, v in times.items()}, "hardware": hw.describe(),
            "folded": eager is not teacher}


def child(pair: str, compile_: bool | str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": cache}
        mode = "teacher" if compile_ == "teacher" else str(int(compile_))
        done = subprocess.run([sys.executable, __file__, "--child", pair, mode], env=env, cwd=ROOT,
                              check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_teacher(pairs: list[str], out: Path, command: str) -> None:
    import torch

    from kd.run import COMPILE_TEACHER_MIN_PASSES

    lines = ["# The teacher's passes compiled (compile_teacher) on the CPU", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU "
             f"cores, torch {torch.__version__}. One teacher pass (kd.engine.trainer.teacher_pass), batch 64, random "
             "data: eager with its BatchNorm layers folded (the default) against the same module compiled with frozen "
             "weights, median of 8 interleaved rounds of 15 passes in one process; one-off = the first compiled "
             "call, in a fresh process with an empty inductor cache; break-even = one-off / saving per pass.", "",
             "| pair | precision | eager pass (ms) | compiled pass (ms) | saved per pass (ms) | speed-up | "
             "one-off (s) | break-even (passes) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    evens = []
    for pair in pairs:
        r = child(pair, "teacher")
        saving = r["eager"] - r["compiled"]
        even = r["first"] / saving if saving > 0 else float("inf")
        evens.append(even)
        lines.append(f"| {pair} | {r['hardware']} | {1000 * r['eager']:.1f} | {1000 * r['compiled']:.1f} | "
                     f"{1000 * saving:.1f} | {r['eager'] / r['compiled']:.2f}x | {r['first']:.0f} | "
                     f"{'never' if even == float('inf') else f'{even:,.0f}'} |")
        print(lines[-1], flush=True)
    worst = max(evens)
    lines += ["", f"compile_teacher's auto compiles the teacher's passes on the CPU for runs of at least "
              f"{COMPILE_TEACHER_MIN_PASSES:,} passes (kd.run.COMPILE_TEACHER_MIN_PASSES): "
              + (f"{COMPILE_TEACHER_MIN_PASSES / worst:.1f}x the largest break-even above." if worst < float("inf")
                 else "but a pair above never breaks even, so the threshold needs another look.")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


def one_off(result: dict) -> tuple[float, float]:
    """(steady step time, seconds the first calls took beyond steady ones)."""
    steady = statistics.median(result["steps"][STEPS // 2:])
    extra = sum(result["steps"]) - STEPS * steady + result["evals"][0] - statistics.median(result["evals"][1:])
    return steady, extra


def main(pairs: list[str], repeats: int, out: Path, command: str) -> None:
    import torch

    from kd.report.stats import mean_interval

    lines = ["# torch.compile on the CPU: compile time against the time it saves", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}. KD step (teacher pass + student step), batch 64, "
             "random data. eager = the default run: the student eager, the teacher's passes as a run of the pair's "
             "recipe prepares them (listed below); compiled = `compile: true` (student and teacher compiled). Each "
             f"cell is a fresh process with an empty inductor cache (a new machine), {repeats} of each per pair, "
             "eager and compiled alternating; the step speed-up is eager's steady step over compiled's of the "
             "same repeat, its mean [95 % t interval] over the repeats. One-off = what the first "
             f"{STEPS} steps and the first evaluation forward took beyond steady-state ones (mean over repeats). "
             "Break-even = the extra one-off time of compiling / the time a compiled step saves.", "",
             "| pair | precision | eager ms/step | compiled ms/step | step speed-up, mean [95 %] | compile one-off (s) | "
             "break-even (steps) | steps in the pair's recipe | compile by default |",
             "|---|---|---:|---:|---|---:|---:|---:|---|"]
    passes = []
    for pair in pairs:
        raw = [(child(pair, False), child(pair, True)) for _ in range(repeats)]
        cells = [(one_off(eager), one_off(comp)) for eager, comp in raw]
        eager, comp = raw[0]
        e_step = statistics.fmean(e[0] for e, _ in cells)
        c_step = statistics.fmean(c[0] for _, c in cells)
        cost = statistics.fmean(c[1] - e[1] for e, c in cells)
        speedup = mean_interval([e[0] / c[0] for e, c in cells])
        saving = e_step - c_step
        even = cost / saving if saving > 0 else float("inf")
        steps = comp["recipe_steps"]
        interval = "" if speedup["n"] < 2 else f" [{speedup['low']:.2f}, {speedup['high']:.2f}]"
        # a compiled step must be faster beyond the spread between processes: its whole interval above 1
        faster = speedup["n"] >= 2 and speedup["low"] > 1
        verdict = "yes" if faster and steps > even else "no"
        lines.append(f"| {pair} | {comp['hardware']} | {1000 * e_step:.1f} | {1000 * c_step:.1f} | "
                     f"{speedup['mean']:.2f}x{interval} | "
                     f"{cost:.0f} | {'never' if even == float('inf') else f'{even:.0f}'} | {steps} "
                     f"({comp['epochs']} epochs) | {verdict} |")
        done = eager["teacher_passes"]
        passes.append(f"{pair}: " + (f"run {' and '.join(done)}" if done else "eager, as it is"))
        print(lines[-1], flush=True)
    lines += ["", "The eager runs' teacher passes: " + "; ".join(passes) + ".", "",
              "Steps in the pair's recipe: its epochs x its training images / 64 (CIFAR: 50,000 images, 782 "
              "steps an epoch; quickstart: 4,000 images). Every student of a comparison pays the one-off again in eval and "
              "train mode unless its graphs are reused (same architecture and shapes: the inductor cache serves "
              "them), so the table is the case of one student. Compile by default = the compiled step is faster "
              "beyond the spread between processes (the whole interval of its speed-up lies above 1) and the "
              "pair's recipe is longer than the break-even."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        pair, mode = sys.argv[2], sys.argv[3]
        print(json.dumps(measure_teacher(pair) if mode == "teacher" else measure(pair, bool(int(mode)))))
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("pairs", nargs="*", default=PAIRS)
        parser.add_argument("--teacher", action="store_true", help="the teacher's passes alone (compile_teacher)")
        parser.add_argument("--repeats", type=int, default=REPEATS, help="eager / compiled process pairs per pair")
        parser.add_argument("--out", type=Path, default=None, help="output file (default: results/bench/...)")
        args = parser.parse_args()
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        command = " ".join(["python bench/compile_cpu.py", *sys.argv[1:]])
        if args.teacher:
            main_teacher(args.pairs, args.out or TEACHER_OUT, command)
        else:
            main(args.pairs, args.repeats, args.out or OUT, command)
