#!/usr/bin/env python
"""kd's KD step against the plain one, over fresh processes: results/bench/kd-vs-plain-cpu.md and its raw .csv.

    python bench/kd_vs_plain.py [PAIR ...] [--processes N] [--steps N] [--rounds N] [--out FILE] [KEY=VALUE ...]
                                              (default: the three standard CIFAR-100 pairs, 5 processes)

`run_kd.py bench PAIR` times every step of a pair in one process, and the `plain` row (the KD step as the
CIFAR-100 benchmark code writes it: NCHW, fp32, eager) is the one whose time moves most from one process to the
next on this machine, far more than kd's bf16 step (the .csv beside the table has every round of both). One
process is one sample of that spread, so a ratio near a target cannot be read off it. This script runs
the same measurement (kd.throughput.bench_pair with methods vanilla and kd: the teacher's passes prepared as
in a run of the recipe's length) in N fresh processes per pair, and reports each process's plain / kd ratio
(of its medians over interleaved rounds), their mean with a t-based 95 % interval (kd.report.stats) and the
verdict against 2.0: above only where the whole interval is. Every round's time of every process is written
to the .csv beside the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "bench" / "kd-vs-plain-cpu.md"
PAIRS = ["resnet56-resnet20", "resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2"]
TARGET = 2.0
STEPS = ("plain", "teacher_forward", "vanilla", "kd")


def one_process(pair: str, steps: int, rounds: int, overrides: list[str]) -> dict:
    """The child: one bench of vanilla and kd on `pair`, its medians and every round's time (ms)."""
    from kd.cli import bench_recipe
    from kd.throughput import bench_pair

    result = bench_pair(bench_recipe(pair, ["methods=[kd]", *overrides]), steps, rounds)
    medians = {row["step"]: row["ms_per_step"] for row in result["rows"]}
    return {"machine": result["machine"], "teacher_passes": result["teacher_passes"],
            "median_ms": {s: medians[s] for s in STEPS}, "rounds_ms": {s: result["rounds_ms"][s] for s in STEPS}}


def measure(pair: str, processes: int, steps: int, rounds: int, overrides: list[str]) -> list[dict]:
    out = []
    for i in range(processes):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, __file__, "--child", pair, str(steps), str(rounds), *overrides],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: the bench of {pair} failed in process {i + 1}:\n{done.stderr[-3000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        m = out[-1]["median_ms"]
        print(f"{pair}: process {i + 1}/{processes}: plain {m['plain']:.1f} ms, kd {m['kd']:.1f} ms, "
              f"plain / kd {m['plain'] / m['kd']:.2f}", flush=True)
    return out


def summary(samples: list[dict]) -> dict:
    from kd.report.stats import mean_interval

    ratios = [s["median_ms"]["plain"] / s["median_ms"]["kd"] for s in samples]
    floors = [s["median_ms"]["plain"] / (s["median_ms"]["vanilla"] + s["median_ms"]["teacher_forward"])
              for s in samples]
    ratio = mean_interval(ratios)
    if ratio["n"] < 2:
        verdict = "no interval (one process)"
    elif ratio["low"] > TARGET:
        verdict = f"above {TARGET:.1f}"
    elif ratio["high"] < TARGET:
        verdict = f"below {TARGET:.1f}"
    else:
        verdict = f"cannot be told from {TARGET:.1f} (the interval includes it)"
    ms = {s: [x["median_ms"][s] for x in samples] for s in STEPS}
    return {"ratios": ratios, "mean": ratio["mean"], "low": ratio["low"], "high": ratio["high"],
            "floor_mean": statistics.fmean(floors), "verdict": verdict, "ms": ms}


def write(results: dict, command: str, out: Path) -> str:
    first = next(iter(results.values()))[0]
    lines = ["# kd's KD step against the plain one, over fresh processes", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, {first['machine']}; "
             "batch 64; the teacher's passes prepared as a run of the pair's recipe would prepare them (listed below). "
             "Each process is one `run_kd.py bench PAIR methods=[kd]` (interleaved rounds, medians); plain / kd is "
             "plain's median over kd's in that process. mean [95 % interval] is over the processes (Student's t); "
             "plain / floor is plain's time over the floor's (student step + teacher forward, the least any distiller's "
             "step can take), the most that plain / kd can reach. "
             f"The raw times of every round are in {out.with_suffix('.csv').name}.", "",
             "| pair | processes | plain (ms) | kd (ms) | plain / kd per process | plain / kd, mean [95 %] | "
             "plain / floor | against 2.0 |", "|---|---:|---|---|---|---|---:|---|"]
    for pair, samples in results.items():
        s = summary(samples)
        span = lambda v: f"{min(v):.1f}-{max(v):.1f}"
        interval = "" if math.isnan(s["low"]) else f" [{s['low']:.2f}, {s['high']:.2f}]"  # NaN: one process
        lines.append(f"| {pair} | {len(samples)} | {span(s['ms']['plain'])} | {span(s['ms']['kd'])} | "
                     f"{', '.join(f'{r:.2f}' for r in s['ratios'])} | {s['mean']:.2f}{interval} | "
                     f"{s['floor_mean']:.2f} | {s['verdict']} |")
    lines += ["", "The teacher's passes: " + "; ".join(f"{pair}: {samples[0]['teacher_passes']}"
                                                   for pair, samples in results.items()) + "."]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair", "process", "step", "round", "ms_per_step"])
        for pair, samples in results.items():
            for p, sample in enumerate(samples, start=1):
                for step, times in sample["rounds_ms"].items():
                    writer.writerows([pair, p, step, r, f"{t:.3f}"] for r, t in enumerate(times, start=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", help=f"pairs, or KEY=VALUE recipe keys (default pairs: {' '.join(PAIRS)})")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per pair")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per process")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if min(args.processes, args.steps, args.rounds) < 1:
        parser.error("--processes, --steps and --rounds must be at least 1")
    overrides = [a for a in args.pairs if "=" in a]
    pairs = [a for a in args.pairs if "=" not in a] or PAIRS
    from kd.cli import bench_recipe
    from kd.errors import KDError

    for pair in pairs:  # a wrong pair or key is named now, in one line, before any process starts
        try:
            bench_recipe(pair, ["methods=[kd]", *overrides])
        except KDError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    command = "python bench/kd_vs_plain.py" + "".join(f" {a}" for a in sys.argv[1:])
    results = {pair: measure(pair, args.processes, args.steps, args.rounds, overrides) for pair in pairs}
    print(write(results, command, args.out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        pair, steps, rounds, *keys = sys.argv[2:]
        print(json.dumps(one_process(pair, int(steps), int(rounds), keys)))
    else:
        main()
