"""Per-method tables from run directories, built with pandas from the saved metrics alone.

One row per method (label): teacher top-1; validation top-1 where the runs hold out a validation split;
student test top-1 at the last epoch and at the validation-picked best epoch, as mean and std over seeds;
the paired difference to the vanilla student and to KD over shared seeds with its 95 % interval; top-5; convergence
(the first epoch at which the seed-mean test top-1 reaches 90 / 95 / 100 % of the vanilla student's final
top-1, and the area under the top-1-vs-epoch curve, as the mean top-1 over epochs); images/s; extra
parameters. Runs of several directories merge into one table.
"""
from __future__ import annotations

import math

import pandas as pd

from kd.engine.rundir import RunDir
from kd.errors import KDError
from kd.report.stats import describe_difference, paired_difference

CONVERGENCE = (90, 95, 100)


def load_metrics(run_dirs) -> pd.DataFrame:
    """Every epoch of every student of the given run directories, one row each."""
    from kd.report.merge import check_mergeable

    runs = [RunDir.open(path, "report") for path in run_dirs]
    check_mergeable(runs)
    frames = []
    for run in runs:
        recipe = run.recipe_mapping()
        try:
            summary = {(r["method"], int(r["seed"])): r for r in run.summary_rows()}
        except (KeyError, ValueError, TypeError):
            raise KDError(f"{run.summary_file} is damaged (not the summary kd writes); delete it and resume the run "
                          f"(run_kd.py --resume {run}) to write it again") from None
        for student in run.students():
            frame = read_metrics(student.metrics_file, run)
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


REQUIRED = ("epoch", "train_top1", "test_top1", "test_top5", "images_per_s", "seconds")


