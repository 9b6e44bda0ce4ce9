#!/usr/bin/env python
"""Which SGD implementation is fastest on this CPU? results/bench/optimizer-cpu.md.

    python bench/optimizer_cpu.py

Times `optimizer.step()` alone (momentum 0.9, weight decay 5e-4, the recipes' settings) over the parameters of
the standard CIFAR students, for torch's three SGD implementations: the per-parameter loop (the CPU default),
`foreach` (one multi-tensor kernel per operation) and `fused`. Each figure is the median of 7 rounds of 50 steps,
set beside the KD training step it belongs to (the median from `run_kd.py bench`, when results/bench/ has it).
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "bench" / "optimizer-cpu.md"
STUDENTS = {"resnet20": "resnet56-resnet20", "resnet8x4": "resnet32x4-resnet8x4", "wrn_16_2": "wrn_40_2-wrn_16_2"}
VARIANTS = {"loop (default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_ms(model, **impl) -> float:
    import torch

    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, **impl)
    for _ in range(5):
        optimizer.step()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(50):
            optimizer.step()
        rounds.append((time.perf_counter() - start) / 50)
    return 1000 * statistics.median(rounds)


def kd_step_ms(pair: str) -> float | None:
    path = ROOT / "results" / "bench" / f"{pair}-cpu.md"
    if not path.is_file():
        return None
    match = re.search(r"^\| kd \| ([\d.]+) \|", path.read_text(), re.M)
    return float(match.group(1)) if match else None


def main() -> None:
    import torch

    from kd.models import create_model

    lines = ["# SGD implementations on the CPU", "",
             f"Made by `python bench/optimizer_cpu.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}. `optimizer.step()` alone, fp32 "
             "parameters (as under autocast), median of 7 x 50 steps.", "",
             "| student | parameters | " + " | ".join(f"{v} (ms)" for v in VARIANTS) + " | kd training step (ms) |",
             "|---|---:|" + "---:|" * (len(VARIANTS) + 1)]
    for name, pair in STUDENTS.items():
        model = create_model(name, 100)
        times = [step_ms(model, **impl) for impl in VARIANTS.values()]
        kd = kd_step_ms(pair)
        count = sum(p.numel() for p in model.parameters())
        lines.append(f"| {name} | {count:,} | " + " | ".join(f"{t:.2f}" for t in times) +
                     f" | {'-' if kd is None else f'{kd:.1f}'} |")
        print(lines[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    import argparse

    # no options: --help shows what the script does, and a stray argument stops it before any work
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
