#!/usr/bin/env python
"""Every registered method on the quickstart pair, 3 seeds: results/zoo/.

    python bench/zoo.py                  train and publish
    python bench/zoo.py --from-run DIR   publish a comparison of that recipe trained before (its report is rebuilt)
    python bench/zoo.py --weights        the diagnostic of recipes/ablations/zoo_weights.yaml (cat_kd, crd and rkd
                                         with their loss weights divided by 10 and 100): results/ablations/zoo-weights/

Runs `python run_kd.py compare recipes/quickstart.yaml methods=[all] seeds=[0, 1, 2]` (resnet20 -> resnet8 on
`shapes`, 6 epochs; every method of a seed side by side over one teacher pass), copies its report (table, curves,
CAM pictures) to results/zoo/ and archives the run's recipe, command and per-epoch metrics in results/zoo/runs/.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from run_cli import kd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "runs" / "zoo"
# study: (its compare arguments, the run name's prefix, where it is published)
STUDIES = {
    "zoo": (["compare", "recipes/quickstart.yaml", "name=zoo", "methods=[all]", "seeds=[0, 1, 2]",
             f"output_dir={os.path.relpath(WORK, ROOT)}"], "zoo", ROOT / "results" / "zoo"),
    "weights": (["compare", "recipes/ablations/zoo_weights.yaml", f"output_dir={os.path.relpath(WORK, ROOT)}"],
                "zoo-weights", ROOT / "results" / "ablations" / "zoo-weights"),
}


def publish(run: Path, note: str, study: str) -> None:
    from kd.engine.rundir import RunDir

    args, _, out = STUDIES[study]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        shutil.copy(run / "report" / name, out / name)
    shutil.rmtree(out / "runs", ignore_errors=True)
    RunDir(run).archive(out / "runs" / run.name)
    command = "python run_kd.py " + " ".join(f"'{a}'" if " " in a else a for a in args)
    (out / "runs" / run.name / "command.txt").write_text(f"{command}\n# {note}\n")
    print((out / "table.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", metavar="DIR", help="a finished run of this comparison to publish")
    parser.add_argument("--weights", action="store_true", help="the loss-weight diagnostic instead of the zoo")
    args = parser.parse_args()
    study = "weights" if args.weights else "zoo"
    if args.from_run:
        run = Path(args.from_run).resolve()
        kd("report", os.path.relpath(run, ROOT))
        publish(run, "trained by the command above; published with python bench/zoo.py --from-run", study)
        return
    start = time.perf_counter()
    kd(*STUDIES[study][0])
    minutes = (time.perf_counter() - start) / 60
    prefix = STUDIES[study][1]
    run = max(WORK.glob(f"{prefix}-2*"), key=lambda p: p.stat().st_mtime)
    publish(run, f"{minutes:.1f} min wall on this machine", study)


if __name__ == "__main__":
    main()
