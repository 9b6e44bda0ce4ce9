#!/usr/bin/env python
"""Every registered method on the quickstart pair, 3 seeds: results/zoo/.

    python bench/zoo.py                  train and publish
    python bench/zoo.py --from-run DIR   publish a comparison of that recipe trained before (its report is rebuilt)

Runs `python run_kd.py compare recipes/quickstart.yaml methods=[all] seeds=[0, 1, 2]` (resnet20 -> resnet8 on
`shapes`, 6 epochs; every method of a seed side by side over one teacher pass), copies its report (table, curves,
CAM pictures) to results/zoo/ and archives the run's recipe, command and per-epoch metrics in results/zoo/runs/.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "zoo"
WORK = ROOT / "runs" / "zoo"
ARGS = ["compare", "recipes/quickstart.yaml", "name=zoo", "methods=[all]", "seeds=[0, 1, 2]",
        f"output_dir={os.path.relpath(WORK, ROOT)}"]


def kd(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "run_kd.py"), *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def publish(run: Path, note: str) -> None:
    from kd.engine.rundir import RunDir

    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        shutil.copy(run / "report" / name, OUT / name)
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    RunDir(run).archive(OUT / "runs" / run.name)
    command = "python run_kd.py " + " ".join(f"'{a}'" if " " in a else a for a in ARGS)
    (OUT / "runs" / run.name / "command.txt").write_text(f"{command}\n# {note}\n")
    print((OUT / "table.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", metavar="DIR", help="a finished run of this comparison to publish")
    args = parser.parse_args()
    if args.from_run:
        run = Path(args.from_run).resolve()
        kd("report", os.path.relpath(run, ROOT))
        publish(run, "trained by the command above; published with python bench/zoo.py --from-run")
        return
    start = time.perf_counter()
    kd(*ARGS)
    minutes = (time.perf_counter() - start) / 60
    publish(max(WORK.glob("zoo-*"), key=lambda p: p.stat().st_mtime), f"{minutes:.1f} min wall on this machine")


if __name__ == "__main__":
    main()
