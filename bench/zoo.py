#!/usr/bin/env python
"""Every registered method on the quickstart pair, 3 seeds: results/zoo/.

    python bench/zoo.py

Runs `python run_kd.py compare recipes/quickstart.yaml methods=[all] seeds=[0, 1, 2]` (resnet20 -> resnet8 on
`shapes`, 6 epochs; every method of a seed side by side over one teacher pass), copies its report (table, curves,
CAM pictures) to results/zoo/ and archives the run's recipe, command and per-epoch metrics in results/zoo/runs/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "zoo"
ARGS = ["compare", "recipes/quickstart.yaml", "name=zoo", "methods=[all]", "seeds=[0, 1, 2]"]


def main() -> None:
    from kd.engine.rundir import RunDir

    work = ROOT / "runs" / "zoo"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_kd.py"), *ARGS, f"output_dir={os.path.relpath(work, ROOT)}"],
                   cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    run = max(work.glob("zoo-*"), key=lambda p: p.stat().st_mtime)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        shutil.copy(run / "report" / name, OUT / name)
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    RunDir(run).archive(OUT / "runs" / run.name)
    command = "python run_kd.py " + " ".join(f"'{a}'" if " " in a else a for a in ARGS)
    (OUT / "runs" / run.name / "command.txt").write_text(
        f"{command} output_dir={os.path.relpath(work, ROOT)}\n# {seconds / 60:.1f} min wall on this machine\n")
    print((OUT / "table.md").read_text())


if __name__ == "__main__":
    main()