def read_metrics(path, run) -> pd.DataFrame:
    """One student's metrics.csv, or one KDError line that says what is wrong with it and how to mend it."""
    mend = f"resume the run (run_kd.py --resume {run}) to rewrite it from the last checkpoint, or remove that student's folder"
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise KDError(f"{path} is empty; {mend}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KDError(f"{path} is not a readable metrics file ({first}); {mend}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise KDError(f"{path} is not a kd metrics file: it has no {', '.join(missing)} column; {mend}")
    if frame.empty:
        return frame  # a header alone: the student finished no epoch yet
    incomplete = frame[list(REQUIRED)].isna().any(axis=1)
    if incomplete.any():
        row = int(incomplete.to_numpy().nonzero()[0][0])
        line = row + 2  # + header, 1-based
        if fields_on_line(path, line) < len(frame.columns):
            raise KDError(f"{path} line {line} is incomplete (the run was stopped while writing it); {mend}")
        column = next(c for c in REQUIRED if pd.isna(frame.at[row, c]))
        raise KDError(f"{path} line {line} has no number in column {column} (empty or NaN; kd never writes that); "
                      f"{mend}")
    for column in REQUIRED:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise KDError(f"{path}: column {column} holds values that are not numbers; {mend}")
    return frame


def fields_on_line(path, line: int) -> int:
    """How many comma-separated fields line `line` (1-based) of a CSV file holds."""
    import csv

    with open(path, newline="") as f:
        for number, fields in enumerate(csv.reader(f), start=1):
            if number == line:
                return len(fields)
    return 0


def first_epoch_reaching(curve: pd.Series, level: float) -> float:
    hits = curve[curve >= level]
    return float(hits.index[0]) if len(hits) else math.nan


def per_seed(last: pd.DataFrame, method: str, column: str = "test_top1") -> dict:
    """{(run, seed): value} of one method's last epochs."""
    own = last[last["method"] == method]
    return {(r, s): v for r, s, v in zip(own["run"], own["seed"], own[column])}


def paired_to(last: pd.DataFrame, method: str, reference: str, column: str = "test_top1") -> dict:
    """The paired difference of `method` minus `reference` in a last-epoch column (test top-1) over shared seeds:
    students of the same run and seed first; then, among the students left unpaired (a seed whose students went
    to different shards), by seed alone where each side has exactly one student of that seed."""
    a, b = per_seed(last, method, column), per_seed(last, reference, column)
    shared = set(a) & set(b)
    pairs_a, pairs_b = {k: a[k] for k in shared}, {k: b[k] for k in shared}
    rest_a, rest_b = by_seed(a, shared), by_seed(b, shared)
    for seed in set(rest_a) & set(rest_b):
        if len(rest_a[seed]) == 1 and len(rest_b[seed]) == 1:  # two runs of one seed would be ambiguous
            pairs_a[("", seed)], pairs_b[("", seed)] = rest_a[seed][0], rest_b[seed][0]
    return paired_difference(pairs_a, pairs_b)


def by_seed(values: dict, paired: set) -> dict:
    """{seed: [values of the students not yet paired]} of a {(run, seed): value} mapping."""
    out: dict = {}
    for (run, seed), value in values.items():
        if (run, seed) not in paired:
            out.setdefault(seed, []).append(value)
    return out


def val_picked(frame: pd.DataFrame) -> pd.Series:
    """Per student, the test top-1 at the epoch of its best validation top-1 (the first such epoch)."""
    picks = frame.loc[frame.groupby(["run", "method", "seed"])["val_top1"].idxmax()]
    return picks.set_index(["run", "method", "seed"])["test_top1"]


def method_table(metrics: pd.DataFrame, baseline: str = "vanilla", second: str = "kd") -> pd.DataFrame:
    """One row per method, in the order the methods first appear.

    Differences to `baseline` (vanilla) and `second` (kd) are paired over shared seeds with a 95 % interval
    (kd.report.stats). Best-epoch figures are picked on the validation split and exist only where the runs
    have one: choosing an epoch by its test accuracy would report a test number that was selected on test."""
    last = metrics.loc[metrics.groupby(["run", "method", "seed"])["epoch"].idxmax()]
    has_val = "val_top1" in metrics and metrics["val_top1"].notna().any()
    best = val_picked(metrics) if has_val else None
    mean_curves = metrics.groupby(["method", "epoch"])["test_top1"].mean()
    methods = list(dict.fromkeys(metrics["method"]))
    reference = last[last["method"] == baseline]["test_top1"].mean() if baseline in methods else math.nan
    rows = []
    for method in methods:
        own_last = last[last["method"] == method]
        curve = mean_curves.loc[method]
        own_best = best.xs(method, level="method") if best is not None else pd.Series(dtype=float)
        row = {
            "method": method,
            "seeds": len(own_last),
            "teacher_top1": own_last["teacher_top1"].mean() if "teacher_top1" in own_last else math.nan,
            "last_val_top1_mean": own_last["val_top1"].mean() if has_val else math.nan,
            "last_top1_mean": own_last["test_top1"].mean(),
            "last_top1_std": own_last["test_top1"].std(ddof=1) if len(own_last) > 1 else 0.0,
            "best_top1_mean": own_best.mean() if len(own_best) else math.nan,
            "best_top1_std": own_best.std(ddof=1) if len(own_best) > 1 else 0.0,
            "gain_vs_vanilla": own_last["test_top1"].mean() - reference,
            "last_top5_mean": own_last["test_top5"].mean(),
        }
        for name, other in (("vanilla", baseline), ("kd", second)):
            d = paired_to(last, method, other) if other in methods and other != method else None
            for key in ("mean", "low", "high", "n"):
                row[f"vs_{name}_{key}"] = d[key] if d else math.nan
            row[f"vs_{name}_excludes_zero"] = d["excludes_zero"] if d else None
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
    """The table as strings: 'mean ± std' cells, paired differences as 'mean [low, high]' with a plain
    column saying whether the interval excludes zero, epochs as integers, '-' where there is nothing."""
    out = pd.DataFrame({"method": table["method"], "seeds": table["seeds"].astype(str)})
    out["teacher"] = table["teacher_top1"].map(_fmt)

    def spread(means, stds, seeds):
        return ["-" if math.isnan(m) else f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
                for m, s, n in zip(means, stds, seeds)]

    if table["last_val_top1_mean"].notna().any():
        out["val top-1"] = table["last_val_top1_mean"].map(_fmt)
    out["last top-1"] = spread(table["last_top1_mean"], table["last_top1_std"], table["seeds"])
    if table["best_top1_mean"].notna().any():
        out["best top-1 (val-picked)"] = spread(table["best_top1_mean"], table["best_top1_std"], table["seeds"])
    for name in ("vanilla", "kd"):
        diffs = [{"n": 0 if math.isnan(n) else int(n), "mean": m, "low": lo, "high": hi, "excludes_zero": ex}
                 for n, m, lo, hi, ex in zip(*(table[f"vs_{name}_{k}"] for k in ("n", "mean", "low", "high", "excludes_zero")))]
        out[f"Δ vs {name} [95% CI]"] = [describe_difference(d) for d in diffs]
        out[f"excludes 0 ({name})"] = [plain_answer(d) for d in diffs]
    out["top-5"] = table["last_top5_mean"].map(_fmt)
    for pct in CONVERGENCE:
        out[f"ep→{pct}%"] = table[f"epochs_to_{pct}pct"].map(lambda v: _fmt(v, 0))
    out["AUC"] = table["auc_top1"].map(_fmt)
    out["img/s"] = table["images_per_s"].map(lambda v: _fmt(v, 0) if math.isnan(v) else f"{v:.0f}")
    out["extra params"] = table["extra_params"].map(lambda v: "-" if math.isnan(v) else f"{int(v):,}")
    for column in [c for c in table.columns if c.startswith("loc_")]:
        out[column[4:]] = table[column].map(_fmt)
    return out


def plain_answer(d: dict) -> str:
    if d["n"] == 0:
        return "-"
    if d["excludes_zero"] is None or (isinstance(d["excludes_zero"], float) and math.isnan(d["excludes_zero"])):
        return "n/a"
    return ("yes, higher" if d["mean"] > 0 else "yes, lower") if d["excludes_zero"] else "no (tie)"


def to_markdown(display: pd.DataFrame) -> str:
    header = "| " + " | ".join(display.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(display.columns))) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def setting_table(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    """The same methods and seeds trained under two settings (say fp32 and bf16): per method, the last-epoch test
    top-1 of each, and the paired difference b - a over shared seeds with its 95 % interval."""
    last_a = a.loc[a.groupby(["method", "seed"])["epoch"].idxmax()]
    last_b = b.loc[b.groupby(["method", "seed"])["epoch"].idxmax()]
    rows = []
    for method in dict.fromkeys(a["method"]):
        top_a = dict(zip(last_a[last_a["method"] == method]["seed"], last_a[last_a["method"] == method]["test_top1"]))
        top_b = dict(zip(last_b[last_b["method"] == method]["seed"], last_b[last_b["method"] == method]["test_top1"]))
        d = paired_difference(top_b, top_a)
        rows.append({"method": method, "seeds": d["n"],
                     f"{name_a}_top1_mean": pd.Series(top_a).mean(), f"{name_a}_top1_std": pd.Series(top_a).std(ddof=1),
                     f"{name_b}_top1_mean": pd.Series(top_b).mean(), f"{name_b}_top1_std": pd.Series(top_b).std(ddof=1),
                     "diff_mean": d["mean"], "diff_low": d["low"], "diff_high": d["high"], "excludes_zero": d["excludes_zero"]})
    return pd.DataFrame(rows)


def setting_markdown(table: pd.DataFrame, name_a: str, name_b: str) -> str:
    display = pd.DataFrame({"method": table["method"], "seeds": table["seeds"].astype(str)})
    for name in (name_a, name_b):
        display[f"{name} top-1"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table[f"{name}_top1_mean"], table[f"{name}_top1_std"])]
    diffs = [{"n": n, "mean": m, "low": lo, "high": hi, "excludes_zero": ex} for n, m, lo, hi, ex in
             zip(table["seeds"], table["diff_mean"], table["diff_low"], table["diff_high"], table["excludes_zero"])]
    display[f"Δ {name_b} - {name_a} [95% CI]"] = [describe_difference(d) for d in diffs]
    display["excludes 0"] = [plain_answer(d) for d in diffs]
    return to_markdown(display)


