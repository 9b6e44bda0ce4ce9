#!/usr/bin/env python
"""CIFAR-100 at the benchmark's own protocol on the CPU (recipes/cifar100-protocol/students.yaml), kept going over
many sittings: resnet56 (the published teacher) -> resnet20, vanilla, kd, dkd, ccm and ccm_kd, 240 epochs.

    nice -n 10 python bench/cifar100_protocol.py     the teacher (from ../shared when missing), then the run: started,
                                                     or resumed from results/cifar100-protocol/runs/ where one is in
                                                     progress; each epoch that all students finish is logged
    python bench/cifar100_protocol.py --status       how far it got and when it will finish at the measured pace:
                                                     results/cifar100-protocol/progress.md (no training)
    python bench/cifar100_protocol.py --commit       commit the run's resumable state and progress.md to git (while
                                                     the run trains, right after the next epoch all students finish)
    python bench/cifar100_protocol.py --measure      time the steps of the five methods the study may train and one
                                                     evaluation, and project 240 epochs for each subset that drops
                                                     dkd first: results/cifar100-protocol/sizing.md

The run directory lives in results/cifar100-protocol/runs/ and is committed at every stop with what resuming needs
(each student's last.pt, metrics.csv, the resolved recipe; .gitignore there leaves out the rest), so that this
script resumes it exactly on whatever machine work continues. progress.csv logs when each epoch finished and on what
machine: the wall time of an epoch is read from two epochs logged in the same sitting only.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = "recipes/cifar100-protocol/students.yaml"
OUT = ROOT / "results" / "cifar100-protocol"
RUNS = OUT / "runs"
PROGRESS = OUT / "progress.csv"
PAIR = "resnet56-resnet20"
PUBLISHED_TEACHER = ROOT.parent / "shared" / "teachers" / "cifar100_resnet56-f2eff4c8.pt"
DATA = "../shared/data/cifar100-png.tar.gz"
POLL_S = 20
FIELDS = ["epoch", "finished_utc", "sitting", "machine"]


def teacher() -> None:
    """The pair's checkpoint must be the published file the recipe names (chenyaofo's resnet56, told by its
    sha256); when it is missing it is taken from ../shared with `teacher --download --from`."""
    from kd.data.archive import sha256
    from kd.pairs import get_pair
    from run_cli import kd

    pair = get_pair(PAIR)
    (name, expected), = pair.teacher_sha256.items()
    if not pair.checkpoint_path.is_file():
        kd("teacher", PAIR, "--download", "--from", str(PUBLISHED_TEACHER), f"data_root={DATA}")
    digest = sha256(pair.checkpoint_path)
    if digest != expected:
        sys.exit(f"error: {pair.checkpoint_path} is another resnet56 (sha256 {digest[:16]}...), not the published "
                 f"{name} this study uses; move it aside and run this script again")


def current_run() -> Path | None:
    from kd.recipe import load_recipe

    runs = sorted(RUNS.glob(f"{load_recipe(RECIPE).name}-*")) if RUNS.is_dir() else []
    return runs[-1] if runs else None


def epochs_done(run: Path) -> dict[str, int]:
    """Epochs each student has checkpointed (its metrics rows: a row is written with the epoch's checkpoint)."""
    from kd.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    done = {}
    for method in recipe.methods:
        metrics = run / f"{method}-s0" / "metrics.csv"
        done[method] = max(0, sum(1 for _ in open(metrics)) - 1) if metrics.is_file() else 0
    return done


def logged() -> list[dict]:
    if not PROGRESS.is_file():
        return []
    with open(PROGRESS, newline="") as f:
        return list(csv.DictReader(f))


def log_epoch(epoch: int, sitting: str, when: str | None = None) -> None:
    new = not PROGRESS.is_file()
    with open(PROGRESS, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        writer.writerow({"epoch": epoch, "finished_utc": now if when is None else when,
                         "sitting": sitting, "machine": machine()})


def machine() -> str:
    import torch

    from kd.engine.device import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def train() -> int:
    """Start or resume the run in a child process and log every epoch all students finish, until it ends."""
    teacher()
    run = current_run()
    command = [sys.executable, str(ROOT / "run_kd.py")]
    command += ["--resume", os.path.relpath(run, ROOT)] if run is not None else [RECIPE]
    print(" ".join(["python", *command[1:]]), flush=True)
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())  # checkpoints are written whole: stopping is safe
    sitting = time.strftime("%Y%m%d-%H%M%S")
    last = max((int(row["epoch"]) for row in logged()), default=0)
    for e in range(last + 1, min(epochs_done(run).values()) + 1 if run is not None else 0):
        log_epoch(e, "-", when="")  # finished while nothing watched: when is not known
    last = max(last, min(epochs_done(run).values()) if run is not None else 0)
    try:
        while child.poll() is None:
            time.sleep(POLL_S)
            run = run or current_run()
            if run is not None:
                epoch = min(epochs_done(run).values())
                for e in range(last + 1, epoch + 1):
                    log_epoch(e, sitting)
                last = max(last, epoch)
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
    return child.wait()


def status() -> str:
    """progress.md: epochs done per student, the wall time of an epoch (median of the intervals between epochs
    logged in one sitting), the projected remaining time, and each student's latest test top-1."""
    import pandas as pd

    from kd.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    run = current_run()
    if run is None:
        return "no run yet: start it with `nice -n 10 python bench/cifar100_protocol.py`"
    done = epochs_done(run)
    rows = logged()
    intervals = []
    for a, b in zip(rows, rows[1:]):
        if a["sitting"] == b["sitting"] != "-" and int(b["epoch"]) == int(a["epoch"]) + 1:
            seconds = (pd.Timestamp(b["finished_utc"]) - pd.Timestamp(a["finished_utc"])).total_seconds()
            intervals.append((seconds, b["machine"]))
    recent = [s for s, _ in intervals[-20:]]
    epoch_min = statistics.median(recent) / 60 if recent else None
    left = recipe.epochs - min(done.values())
    lines = ["# CIFAR-100 protocol run: progress", "",
             f"Made by `python bench/cifar100_protocol.py --status` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             f" from {os.path.relpath(run, OUT)} and progress.csv.", "",
             f"- epochs done: {min(done.values())} of {recipe.epochs} by every student "
             f"({', '.join(f'{m} {e}' for m, e in done.items())})"]
    if epoch_min is not None:
        lines += [f"- wall time of an epoch (all {len(done)} students over one teacher pass, with their evaluation): "
                  f"median {epoch_min:.2f} min over the last {len(recent)} epochs measured in one sitting "
                  f"(on {intervals[-1][1]})",
                  f"- projected: the whole run {recipe.epochs * epoch_min / 60:.1f} h of this machine; "
                  f"{left * epoch_min / 60:.1f} h of running left"]
    else:
        lines.append("- wall time of an epoch: not measured yet (two epochs of one sitting are needed)")
    latest = []
    for method in done:
        metrics = run / f"{method}-s0" / "metrics.csv"
        if metrics.is_file() and done[method]:
            row = pd.read_csv(metrics).iloc[-1]
            latest.append(f"{method} {row['test_top1']:.2f} (epoch {int(row['epoch'])})")
    if latest:
        lines.append(f"- latest test top-1: {', '.join(latest)}")
    text = "\n".join(lines) + "\n"
    (OUT / "progress.md").write_text(text)
    return text


def running(run: Path) -> bool:
    """Whether a process trains in the run directory now (it holds the run's lock)."""
    from kd.engine.rundir import RunDir

    return RunDir(run).in_use() is not None


def commit_state(wait_s: float = 3600) -> str:
    """git-commit results/cifar100-protocol (the resumable state, progress.csv and progress.md), and nothing else.
    While the run trains, wait first for the next epoch that every student finishes, so that all students are
    committed at the same epoch."""
    from kd.recipe import load_recipe

    run = current_run()
    if run is None:
        sys.exit("error: no run to commit; start it with `nice -n 10 python bench/cifar100_protocol.py`")
    if running(run):
        seen, start = len(logged()), time.monotonic()
        print("waiting for the next epoch that every student finishes ...", flush=True)
        while len(logged()) == seen:
            if time.monotonic() - start > wait_s:
                sys.exit(f"error: no epoch finished in {wait_s / 60:.0f} min; is the run stuck? nothing committed")
            time.sleep(5)
        time.sleep(5)  # the epoch's last files are written before the log line; leave them a moment
    text = status()
    done = min(epochs_done(run).values())
    left = next((line for line in text.splitlines() if "of running left" in line), "")
    message = f"CIFAR-100 protocol run: state at epoch {done} of {load_recipe(RECIPE).epochs}" + (
        f" ({left.split('; ')[-1].strip()})" if left else "")
    subprocess.run(["git", "add", "--", str(OUT)], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", str(OUT)], cwd=ROOT, check=True)
    return message


CANDIDATES = ["vanilla", "kd", "dkd", "ccm", "ccm_kd"]  # what the study trains at most; dkd goes first, then ccm_kd
LIMIT_H = 14  # the longest projection the study may have on this CPU


def measure(steps: int = 5, rounds: int = 3) -> str:
    """sizing.md: the measured step of each candidate method (its own teacher pass included) and of all of them over
    one teacher pass, one student's evaluation on the test set, and 240 epochs projected for each subset."""
    from kd.data import load_data
    from kd.engine.device import resolve_hardware
    from kd.engine.evaluation import evaluate
    from kd.models import create_model
    from kd.recipe import load_recipe, method_class
    from kd.throughput import bench_pair

    teacher()
    recipe = load_recipe(RECIPE, [f"methods=[{', '.join(CANDIDATES)}]"])
    result = bench_pair(recipe, steps=steps, rounds=rounds)
    ms = {row["step"]: row["ms_per_step"] for row in result["rows"]}
    hw = resolve_hardware(recipe.device, recipe.precision, recipe.channels_last)
    data = load_data(recipe.dataset, recipe.data_options(), recipe.data_root)
    student = create_model(recipe.student, data.num_classes).to(hw.device, memory_format=hw.memory_format)
    test = data.loader("test", recipe.eval_batch_size, hw.device, channels_last=hw.channels_last)
    evaluate(student, test, hw)  # warm-up
    start = time.perf_counter()
    evaluate(student, test, hw)
    eval_s = time.perf_counter() - start
    batches = -(-len(data.train) // recipe.batch_size)

    def shared_ms(methods):  # one teacher pass, then each method's step without its own pass
        return ms["teacher_forward"] + sum(ms[m] - ms["teacher_forward"] * method_class(m).needs_teacher
                                           for m in methods)

    subsets = [CANDIDATES, [m for m in CANDIDATES if m != "dkd"],
               [m for m in CANDIDATES if m not in ("dkd", "ccm_kd")]]
    lines = ["# Sizing the CIFAR-100 protocol run", "",
             f"Made by `python bench/cifar100_protocol.py --measure` on {time.strftime('%Y-%m-%d')}: "
             f"{result['machine']}; batch {recipe.batch_size}, the teacher's passes {result['teacher_passes']}. "
             f"Median of {rounds} rounds of {steps} steps on a random batch (kd.throughput.bench_pair); an epoch is "
             f"{batches} steps plus each student's evaluation on the {len(data.test):,} test images.", "",
             f"- teacher pass: {ms['teacher_forward']:.1f} ms; each method's step with its own pass: "
             + ", ".join(f"{m} {ms[m]:.1f} ms" for m in CANDIDATES),
             f"- all five over one teacher pass, measured: {ms['shared_all']:.1f} ms (sum of the parts: "
             f"{shared_ms(CANDIDATES):.1f} ms)",
             f"- one student's evaluation on the test set: {eval_s:.1f} s", "",
             "| students | step (ms) | epoch (min) | 240 epochs (h) |", "|---|---:|---:|---:|"]
    for methods in subsets:
        epoch_s = batches * shared_ms(methods) / 1000 + len(methods) * eval_s
        lines.append(f"| {', '.join(methods)} | {shared_ms(methods):.1f} | {epoch_s / 60:.2f} | "
                     f"{recipe.epochs * epoch_s / 3600:.1f} |")
    chosen = load_recipe(RECIPE).methods
    lines += ["", f"The rule, from the issue that asked for the study: while the projection exceeds about {LIMIT_H} h "
              f"of this CPU, students are dropped, dkd before anything else, then ccm_kd (CCM with KD: the "
              f"reproduction needs vanilla and kd, the question of where CCM stands needs ccm). The study trains "
              f"{', '.join(chosen)} (recipes/cifar100-protocol/students.yaml); its real pace, evaluation and "
              f"augmentation included, is in progress.md."]
    text = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sizing.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="write progress.md and print it (no training)")
    mode.add_argument("--measure", action="store_true", help="write sizing.md and print it (no training)")
    mode.add_argument("--commit", action="store_true", help="commit the run's resumable state (after the next epoch "
                                                            "when it is training)")
    args = parser.parse_args()
    if args.status:
        print(status())
        return
    if args.measure:
        print(measure())
        return
    if args.commit:
        print(commit_state())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    code = train()
    print(status())
    sys.exit(code)


if __name__ == "__main__":
    main()
