#!/usr/bin/env python
"""Measure the quickstart demo and commit what it shows to results/quickstart/.

    python bench/quickstart.py

1. the demo from a cold start (quickstart teacher not cached): wall time of
   `python run_kd.py compare recipes/quickstart.yaml`, teacher training included;
2. with the teacher cached, the same comparison with the shared teacher pass (default) and with
   shared_teacher=false (one student after another), to measure what the shared pass saves.
Writes results/quickstart/{timing.md, table.md, table.csv, curves.png, cams.png} and the cold-start run's
recipe and per-epoch metrics under results/quickstart/runs/. A cached quickstart teacher is moved aside for
step 1 and put back afterwards.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from run_cli import kd as timed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "quickstart"


def main() -> None:
    import torch

    from kd.pairs import get_pair

    teacher = get_pair("quickstart").checkpoint_path  # the pair owns where its teacher is cached
    work = Path(tempfile.mkdtemp(prefix="kd-quickstart-"))
    backup = work / "teacher-backup.pt"
    if teacher.exists():
        shutil.move(teacher, backup)
    try:
        cold = timed("compare", "recipes/quickstart.yaml", f"output_dir={work / 'cold'}")
    finally:
        if backup.exists():  # keep the user's cached teacher; the fresh one was only for the measurement
            shutil.move(backup, teacher)
    shared = timed("compare", "recipes/quickstart.yaml", f"output_dir={work / 'shared'}")
    sequential = timed("compare", "recipes/quickstart.yaml", "shared_teacher=false", f"output_dir={work / 'sequential'}")

    from kd.engine.device import cpu_name
    from kd.engine.rundir import RunDir

    OUT.mkdir(parents=True, exist_ok=True)
    run = next((work / "cold").iterdir())
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        shutil.copy(run / "report" / name, OUT / name)
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    RunDir(run).archive(OUT / "runs" / run.name)  # the raw record the table is rebuilt from
    (OUT / "runs" / run.name / "command.txt").write_text(f"python run_kd.py compare recipes/quickstart.yaml "
                                                        f"output_dir={work / 'cold'}\n")
    (OUT / "timing.md").write_text(f"""# Quickstart demo timing

Made by `python bench/quickstart.py` on {time.strftime('%Y-%m-%d')}: {cpu_name()}, {os.cpu_count()} CPU cores,
torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU.

| what | wall time (s) |
|---|---:|
| demo from a cold start (`python run_kd.py compare recipes/quickstart.yaml`, teacher trained first) | {cold:.0f} |
| the comparison with the teacher cached, shared teacher pass (default) | {shared:.0f} |
| the comparison with the teacher cached, `shared_teacher=false` (students one after another) | {sequential:.0f} |

The shared teacher pass saves {sequential - shared:.0f} s ({100 * (sequential - shared) / sequential:.0f} % of the
sequential time) on this comparison: five of its seven methods use the teacher, and it runs forward once per
batch for all of them instead of once per student. Wall times include start-up, data generation and evaluation.
The tables, curves and CAM pictures in this folder are those of the cold-start run.
""")
    print((OUT / "timing.md").read_text())


if __name__ == "__main__":
    import argparse

    # no options: --help shows what the script does, and a stray argument stops it before any work
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
