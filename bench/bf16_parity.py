#!/usr/bin/env python
"""Accuracy parity of bf16 autocast against fp32 on the CPU, from the same seeds, into results/bench/bf16-parity/.

    python bench/bf16_parity.py [--study quickstart|cifar10]...   train both precisions, then write the tables
    python bench/bf16_parity.py --precision bf16                retrain one side only (the fp32 side does not change
                                                                   when only the autocast path does)
    python bench/bf16_parity.py --rebuild                          rewrite the tables from the archived runs

Each study runs one recipe's comparison (the seven mission methods, seeds 0, 1, 2) twice, with precision=fp32
and precision=bf16; the two students of a method and seed start from the same weights and see the same
batches, so their difference is paired. The table gives per method the last-epoch test top-1 of each, the
mean difference bf16 - fp32 with its 95 % t interval. The runs'
recipes and per-epoch metrics are archived beside the table (results/bench/bf16-parity/<study>/<precision>/).
CIFAR-10 needs the JPEG copy unpacked by bench/cifar10.py (it does that here too).
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
OUT = ROOT / "results" / "bench" / "bf16-parity"
STUDIES = {
    "quickstart": ("recipes/quickstart.yaml", []),
    # a CIFAR-10 subset of the CPU recipe: 500 images per class, 5 epochs (the teacher is the committed one)
    "cifar10": ("recipes/cifar10/students.yaml", ["subset_per_class=500", "epochs=5"]),
}
PRECISIONS = ("fp32", "bf16")


def run_study(study: str, work: Path, precisions=PRECISIONS) -> None:
    from kd.engine.rundir import RunDir

    recipe, extra = STUDIES[study]
    if study == "cifar10":
        import cifar10

        cifar10.unpack(Path(cifar10.ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    for precision in precisions:
        output = work / f"{study}-{precision}"
        shutil.rmtree(output, ignore_errors=True)  # a fresh comparison, not the resumption of an older one
        command = ["compare", recipe, "methods=[mission]", "seeds=[0, 1, 2]", f"precision={precision}", *extra,
                   f"output_dir={output}"]
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run_kd.py"), *command], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        (run,) = list(output.iterdir())
        shutil.rmtree(OUT / study / precision, ignore_errors=True)
        archived = RunDir(run).archive(OUT / study / precision)
        (archived.path / "command.txt").write_text(
            "python run_kd.py " + " ".join(c if "[" not in c else f"'{c}'" for c in command[:-1]) +
            f"  (output_dir={output}; {time.perf_counter() - start:.0f} s wall)\n")


def write_tables() -> str:
    from kd.report.tables import load_metrics, setting_markdown, setting_table

    parts = ["# bf16 autocast against fp32 on the CPU: accuracy parity", "",
             "Made by `python bench/bf16_parity.py` (rebuilt from the archived runs by `python bench/bf16_parity.py "
             "--rebuild`). The same recipe, methods and seeds trained in fp32 and in bf16 autocast; Δ = bf16 - fp32 "
             "in last-epoch test top-1, paired by method and seed, mean and 95 % t interval over the 3 seeds "
             "(t(0.975, 2) = 4.303). An interval that includes 0 is a tie. Speed is measured apart, by "
             "`run_kd.py bench` (results/bench/). Each run's recipe, command (with the commit it ran at) and per-epoch "
             "metrics.csv are in the folder beside this file. Under autocast the model head (pooling and the "
             "classifier) runs in fp32 (kd/models/features.py), so that the logits that feed temperature softmaxes "
             "are not rounded to bf16."]
    for study in STUDIES:
        if not (OUT / study / "fp32").is_dir():
            continue
        frames = {p: load_metrics([OUT / study / p]) for p in PRECISIONS}
        table = setting_table(frames["fp32"], frames["bf16"], "fp32", "bf16")
        table.to_csv(OUT / f"{study}.csv", index=False)
        command = (OUT / study / "bf16" / "command.txt").read_text().split("  (")[0]
        ties = int((table["excludes_zero"] == False).sum())  # noqa: E712  (a column of booleans)
        parts += ["", f"## {study}", "", f"`{command}` and the same with precision=fp32.", "",
                  setting_markdown(table, "fp32", "bf16"), "",
                  f"{ties} of {len(table)} methods tie (their interval includes 0)."]
    text = "\n".join(parts) + "\n"
    (OUT.parent / "bf16-parity.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", action="append", choices=list(STUDIES), help="default: all")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="train only this precision (default: both); the other's archived runs are kept")
    parser.add_argument("--rebuild", action="store_true", help="only rewrite the tables from the archived runs")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bf16-parity"), help="where the full runs go")
    args = parser.parse_args()
    if not args.rebuild:
        sys.path.insert(0, str(ROOT / "bench"))
        for study in args.study or list(STUDIES):
            run_study(study, Path(args.work), args.precision or PRECISIONS)
    print(write_tables())


if __name__ == "__main__":
    main()