def selection_table(metrics: pd.DataFrame, reference: str) -> pd.DataFrame:
    """For choosing a setting on validation: per method, last-epoch validation and test top-1 (mean ± std over
    seeds) and the paired validation difference to `reference` (the current default) with its 95 % interval.
    Only the validation columns may choose; test is shown, never used to choose."""
    last = metrics.loc[metrics.groupby(["run", "method", "seed"])["epoch"].idxmax()]
    rows = []
    for method in dict.fromkeys(metrics["method"]):
        own = last[last["method"] == method]
        d = paired_difference(per_seed(last, method, "val_top1"), per_seed(last, reference, "val_top1")) \
            if method != reference else None
        rows.append({"method": method, "seeds": len(own),
                     "val_top1_mean": own["val_top1"].mean(), "val_top1_std": own["val_top1"].std(ddof=1),
                     "test_top1_mean": own["test_top1"].mean(), "test_top1_std": own["test_top1"].std(ddof=1),
                     "val_diff_mean": d["mean"] if d else math.nan, "val_diff_low": d["low"] if d else math.nan,
                     "val_diff_high": d["high"] if d else math.nan, "val_diff_n": d["n"] if d else 0,
                     "val_excludes_zero": d["excludes_zero"] if d else None})
    return pd.DataFrame(rows)


