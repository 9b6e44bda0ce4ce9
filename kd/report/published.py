"""Published CIFAR-100 benchmark numbers, kept apart from ours and always labelled as published.

results/published_cifar100.csv holds top-1 (%) per pair and method as published by the CRD benchmark's
README (teacher, vanilla student, KD, FitNet, AT, SP, CC, VID, RKD, PKT, AB, FT, FSP, NST, CRD; 240 epochs,
last epoch) and the DKD README (DKD; best epoch, mean of several runs), with the source of every number. `run_kd.py report --published` puts a
user's own runs of our CIFAR-100 recipes beside them, pair by pair.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kd import home

PUBLISHED = home.find("results/published_cifar100.csv")
# The column order of the benchmark's own table (CRD's README, then DKD), which readers compare with. It orders
# columns only: a method the CSV holds beyond these (a newer published row) follows them, never dropped.
BENCHMARK_ORDER = ["teacher", "vanilla", "kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp",
                   "nst", "crd", "dkd"]


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    return pd.read_csv(path)


def published_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per pair, one column per method (published top-1)."""
    wide = frame.pivot_table(index="pair", columns="method", values="top1", aggfunc="first", sort=False)
    order = [m for m in BENCHMARK_ORDER if m in wide.columns] + [m for m in wide.columns if m not in BENCHMARK_ORDER]
    return wide[order].reset_index()


def published_markdown(frame: pd.DataFrame, command: str) -> str:
    wide = published_wide(frame)
    header = "| pair | " + " | ".join(wide.columns[1:]) + " |"
    rule = "|---|" + "---:|" * (len(wide.columns) - 1)
    body = ["| " + " | ".join([row[0]] + ["-" if pd.isna(v) else f"{v:.2f}" for v in row[1:]]) + " |"
            for row in wide.itertuples(index=False)]
    sources = "\n".join(f"- {method}: {src}" for method, src in
                        frame.groupby("method", sort=False)["source"].first().items())
    return (f"# Published CIFAR-100 results (not ours)\n\nMade by `{command}` from the benchmark's published numbers. "
            "Top-1 (%) on CIFAR-100 as published: teacher, vanilla student, KD, FitNet, AT, SP, CC, VID, RKD, PKT, "
            "AB, FT, FSP, NST and CRD from the CRD benchmark README (240 epochs, last epoch); DKD from the DKD README (best epoch, mean of several runs). "
            "'-': not published for that pair. To set your own runs of recipes/cifar100/ beside them: "
            "`python run_kd.py report RUN_DIR --published`.\n\n"
            + "\n".join([header, rule, *body]) + f"\n\nSources:\n{sources}\n")


def beside_published(table: pd.DataFrame, teacher: str, student: str) -> pd.DataFrame | None:
    """Our per-method table with the published number of the same pair beside each method, or None."""
    if not PUBLISHED.is_file():
        return None
    frame = load_published()
    rows = frame[(frame["teacher"] == teacher) & (frame["student"] == student)]
    if rows.empty:
        return None
    published = dict(zip(rows["method"], rows["top1"]))
    out = pd.DataFrame({"method": table["method"],
                        "ours: last top-1": [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["last_top1_mean"], table["last_top1_std"])],
                        "published top-1": [published.get(m, float("nan")) for m in table["method"]]})
    teacher_row = {"method": "teacher", "ours: last top-1": f"{table['teacher_top1'].iloc[0]:.2f}",
                   "published top-1": published.get("teacher", float("nan"))}
    extra = [{"method": m, "ours: last top-1": "-", "published top-1": v} for m, v in published.items()
             if m not in set(table["method"]) | {"teacher"}]
    return pd.concat([pd.DataFrame([teacher_row]), out, pd.DataFrame(extra)], ignore_index=True)


def published_teacher_top1(teacher: str) -> float | None:
    """The published CIFAR-100 top-1 (%) of a teacher architecture, or None (read at call time: kd.home may move)."""
    path = home.find("results/published_cifar100.csv")
    if not path.is_file():
        return None
    frame = load_published(path)
    rows = frame[(frame["method"] == "teacher") & (frame["teacher"] == teacher)]
    return float(rows["top1"].iloc[0]) if len(rows) else None
