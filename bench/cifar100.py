#!/usr/bin/env python
"""The CIFAR-100 comparison on 2 CPU cores, from the JPEG archive to results/cifar100/.

    python bench/cifar100.py --measure    time the first steps of an epoch of the teacher and of the student group,
                                          project the whole run for several sizes: results/cifar100/sizing.md
    python bench/cifar100.py              the teacher (when its checkpoint is missing), then every method x 3
                                          seeds (recipes/cifar100-cpu/students.yaml): results/cifar100/
    python bench/cifar100.py --teacher    only the teacher (recipes/cifar100-cpu/teacher.yaml), when its checkpoint is missing
    python bench/cifar100.py --ablation   CCM's CAM options on the same setting, chosen on validation:
                                          results/ablations/cifar100/
    python bench/cifar100.py --sweep      CCM's (and CCM+KD's) cam_weight above the ablation's grid, chosen on
                                          validation: results/ablations/cifar100-sweep/
    python bench/cifar100.py --shard I/N  one slice of that comparison (seed I of 3 with N = 3), archived beside the
                                          others; the table is written once all N are (a comparison over sittings);
                                          with --ablation, one slice of the ablation
    python bench/cifar100.py --rebuild    rewrite the tables from the archived runs (no training)

The data is ../shared/data/cifar100-jpeg.tar.gz (unpacked and decoded once into ~/.cache/kd/data by kd itself).
The teacher (recipes/cifar100-cpu/teacher.yaml) is committed with its sha256 once trained, so the comparison
reruns without it. Each run's recipe, command and per-epoch metrics are archived beside its table.
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
PAIR = "cifar100-cpu-resnet56-resnet20"
STUDENTS = "recipes/cifar100-cpu/students.yaml"
ABLATION = "recipes/cifar100-cpu/ablation.yaml"
TEACHER = "recipes/cifar100-cpu/teacher.yaml"
OUT = ROOT / "results" / "cifar100"
ABLATION_OUT = ROOT / "results" / "ablations" / "cifar100"
SWEEP = "recipes/cifar100-cpu/sweep.yaml"
SWEEP_OUT = ROOT / "results" / "ablations" / "cifar100-sweep"


def newest(folder: Path, prefix: str) -> Path:
    return max(folder.glob(f"{prefix}-*"), key=lambda p: p.stat().st_mtime)


def archive(run: Path, destination: Path, command: str, seconds: float) -> None:
    from kd.engine.rundir import RunDir

    shutil.rmtree(destination, ignore_errors=True)
    RunDir(run).archive(destination)
    (destination / "command.txt").write_text(f"{command}\n# {seconds / 60:.1f} min wall on this machine\n")


def train_minutes(run: Path) -> float:
    import pandas as pd

    return sum(pd.read_csv(f)["seconds"].sum() for f in run.glob("*/metrics.csv")) / 60


def teacher() -> None:
    from kd.data.archive import sha256
    from kd.pairs import get_pair

    pair = get_pair(PAIR)
    if pair.checkpoint_path.is_file():
        return
    seconds = kd("teacher", PAIR)
    run = newest(ROOT / "runs", "cifar100-cpu-teacher-resnet56")
    archive(run, OUT / "teacher-run", f"python run_kd.py teacher {PAIR}", seconds)
    pair.checkpoint_path.with_name(pair.checkpoint_path.name + ".sha256").write_text(
        f"{sha256(pair.checkpoint_path)}  {pair.checkpoint_path.name}\n")


def comparison(recipe: str, out: Path, prefix: str) -> Path:
    work = ROOT / "runs" / out.name
    command = f"python run_kd.py compare {recipe} output_dir={os.path.relpath(work, ROOT)}"
    seconds = kd("compare", recipe, f"output_dir={os.path.relpath(work, ROOT)}")
    run = newest(work, prefix)
    archive(run, out / "runs" / run.name, command, seconds)
    for name in ("table.md", "table.csv", "curves.png", "cams.png"):
        if (run / "report" / name).exists():
            shutil.copy(run / "report" / name, out / name)
    return run


def shard(spec: str, recipe: str, out: Path, finish) -> None:
    """One slice of a comparison (`compare --shard I/N`: seed I of 3 when N is 3), archived beside the others in
    out/runs; `finish(archived runs, this run)` writes the table once every shard of N is archived. Lets a
    comparison be run over several sittings."""
    from kd.recipe import load_recipe, shard_numbers

    index, count = shard_numbers(spec, "--shard")
    name = load_recipe(recipe).name
    work = ROOT / "runs" / out.name
    output = f"output_dir={os.path.relpath(work, ROOT)}"
    seconds = kd("compare", recipe, "--shard", spec, output)
    run = newest(work, f"{name}-shard{index}of{count}")
    for old in (out / "runs").glob(f"{name}-shard{index}of{count}-*"):
        shutil.rmtree(old)  # an earlier run of the same shard
    archive(run, out / "runs" / run.name, f"python run_kd.py compare {recipe} --shard {spec} {output}", seconds)
    done = sorted((out / "runs").glob(f"{name}-shard*of{count}-*"))
    print(f"shard {index}/{count} archived in {out / 'runs' / run.name}; {len(done)} of {count} shards done")
    if len(done) == count:
        finish(done, run)


def finish_comparison(runs: list[Path], last: Path) -> None:
    from kd.report.write import write_report

    write_report(runs, OUT, "python bench/cifar100.py --rebuild", pictures=False)
    write_ccm_table(runs)
    if (last / "report" / "cams.png").exists():  # the archives keep no checkpoints: the pictures of the last shard
        shutil.copy(last / "report" / "cams.png", OUT / "cams.png")


def write_ccm_table(runs: list[Path]) -> str:
    """Every method against CCM, paired by seed (the comparison table has them against vanilla and KD only):
    ccm-vs-every-method.md and .csv, which a test rebuilds from the archived runs."""
    from kd.report.tables import against_markdown, against_table, load_metrics

    table = against_table(load_metrics(runs), "ccm")
    table.to_csv(OUT / "ccm-vs-every-method.csv", index=False)
    text = "\n".join([
        "# Every method against CCM on CIFAR-100 (CPU setting)", "",
        "Made by `python bench/cifar100.py --rebuild` from the archived runs in runs/. Δ = the method's last-epoch "
        "top-1 minus ccm's, paired by seed, mean and 95 % t interval over 3 seeds (2 degrees of freedom); "
        "'yes, higher' = the method is above ccm, 'yes, lower' = below it, 'no (tie)' = the interval includes 0. "
        "The test column reports; the validation column is the split a choice would read.", "",
        against_markdown(table, "ccm")])
    (OUT / "ccm-vs-every-method.md").write_text(text + "\n")
    return text


def write_ablation_table() -> str:
    from kd.report.tables import load_metrics, selection_markdown, selection_table

    runs = sorted((ABLATION_OUT / "runs").iterdir())
    table = selection_table(load_metrics(runs), "ccm")
    table.to_csv(ABLATION_OUT / "selection.csv", index=False)
    better = above_default(table)
    verdict = ("no variant beats the default on validation (every interval that excludes 0 is below it, or "
               "includes 0): the default stays" if better.empty else
               f"on validation, {', '.join(better['method'])} beat(s) the default with an interval above 0")
    text = "\n".join([
        "# CCM's CAM options on CIFAR-100 (CPU setting), chosen on validation", "",
        f"Made by `python bench/cifar100.py --ablation` (table rebuilt from the archived runs in runs/ by "
        f"`python bench/cifar100.py --rebuild`). Recipe: {ABLATION}. Δ val = the variant's last-epoch validation "
        "top-1 minus the default ccm's (l2, weight 10, teacher's CAM of the true class), paired by seed, mean and "
        "95 % t interval over 3 seeds. The rule, fixed before looking: a default changes only for a variant whose "
        "interval lies above 0; test accuracy is shown and never used to choose.", "",
        selection_markdown(table, "ccm"), "", f"Verdict: {verdict}."])
    (ABLATION_OUT / "selection.md").write_text(text + "\n")
    return text


def above_default(table):
    """The rows of a selection table whose validation interval against the reference lies above 0."""
    return table[(table["val_excludes_zero"] == True) & (table["val_diff_mean"] > 0)]  # noqa: E712


def chosen(table) -> str | None:
    """The sweep's rule: the variant with the highest mean validation top-1 among those whose interval against
    the default lies above 0, or None (the default stays)."""
    better = above_default(table)
    return None if better.empty else str(better.loc[better["val_top1_mean"].idxmax(), "method"])


def write_sweep_tables() -> str:
    """Per method of the sweep (ccm, ccm_kd): its variants against its default, then, when one is chosen, every
    variant against the chosen one (so that how far ahead it is can be read). Each table also goes to a csv,
    selection-<method>-vs-<reference>.csv, which a test rebuilds from the archived runs."""
    from kd.report.tables import load_metrics, selection_markdown, selection_table

    metrics = load_metrics(sorted((SWEEP_OUT / "runs").iterdir()))
    for old in SWEEP_OUT.glob("selection-*.csv"):
        old.unlink()
    lines = ["# CCM's cam_weight above the ablation's grid, on CIFAR-100 (CPU setting), chosen on validation", "",
             f"Made by `python bench/cifar100.py --sweep` (tables rebuilt from the archived runs in runs/ by "
             f"`python bench/cifar100.py --rebuild`). Recipe: {SWEEP}. Δ val = last-epoch validation top-1 minus "
             "the reference's, paired by seed, mean and 95 % t interval over 3 seeds. The rule, fixed before "
             "running (and written in the recipe): a method's new default is the variant with the highest mean "
             "validation top-1 among those whose interval against the current default lies above 0; if none "
             "does, the default stays. Test accuracy is shown and never used to choose."]
    for method in dict.fromkeys(m.split("@")[0] for m in metrics["method"]):
        family = metrics[metrics["method"].str.split("@").str[0] == method]
        table = selection_table(family, method)
        table.to_csv(SWEEP_OUT / f"selection-{method}-vs-{method}.csv", index=False)
        pick = chosen(table)
        lines += ["", f"## {method}: each variant against the default (cam_weight 10)", "",
                  selection_markdown(table, method), "",
                  f"Verdict: {'the default stays' if pick is None else pick + ' is chosen'}."]
        if pick is not None:
            against = selection_table(family, pick)
            against.to_csv(SWEEP_OUT / f"selection-{method}-vs-{pick}.csv", index=False)
            lines += ["", f"### {method}: each variant against the chosen {pick}", "",
                      selection_markdown(against, pick)]
    text = "\n".join(lines)
    (SWEEP_OUT / "selection.md").write_text(text + "\n")
    return text


def measure() -> str:
    """Time the first steps of an epoch: the teacher training alone, and all students of a seed side by side."""
    import statistics

    import torch

    from kd.data import load_data
    from kd.engine.device import resolve_hardware
    from kd.engine.evaluation import evaluate
    from kd.engine.rundir import RunDir
    from kd.engine.trainer import teacher_pass, train_step
    from kd.models import create_model
    from kd.recipe import load_recipe
    from kd.run import build_trainee

    recipe = load_recipe(STUDENTS)
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last)
    data = load_data(recipe.dataset, recipe.data_options(), recipe.data_root, False, recipe.subset_per_class,
                     recipe.val_split)
    teacher = create_model(recipe.teacher, data.num_classes).to(hw.device, memory_format=hw.memory_format).eval()
    loader = data.loader("train", recipe.batch_size, hw.device, 0, channels_last=hw.channels_last)
    batches = [b for _, b in zip(range(12), loader)]
    scratch = ROOT / "runs" / "measure"

    def timed(fn, n):
        times = []
        for images, targets, index in batches[2:2 + n]:
            start = time.perf_counter()
            fn(images, targets, index)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for images, targets, index in batches[:2]:  # warm-up
        teacher_pass(teacher, images, hw)
    alone = build_trainee(load_recipe(TEACHER), "vanilla", 0, None, data.spec, hw, RunDir(scratch))  # the teacher
    teacher_step = timed(lambda x, y, i: train_step(alone, hw, x, y, None, 0, i), 6)
    trainees = [build_trainee(recipe, m, 0, teacher, data.spec, hw, RunDir(scratch)) for m in recipe.methods]

    def group(x, y, i):
        t_out = teacher_pass(teacher, x, hw)
        for m in trainees:
            train_step(m, hw, x, y, t_out if m.needs_teacher else None, 100, i)

    group(*batches[0])
    group_step = timed(group, 4)
    start = time.perf_counter()
    student = trainees[0].student
    for split in ("val", "test"):
        evaluate(student, data.loader(split, recipe.eval_batch_size, hw.device, channels_last=hw.channels_last), hw)
    eval_s = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    per_class_train = (len(data.train) + 0) // data.num_classes
    lines = ["# Sizing the CIFAR-100 CPU comparison", "",
             f"Made by `python bench/cifar100.py --measure` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, {hw.describe()}. Median over the first steps of an epoch (batch "
             f"{recipe.batch_size}), after two warm-up steps:", "",
             f"- teacher ({recipe.teacher}) training step: {1000 * teacher_step:.0f} ms",
             f"- one step of all {len(trainees)} students of a seed, sharing one teacher pass: {1000 * group_step:.0f} ms",
             f"- evaluating one student on the validation ({len(data.val)}) and test ({len(data.test)}) images: "
             f"{eval_s:.1f} s", "",
             "Projected (training steps plus per-epoch evaluation of every student; the teacher on the 45,000-image "
             "training split with its own evaluation):", "",
             "| images per class | epochs | teacher 15 epochs (min) | students, 3 seeds (min) | total (min) |",
             "|---:|---:|---:|---:|---:|"]
    teacher_min = 15 * (45000 / recipe.batch_size * teacher_step + eval_s) / 60
    for per_class in (50, 100, 150):
        for epochs in (5, 8, 10):
            steps = per_class * data.num_classes // recipe.batch_size
            students = 3 * epochs * (steps * group_step + len(trainees) * eval_s) / 60
            lines.append(f"| {per_class} | {epochs} | {teacher_min:.0f} | {students:.0f} | {teacher_min + students:.0f} |")
    lines += ["", f"(students.yaml when this was measured: {per_class_train} images per class, "
              f"{recipe.epochs} epochs; the size chosen is whatever students.yaml says now)"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sizing.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--measure", action="store_true")
    mode.add_argument("--teacher", action="store_true")
    mode.add_argument("--ablation", action="store_true")
    mode.add_argument("--sweep", action="store_true")
    mode.add_argument("--rebuild", action="store_true")
    parser.add_argument("--shard", metavar="I/N", help="train and archive one slice of the comparison, or with "
                                                       "--ablation of the ablation (seed I when N is 3); the table is "
                                                       "written when all N are archived")
    args = parser.parse_args()
    if args.measure:
        print(measure())
        return
    if args.rebuild:
        from kd.report.write import write_report

        for out in (OUT, ABLATION_OUT, SWEEP_OUT):
            if (out / "runs").is_dir():
                write_report(sorted((out / "runs").iterdir()), out, "python bench/cifar100.py --rebuild",
                             pictures=False)
        if (OUT / "runs").is_dir():
            print(write_ccm_table(sorted((OUT / "runs").iterdir())))
        if (ABLATION_OUT / "runs").is_dir():
            print(write_ablation_table())
        if (SWEEP_OUT / "runs").is_dir():
            print(write_sweep_tables())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher()
    if args.teacher:
        return
    if args.shard and args.ablation:
        shard(args.shard, ABLATION, ABLATION_OUT, lambda runs, last: print(write_ablation_table()))
        return
    if args.shard:
        shard(args.shard, STUDENTS, OUT, finish_comparison)
        return
    if args.sweep:
        SWEEP_OUT.mkdir(parents=True, exist_ok=True)
        comparison(SWEEP, SWEEP_OUT, "cifar100-cpu-sweep-cam-weight")
        print(write_sweep_tables())
        return
    if args.ablation:
        ABLATION_OUT.mkdir(parents=True, exist_ok=True)
        comparison(ABLATION, ABLATION_OUT, "cifar100-cpu-ablation-cam")
        print(write_ablation_table())
        return
    run = comparison(STUDENTS, OUT, "cifar100-cpu-resnet56-resnet20")
    (OUT / "timing.md").write_text(
        f"# CIFAR-100 CPU comparison timing\n\nMade by `python bench/cifar100.py` on {time.strftime('%Y-%m-%d')}: "
        f"{os.cpu_count()} CPU cores.\n\n- this call, teacher (if trained) and comparison: "
        f"{(time.perf_counter() - start) / 60:.1f} min wall\n- training time summed over the students' epochs "
        f"(evaluation excluded): {train_minutes(run):.1f} min\n")


if __name__ == "__main__":
    main()
