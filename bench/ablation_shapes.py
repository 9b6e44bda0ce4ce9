#!/usr/bin/env python
"""The CAM-term ablation on the synthetic `shapes` set, with its raw records: results/ablations/cam/.

    python bench/ablation_shapes.py

Runs `python run_kd.py compare` on recipes/ablations/cam.yaml and recipes/ablations/cam_range.yaml (the quickstart
pair, 3 seeds, every variant of a seed side by side over one teacher pass), writes one report over both runs to
results/ablations/cam/ and archives each run's recipe, command and per-epoch metrics in results/ablations/cam/runs/,
from which tests/test_results.py rebuilds the table. This ablation chose CCM's first defaults on the *test* split;
it is kept as a record of that. Defaults are now chosen on CIFAR-100's validation split (bench/cifar100.py).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from run_cli import kd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "ablations" / "cam"
WORK = ROOT / "runs" / "ablation-shapes"
RECIPES = {"ablation-cam": "recipes/ablations/cam.yaml", "ablation-cam-range": "recipes/ablations/cam_range.yaml"}


def main() -> None:
    from kd.engine.rundir import RunDir

    output = f"output_dir={os.path.relpath(WORK, ROOT)}"
    runs, notes = [], {}
    for name, recipe in RECIPES.items():
        seconds = kd("compare", recipe, output)
        run = max((p for p in WORK.glob(f"{name}-2*")), key=lambda p: p.stat().st_mtime)
        runs.append(run)
        notes[run] = f"python run_kd.py compare {recipe} {output}\n# {seconds / 60:.1f} min wall on this machine\n"
    runs.sort(key=lambda p: p.name)  # the order the table test rebuilds them in
    kd("report", *(os.path.relpath(r, ROOT) for r in runs), "--out", os.path.relpath(WORK / "report", ROOT))
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        shutil.copy(WORK / "report" / name, OUT / name)
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    for run in runs:
        RunDir(run).archive(OUT / "runs" / run.name)
        (OUT / "runs" / run.name / "command.txt").write_text(notes[run])
    print((OUT / "table.md").read_text())


if __name__ == "__main__":
    import argparse

    # no options: --help shows what the script does, and a stray argument stops it before any work
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
