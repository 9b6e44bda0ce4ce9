"""Per-method tables from run directories, built with pandas from the saved metrics alone.

One row per method (label): teacher top-1; student test top-1 at the last and at the best epoch, as
mean and std over seeds; the gain of the last-epoch mean over the vanilla student's; top-5; convergence
(the first epoch at which the seed-mean test top-1 reaches 90 / 95 / 100 % of the vanilla student's final
top-1, and the area under the top-1-vs-epoch curve, as the mean top-1 over epochs); images/s; extra
parameters. Runs of several directories merge into one table.
"""
from __future__ import annotations

import math

import pandas as pd

from kd.engine.rundir import RunDir
from kd.errors import KDError

CONVERGENCE = (90, 95, 100)


def load_metrics(run_dirs) -> pd.DataFrame:
    """Every epoch of every student of the given run directories, one row each."""
    frames = []
    for run in (RunDir.open(path, "report") for path in run_dirs):
        recipe = run.recipe_mapping()
        summary = {(r["method"], int(r["seed"])): r for r in run.summary_rows()}
        for student in run.students():
            frame = pd.read_csv(student.metrics_file)
            if frame.empty:
                continue
            frame.insert(0, "method", student.label)
            frame.insert(1, "seed", student.seed)
            frame.insert(2, "run", str(run))
            frame["student"] = recipe.get("student")
            frame["teacher"] = recipe.get("teacher")
            frame["dataset"] = recipe.get("dataset")
            match = summary.get((student.label, student.seed))
            if match is not None:
                frame["teacher_top1"] = float(match["teacher_top1"]) if match["teacher_top1"] else math.nan
                frame["extra_params"] = int(match["extra_params"])
            frames.append(frame)
    if not frames:
        raise KDError(f"no metrics.csv under {', '.join(map(str, run_dirs))}; nothing to report")
    return pd.concat(frames, ignore_index=True)


def first_epoch_reaching(curve: pd.Series, level: float) -> float:
    hits = curve[curve >= level]
    return float(hits.index[0]) if len(hits) else math.nan


def method_table(metrics: pd.DataFrame, baseline: str = "vanilla") -> pd.DataFrame:
    """One row per method, in the order the methods first appear."""
    last = metrics.loc[metrics.groupby(["run", "method", "seed"])["epoch"].idxmax()]
    best = metrics.groupby(["run", "method", "seed"])["test_top1"].max().reset_index()
    mean_curves = metrics.groupby(["method", "epoch"])["test_top1"].mean()
    reference = last[last["method"] == baseline]["test_top1"].mean() if baseline in set(metrics["method"]) else math.nan
    rows = []
    for method in dict.fromkeys(metrics["method"]):
        own_last = last[last["method"] == method]
        own_best = best[best["method"] == method]["test_top1"]
        curve = mean_curves.loc[method]
        row = {
            "method": method,
            "seeds": len(own_last),
            "teacher_top1": own_last["teacher_top1"].mean() if "teacher_top1" in own_last else math.nan,
            "last_top1_mean": own_last["test_top1"].mean(),
            "last_top1_std": own_last["test_top1"].std(ddof=1) if len(own_last) > 1 else 0.0,
            "best_top1_mean": own_best.mean(),
            "best_top1_std": own_best.std(ddof=1) if len(own_best) > 1 else 0.0,
            "gain_vs_vanilla": own_last["test_top1"].mean() - reference,
            "last_top5_mean": own_last["test_top5"].mean(),
        }
        for pct in CONVERGENCE:
            row[f"epochs_to_{pct}pct"] = first_epoch_reaching(curve, reference * pct / 100)
        row["auc_top1"] = curve.mean()  # area under top-1 vs epoch, per epoch
        row["images_per_s"] = metrics[metrics["method"] == method]["images_per_s"].mean()
        row["extra_params"] = own_last["extra_params"].max() if "extra_params" in own_last else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer() and digits == 0:
        return str(int(value))
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: 'mean ± std' cells, epochs as integers, '-' where a level was never reached."""
    out = pd.DataFrame({"method": table["method"], "seeds": table["seeds"].astype(str)})
    out["teacher"] = table["teacher_top1"].map(_fmt)
    def spread(means, stds, seeds):
        return [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}" for m, s, n in zip(means, stds, seeds)]

    out["last top-1"] = spread(table["last_top1_mean"], table["last_top1_std"], table["seeds"])
    out["best top-1"] = spread(table["best_top1_mean"], table["best_top1_std"], table["seeds"])
    out["gain"] = [f"{g:+.2f}" if not math.isnan(g) else "-" for g in table["gain_vs_vanilla"]]
    out["top-5"] = table["last_top5_mean"].map(_fmt)
    for pct in CONVERGENCE:
        out[f"ep→{pct}%"] = table[f"epochs_to_{pct}pct"].map(lambda v: _fmt(v, 0))
    out["AUC"] = table["auc_top1"].map(_fmt)
    out["img/s"] = table["images_per_s"].map(lambda v: _fmt(v, 0) if math.isnan(v) else f"{v:.0f}")
    out["extra params"] = table["extra_params"].map(lambda v: "-" if math.isnan(v) else f"{int(v):,}")
    for column in [c for c in table.columns if c.startswith("loc_")]:
        out[column[4:]] = table[column].map(_fmt)
    return out


def to_markdown(display: pd.DataFrame) -> str:
    header = "| " + " | ".join(display.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(display.columns))) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join([header, rule, *body])
