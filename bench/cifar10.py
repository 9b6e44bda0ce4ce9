#!/usr/bin/env python
"""The CIFAR-10 comparison on the CPU, from the archive to results/cifar10/.

    python bench/cifar10.py [--archive ../shared/data/cifar10-jpeg.tar.gz]

1. unpacks the CIFAR-10 JPEG archive (sha256 checked) into ~/.cache/kd/cifar10-jpeg, outside the repository;
2. trains the teacher (recipes/cifar10/teacher.yaml) unless teachers/checkpoints/cifar10/resnet56.pt is there,
   and writes that checkpoint's sha256 beside it;
3. runs `python run_kd.py compare recipes/cifar10/students.yaml` and copies its report (table, curves, CAMs)
   into results/cifar10/, with the wall times in results/cifar10/timing.md and, in results/cifar10/runs/, the
   run's recipe, command and per-epoch metrics (the raw record its table is rebuilt from).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

from run_cli import kd

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_SHA256 = "58c58e3af3ec7ed2054f439f35ad3c83dc1ab019f4af6037f60612ea098c8fa1"
CACHE = Path.home() / ".cache" / "kd" / "cifar10-jpeg"
OUT = ROOT / "results" / "cifar10"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path) -> None:
    if (CACHE / "train").is_dir() and (CACHE / "test").is_dir():
        return
    if sha256(archive) != ARCHIVE_SHA256:
        sys.exit(f"error: {archive} does not have the expected sha256 {ARCHIVE_SHA256}; get a fresh copy")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")


def train_minutes(run: Path) -> float:
    """Training time summed from every student's metrics.csv (eval excluded), whole even if the run was resumed."""
    import pandas as pd

    return sum(pd.read_csv(f)["seconds"].sum() for f in run.glob("*/metrics.csv")) / 60


def teacher_path() -> Path:
    from kd.pairs import get_pair

    return get_pair("cifar10-resnet56-resnet20").checkpoint_path  # the pair owns its checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    args = parser.parse_args()
    unpack(Path(args.archive))
    teacher_s = None
    if not teacher_path().exists():
        teacher_s = kd("teacher", "cifar10-resnet56-resnet20")
    (teacher_path().parent / "resnet56.pt.sha256").write_text(f"{sha256(teacher_path())}  resnet56.pt\n")
    out = Path(os.environ.get("KD_RUNS", ROOT / "runs"))
    compare_s = kd("compare", "recipes/cifar10/students.yaml", f"output_dir={os.path.relpath(out, ROOT)}")
    run = max(out.glob("cifar10-resnet56-resnet20-*"), key=lambda p: p.stat().st_mtime)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        if (run / "report" / name).exists():
            shutil.copy(run / "report" / name, OUT / name)
    from kd.engine.rundir import RunDir

    shutil.rmtree(OUT / "runs", ignore_errors=True)  # the raw record the table is rebuilt from (tests/test_results.py)
    RunDir(run).archive(OUT / "runs" / run.name)
    (OUT / "runs" / run.name / "command.txt").write_text(
        f"python run_kd.py compare recipes/cifar10/students.yaml output_dir={os.path.relpath(out, ROOT)}\n")
    import torch

    lines = ["# CIFAR-10 comparison timing", "", f"Made by `python bench/cifar10.py` on {time.strftime('%Y-%m-%d')}: "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU.", ""]
    if teacher_s is not None:
        lines.append(f"- teacher (recipes/cifar10/teacher.yaml): {teacher_s / 60:.1f} min")
    lines.append(f"- comparison (recipes/cifar10/students.yaml, 7 methods x 3 seeds): {compare_s / 60:.1f} min wall "
                 f"in this call ({run.name}; less if it resumed an interrupted run)")
    lines.append(f"- training time summed over the students' epochs (evaluation excluded): {train_minutes(run):.1f} min")
    teachers = sorted(out.glob("cifar10-teacher-resnet56-*"), key=lambda p: p.stat().st_mtime)
    if teachers:
        lines.append(f"- teacher training time summed over its epochs ({teachers[-1].name}): "
                     f"{train_minutes(teachers[-1]):.1f} min")
    lines.append(f"- teacher checkpoint sha256: {sha256(teacher_path())}")
    (OUT / "timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
