#!/usr/bin/env python
"""CIFAR-100 on one CUDA GPU in at most 8 minutes: a resnet56 teacher on the full training set, then the seven
mission methods side by side over one teacher pass (resnet20 students) for as many epochs as fit.

    cp ../shared/data/cifar100-jpeg.tar.gz data/          # data/ is git-ignored; the checkout stays under 64 MiB
    python bench/gpu_cifar100_real.py                     # writes results/gpu/cifar100-real.md and its raw runs

1. the teacher trains for --teacher-epochs (cosine schedule, bf16, channels_last, compile);
2. one epoch of the students measures their epoch time; the students then train for as many epochs as the
   rest of the --budget-min minutes allows (at least 1), from scratch, cosine over those epochs;
3. results/gpu/cifar100-real.md records images/s, peak GPU memory and the accuracies, with the command, and
   the runs' recipes and per-epoch metrics are archived in results/gpu/runs/.
On the CPU, `--tiny` runs the same steps on a few images per class in a minute or two (tests/test_bench_gpu_script.py).
"""
from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import time
from pathlib import Path

from run_cli import kd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def newest(folder: Path) -> Path:
    return max((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ROOT / "data" / "cifar100-jpeg.tar.gz"))
    parser.add_argument("--budget-min", type=float, default=7.0, help="wall-clock budget for both stages")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="a few images per class, for a check on the CPU")
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu"))
    args = parser.parse_args()
    from kd.engine.rundir import RunDir

    if not Path(args.archive).is_file():
        sys.exit(f"error: {args.archive} does not exist; copy the CIFAR-100 archive there "
                 f"(cp ../shared/data/cifar100-jpeg.tar.gz data/) or pass --archive PATH")
    start = time.perf_counter()
    out, work = Path(args.out), ROOT / "runs" / "gpu-cifar100-real"
    shutil.rmtree(work, ignore_errors=True)
    common = [f"data_root={args.archive}", f"device={args.device}"]
    if args.tiny:
        common += ["subset_per_class=4", "compile=false"]
    teacher_epochs = 1 if args.tiny else args.teacher_epochs
    teacher_s = kd("recipes/gpu/teacher.yaml", f"epochs={teacher_epochs}", f"output_dir={work / 'teacher'}", *common)
    teacher_run = newest(work / "teacher")
    students = ["compare", "recipes/gpu/students.yaml", *common,
                f"teacher_checkpoint={RunDir(teacher_run).student('vanilla', 0).last_checkpoint}"]
    # one epoch measures the students' epoch (compilation included, so the estimate errs on the safe side)
    probe_s = kd(*students, "epochs=1", f"output_dir={work / 'probe'}")
    left = args.budget_min * 60 - (time.perf_counter() - start)
    epochs = 1 if args.tiny else max(1, int(0.9 * left / probe_s))
    students_s = kd(*students, f"epochs={epochs}", f"output_dir={work / 'students'}")
    student_run = newest(work / "students")

    shutil.rmtree(out / "runs", ignore_errors=True)
    for run in (teacher_run, student_run):
        RunDir(run).archive(out / "runs" / run.name)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    teacher_rows = rows(teacher_run / "vanilla-s0" / "metrics.csv")
    lines = ["# CIFAR-100 on one GPU: a resnet56 teacher, then the seven methods side by side", "",
             f"Made by `python bench/gpu_cifar100_real.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}: "
             f"{device}, torch {torch.__version__}. The JPEG copy of CIFAR-100 (50,000 training, 10,000 test images"
             f"{'; --tiny: 4 images per class' if args.tiny else ''}), batch 64, cosine schedule, bf16 autocast, "
             f"channels_last{'' if args.tiny else ', torch.compile'}.", "",
             f"- teacher resnet56: {teacher_epochs} epochs, {teacher_s / 60:.1f} min wall, test top-1 "
             f"{float(teacher_rows[-1]['test_top1']):.2f} %, "
             f"{statistics.mean(float(r['images_per_s']) for r in teacher_rows):.0f} images/s, peak GPU memory "
             f"{max(float(r.get('gpu_mem_mb') or 0) for r in teacher_rows):.0f} MiB",
             f"- students (resnet20): one probe epoch {probe_s:.0f} s wall, then {epochs} epochs in "
             f"{students_s / 60:.1f} min wall", f"- total {(time.perf_counter() - start) / 60:.1f} min",
             "", "| method | test top-1 (%) | images/s (as if alone) | peak GPU memory (MiB) |", "|---|---:|---:|---:|"]
    for folder in sorted(p for p in student_run.iterdir() if (p / "metrics.csv").is_file()):
        r = rows(folder / "metrics.csv")
        lines.append(f"| {folder.name.rsplit('-s', 1)[0]} | {float(r[-1]['test_top1']):.2f} | "
                     f"{statistics.mean(float(x['images_per_s']) for x in r):.0f} | "
                     f"{max(float(x.get('gpu_mem_mb') or 0) for x in r):.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifar100-real.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
