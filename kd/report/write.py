"""Write a report folder: table.csv, table.md, curves.png, each naming the command that made it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kd.report.plots import plot_curves
from kd.report.tables import display_table, load_metrics, method_table, to_markdown


def write_report(run_dirs, out_dir: Path, command: str, console=None, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rebuild the tables and curves of `run_dirs` into `out_dir`; `extra` adds per-method columns (e.g. loc_*)."""
    metrics = load_metrics(run_dirs)
    table = method_table(metrics)
    if extra is not None and len(extra):
        table = table.merge(extra, on="method", how="left")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "table.csv", index=False)
    display = display_table(table)
    first = metrics.iloc[0]
    title = f"{first['teacher']} -> {first['student']}" if isinstance(first.get("teacher"), str) else str(first["student"])
    note = (f"Made by `{command}`.\n\nStudent {first['student']}"
            + (f", teacher {first['teacher']}" if isinstance(first.get("teacher"), str) else "")
            + f"; test top-1 in %, mean ± std over seeds; gain = last-epoch mean minus vanilla's; "
              "ep→N% = first epoch at which the seed-mean test top-1 reaches N % of vanilla's final top-1 ('-': never); "
              "AUC = mean test top-1 over all epochs.\n")
    (out_dir / "table.md").write_text(f"# {title}\n\n{note}\n{to_markdown(display)}\n")
    plot_curves(metrics, out_dir / "curves.png", title)
    if console is not None:
        print_table(console, display, f"{title}  ({out_dir / 'table.md'})")
    return table


def print_table(console, display: pd.DataFrame, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in display.columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)
