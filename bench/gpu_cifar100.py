#!/usr/bin/env python
"""GPU check of the paper-scale CIFAR-100 recipe: resnet32x4 -> resnet8x4, kd and ccm_kd, batch 64.

    python bench/gpu_cifar100.py [--epochs 3]

Runs recipes/cifar100/resnet32x4-resnet8x4/students.yaml for a few epochs on synthetic CIFAR-100-shaped
data (50,000 train / 10,000 test random images: speed does not depend on the pixels, and the data set
cannot be downloaded on the GPU machines) with a randomly initialised teacher, in three configurations:
eager (bf16 autocast, channels_last), torch.compile, and torch.compile with CUDA graphs
(compile_mode=reduce-overhead). Records images/s, peak GPU memory and the projected wall time of the
full 240-epoch recipe (240 x 50,000 images at the throughput of the epochs after the first, which carries
compilation) into results/bench/gpu-cifar100.md. Target: the full recipe in 15 minutes or less on one H100.
Runs on the CPU too (slowly) with --device cpu, to check the script itself.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/cifar100/resnet32x4-resnet8x4/students.yaml"
CONFIGS = {"eager": [], "compile": ["compile=true"], "compile+cudagraphs": ["compile=true", "compile_mode=reduce-overhead"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-size", type=int, default=50000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "gpu-cifar100.md"))
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(ROOT))
    from kd.models import create_model

    work = Path(tempfile.mkdtemp(prefix="kd-gpu-"))
    teacher = work / "resnet32x4-random.pt"
    torch.save({"model": create_model("resnet32x4", 100).state_dict()}, teacher)
    rows = []
    for method in ("kd", "ccm_kd"):
        for name, extra in CONFIGS.items():
            if args.device == "cpu" and name != "eager":
                continue
            out = work / f"{method}-{name}"
            command = [sys.executable, str(ROOT / "run_kd.py"), RECIPE, f"methods=[{method}]", "dataset=synthetic",
                       f"synthetic.train_size={args.train_size}", f"synthetic.test_size={args.test_size}", f"teacher_checkpoint={teacher}",
                       f"epochs={args.epochs}", "milestones=[]", f"device={args.device}", f"output_dir={out}", *extra]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                rows.append({"method": method, "config": name, "error": done.stderr.strip().splitlines()[-1][:200]})
                continue
            metrics = list(csv.DictReader(open(next(out.iterdir()) / f"{method}-s0" / "metrics.csv")))
            later = metrics[1:] or metrics
            images_per_s = statistics.mean(float(r["images_per_s"]) for r in later)
            rows.append({"method": method, "config": name, "images_per_s": images_per_s,
                         "epoch_s": statistics.mean(float(r["seconds"]) for r in later),
                         "first_epoch_s": float(metrics[0]["seconds"]),
                         "gpu_mem_mb": max(float(r.get("gpu_mem_mb") or 0) for r in metrics),
                         # the real recipe trains on CIFAR-100's 50,000 images, whatever --train-size was
                         "projected_240_min": 240 * 50000 / images_per_s / 60, "wall_s": wall})
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    lines = ["# GPU throughput: CIFAR-100 resnet32x4 -> resnet8x4, batch 64", "",
             f"Made by `python bench/gpu_cifar100.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}: {device}, "
             f"torch {torch.__version__}; synthetic CIFAR-100-shaped data ({args.train_size} train images), random teacher.", "",
             "Projected = 240 epochs of CIFAR-100's 50,000 training images at the images/s of the epochs after the "
             "first (which includes compilation), training only (per-epoch evaluation of 10,000 test images excluded).", "",
             "| method | config | images/s | s/epoch | first epoch (s) | peak GPU memory (MiB) | projected 240 epochs (min) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['config']} | failed: {r['error']} | | | | |")
        else:
            lines.append(f"| {r['method']} | {r['config']} | {r['images_per_s']:.0f} | {r['epoch_s']:.1f} | "
                         f"{r['first_epoch_s']:.1f} | {r['gpu_mem_mb']:.0f} | {r['projected_240_min']:.1f} |")
    lines += ["", "Target: the full 240-epoch recipe in 15 minutes or less on one H100."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
