#!/usr/bin/env python
"""The CPU speed levers that are not recipe keys, measured on the KD step: results/bench/cpu-levers.md.

    python bench/cpu_levers.py [PAIR ...] [--steps N] [--rounds N] [--out FILE]
                                           (default: the three standard CIFAR-100 pairs)

For each pair, in one process, the KD training step built as a run builds it (bench/compile_cpu.kd_step: the
pair's students recipe, batch 64, its default precision and memory format) is timed in interleaved rounds
(the median is reported) as
- kd: the step as kd runs it (oneDNN on, no host sync inside the step);
- oneDNN off: the same step under torch.backends.mkldnn.flags(enabled=False), the library's own kernels;
- + .item() per step: the step followed by reading its loss on the host, as a loop that prints every step does
  (on a GPU that waits for the device; on the CPU every kernel has already run, so it should cost nothing);
and the evaluation forward of the student (batch of the recipe's eval_batch_size, under inference_mode) in the
run's precision against fp32, and the teacher's pass (BatchNorm-folded, eager) as kd makes it, under no_grad,
against the same pass under inference_mode, whose outputs must then be copied before a student's backward may
save them. Data already on the device needs no measurement on the CPU: the in-memory data
sets are tensors in host memory, which is the CPU's device memory. A lever is worth a default only where it
changes a step by more than the few % that steady step times vary on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = ROOT / "results" / "bench" / "cpu-levers.md"
PAIRS = ["resnet56-resnet20", "resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2"]


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(pair: str, steps: int, rounds: int) -> dict:
    """Median seconds per call of each variant of `pair`'s KD step and of its evaluation forward."""
    import torch

    from compile_cpu import kd_step
    from kd.engine.trainer import teacher_pass, train_step
    from kd.run import teacher_for_passes

    recipe, hw, spec, teacher, trainee, images, targets = kd_step(pair)
    fp32 = replace(hw, autocast_dtype=None, use_scaler=False)

    def step(sync_loss: bool = False):
        _, losses = train_step(trainee, hw, images, targets, teacher_pass(teacher, images, hw), 0)
        if sync_loss:
            sum(losses.values()).item()

    def no_onednn():
        with torch.backends.mkldnn.flags(enabled=False):
            step()

    eval_images = torch.randn(recipe.eval_batch_size, 3, *spec.image_size).contiguous(memory_format=hw.memory_format)

    def evaluate(precision):
        student = trainee.student
        student.eval()
        with torch.inference_mode(), precision.autocast():
            student(eval_images)
        student.train()

    passes = teacher_for_passes(teacher, recipe, spec, hw)

    def inference_mode_pass():
        with torch.inference_mode(), hw.autocast():
            out = passes.forward_features(images)
        maps = [out.logits, *out.stages, out.pre_pool, *(out.preact_stages or [])]
        return [m.clone() for m in maps if m is not None]  # copies a student's backward may save

    variants = {"kd": step, "oneDNN off": no_onednn, "+ .item() per step": lambda: step(sync_loss=True),
                f"eval forward, {hw.precision}": lambda: evaluate(hw), "eval forward, fp32": lambda: evaluate(fp32),
                "teacher pass": lambda: teacher_pass(passes, images, hw),
                "teacher pass, inference_mode + copies": inference_mode_pass}
    for fn in variants.values():  # warm-up: first calls build kernels and caches
        fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, steps if "eval" not in name else 1))
    return {"hardware": hw.describe(), **{name: statistics.median(t) for name, t in times.items()}}


def write(results: dict, command: str, out: Path) -> str:
    import torch

    lines = ["# CPU speed levers on the KD step", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads. Median ms per call over interleaved rounds; "
             "ratio = the variant's time / kd's (eval: bf16 or fp32 / the run's precision; teacher pass: "
             "inference_mode + copies / no_grad).", "",
             "| pair | precision | kd step (ms) | oneDNN off (ms) | ratio | + .item() per step (ms) | ratio | "
             "eval forward (ms) | eval forward fp32 (ms) | ratio | teacher pass (ms) | inference_mode + copies (ms) "
             "| ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair, r in results.items():
        kd, off, item = r["kd"], r["oneDNN off"], r["+ .item() per step"]
        run_eval = next(v for k, v in r.items() if k.startswith("eval forward, ") and not k.endswith("fp32"))
        fp32_eval = r["eval forward, fp32"]
        lines.append(f"| {pair} | {r['hardware']} | {1000 * kd:.1f} | {1000 * off:.1f} | {off / kd:.2f} | "
                     f"{1000 * item:.1f} | {item / kd:.2f} | {1000 * run_eval:.1f} | {1000 * fp32_eval:.1f} | "
                     f"{fp32_eval / run_eval:.2f} | {1000 * r['teacher pass']:.1f} | "
                     f"{1000 * r['teacher pass, inference_mode + copies']:.1f} | "
                     f"{r['teacher pass, inference_mode + copies'] / r['teacher pass']:.2f} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", default=PAIRS)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    command = "python bench/cpu_levers.py" + "".join(f" {a}" for a in sys.argv[1:])
    results = {pair: measure(pair, args.steps, args.rounds) for pair in args.pairs}
    print(write(results, command, args.out))


if __name__ == "__main__":
    main()