def selection_markdown(table: pd.DataFrame, reference: str) -> str:
    display = pd.DataFrame({"method": table["method"], "seeds": table["seeds"].astype(str)})
    display["val top-1"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["val_top1_mean"], table["val_top1_std"])]
    diffs = [{"n": int(n), "mean": m, "low": lo, "high": hi, "excludes_zero": ex} for n, m, lo, hi, ex in
             zip(table["val_diff_n"], table["val_diff_mean"], table["val_diff_low"], table["val_diff_high"],
                 table["val_excludes_zero"])]
    display[f"Δ val vs {reference} [95% CI]"] = [describe_difference(d) for d in diffs]
    display["excludes 0"] = [plain_answer(d) for d in diffs]
    display["test top-1 (reported, not used to choose)"] = [f"{m:.2f} ± {s:.2f}" for m, s in
                                                            zip(table["test_top1_mean"], table["test_top1_std"])]
    return to_markdown(display)


def against_table(metrics: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every method against one reference (CCM, say): the paired differences of last-epoch test top-1 and, where
    the runs have a validation split, of validation top-1, with 95 % intervals. Says where each method stands
    against the reference directly, rather than through two intervals against a third method."""
    last = metrics.loc[metrics.groupby(["run", "method", "seed"])["epoch"].idxmax()]
    splits = ["test"] + (["val"] if "val_top1" in metrics and metrics["val_top1"].notna().any() else [])
    rows = []
    for method in [m for m in dict.fromkeys(metrics["method"]) if m != reference]:
        own = last[last["method"] == method]
        row = {"method": method, "seeds": len(own), "test_top1_mean": own["test_top1"].mean(),
               "test_top1_std": own["test_top1"].std(ddof=1) if len(own) > 1 else 0.0}
        for split in splits:
            d = paired_to(last, method, reference, f"{split}_top1")
            row.update({f"{split}_diff_{key}": d[key] for key in ("mean", "low", "high", "n")})
            row[f"{split}_excludes_zero"] = d["excludes_zero"]
        rows.append(row)
    return pd.DataFrame(rows)


def against_markdown(table: pd.DataFrame, reference: str) -> str:
    display = pd.DataFrame({"method": table["method"], "seeds": table["seeds"].astype(str)})
    display["test top-1"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["test_top1_mean"], table["test_top1_std"])]
    for split in [s for s in ("test", "val") if f"{s}_diff_n" in table]:
        diffs = [{"n": int(n), "mean": m, "low": lo, "high": hi, "excludes_zero": ex} for n, m, lo, hi, ex in
                 zip(*(table[f"{split}_{k}"] for k in ("diff_n", "diff_mean", "diff_low", "diff_high", "excludes_zero")))]
        display[f"Δ {split} vs {reference} [95% CI]"] = [describe_difference(d) for d in diffs]
        display[f"excludes 0 ({split})"] = [plain_answer(d) for d in diffs]
    return to_markdown(display)
