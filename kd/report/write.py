"""Write a report folder: table.csv, table.md, curves.png and cams.png, each naming the command that made it."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pandas as pd

from kd.errors import KDError, one_line
from kd.report.plots import plot_curves
from kd.report.tables import display_table, load_metrics, method_table, to_markdown


def write_report(run_dirs, out_dir: Path, command: str, console=None, pictures: bool = True,
                 published: bool = False) -> pd.DataFrame:
    """Rebuild the tables and plots of `run_dirs` into `out_dir` from their saved metrics and checkpoints."""
    from kd.report.cams import localisation_columns

    metrics = load_metrics(run_dirs)
    table = method_table(metrics)
    scores = localisation_columns(run_dirs)
    teacher_scores = ""
    if scores is not None:
        teacher = scores[scores["method"] == "teacher"]
        if len(teacher):
            teacher_scores = (f" Teacher CAM localisation: {teacher['loc_energy'].iloc[0]:.1f} % of the positive mass in "
                              f"the box, pointing game {teacher['loc_pointing'].iloc[0]:.1f} %.")
        table = table.merge(scores[scores["method"] != "teacher"], on="method", how="left")
    out_dir = Path(out_dir)
    with staged(out_dir) as stage:
        title = write_files(stage, metrics, table, scores, teacher_scores, command, console, pictures, run_dirs)
        beside = write_beside_published(table, metrics.iloc[0], stage, command, console) if published else None
    if console is not None:
        print_table(console, display_table(table), f"{title}  ({out_dir / 'table.md'})")
        if beside is not None:
            print_table(console, beside, f"ours beside published  ({out_dir / 'published.md'})")
    return table


@contextlib.contextmanager
def staged(out_dir: Path):
    """A hidden folder beside `out_dir` that the report is written into, then moved into `out_dir` file by file
    (renames: no extra space): a full disk or a read-only folder leaves `out_dir` as it was, and one line says so."""
    stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        stage.mkdir(parents=True, exist_ok=True)
        yield stage
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in stage.iterdir():
            os.replace(path, out_dir / path.name)
    except OSError as err:
        raise KDError(f"cannot write the report into {out_dir} ({err.strerror or one_line(err)}); nothing there was "
                      f"changed: free some space or make the folder writable, then run the command again") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_files(stage: Path, metrics, table, scores, teacher_scores: str, command: str, console, pictures: bool,
                run_dirs) -> str:
    """table.csv, table.md, curves.png and cams.png into `stage`; the table's title."""
    from kd.report.cams import plot_cams

    table.to_csv(stage / "table.csv", index=False)
    display = display_table(table)
    first = metrics.iloc[0]
    has_teacher = isinstance(first.get("teacher"), str)
    title = f"{first['teacher']} -> {first['student']}" if has_teacher else str(first["student"])
    note = (f"Made by `{command}`.\n\nStudent {first['student']}" + (f", teacher {first['teacher']}" if has_teacher else "")
            + "; test top-1 in %, mean ± std over seeds; gain = last-epoch mean minus vanilla's; "
              "ep→N% = first epoch at which the seed-mean test top-1 reaches N % of vanilla's final top-1 ('-': never); "
              "AUC = mean test top-1 over all epochs; img/s = training images per second of each student as if "
              "trained alone (its steps plus the teacher pass it uses)."
            + (" loc_energy = share (%) of the true-class CAM's positive mass inside the object box, loc_pointing = % of "
               "test images whose CAM maximum lies in the box (last-epoch students, test set)." + teacher_scores
               if scores is not None else "") + "\n")
    (stage / "table.md").write_text(f"# {title}\n\n{note}\n{to_markdown(display)}\n")
    plot_curves(metrics, stage / "curves.png", title)
    if pictures:
        try:
            plot_cams(Path(run_dirs[0]), stage / "cams.png")
        except KDError as err:  # the data set is not on this machine: everything else is still written
            if console is not None:
                console.print(f"[yellow]cams.png skipped:[/] {err}")
    return title


def write_beside_published(table: pd.DataFrame, first, stage: Path, command: str, console=None) -> pd.DataFrame | None:
    """published.md into `stage`; the table it holds (None, with a line saying why, where nothing is published)."""
    from kd.report.published import beside_published

    if first.get("dataset") != "cifar100":
        if console is not None:
            console.print(f"published numbers are for CIFAR-100; this run used {first.get('dataset')}, so none are set beside it")
        return None
    beside = beside_published(table, first.get("teacher"), first["student"])
    if beside is None:
        if console is not None:
            console.print(f"no published CIFAR-100 numbers for {first.get('teacher')} -> {first['student']}")
        return None
    shown = beside.assign(**{"published top-1": beside["published top-1"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")})
    text = (f"# Ours beside the published CIFAR-100 numbers: {first.get('teacher')} -> {first['student']}\n\n"
            f"Made by `{command}`. Ours: last-epoch test top-1 (%), mean ± std over seeds. Published: as listed in "
            f"results/published.md (CRD benchmark README; DKD README for dkd), not ours.\n\n{to_markdown(shown)}\n")
    (stage / "published.md").write_text(text)
    return shown


def print_table(console, display: pd.DataFrame, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in display.columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)
