"""Every committed table under results/ is rebuilt from the raw records committed beside it (each run's
recipe.yaml, summary.csv and per-student metrics.csv) and must equal the committed one."""
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

RESULTS = ROOT / "results"
# folders holding a method table (table.csv) made by `report` over the archived runs in runs/
METHOD_TABLES = sorted(p.parent for p in RESULTS.glob("**/runs") if (p.parent / "table.csv").is_file())


def same_table(rebuilt: pd.DataFrame, committed: pd.DataFrame) -> None:
    assert list(rebuilt.columns) == list(committed.columns)
    assert len(rebuilt) == len(committed)
    for column in committed.columns:
        a, b = rebuilt[column], committed[column]
        numeric = [pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c) for c in (a, b)]
        if all(numeric):
            assert (((a - b).abs() <= 1e-6 * (1 + b.abs())) | (a.isna() & b.isna())).all(), column
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), column


def test_the_committed_results_keep_their_raw_records():
    assert {p.relative_to(RESULTS).as_posix() for p in METHOD_TABLES} >= {"quickstart", "zoo"}
    for folder in METHOD_TABLES:
        for run in (folder / "runs").iterdir():
            assert (run / "recipe.yaml").is_file() and (run / "command.txt").is_file(), run
            assert list(run.glob("*/metrics.csv")), run


@pytest.mark.parametrize("folder", METHOD_TABLES, ids=[p.relative_to(RESULTS).as_posix() for p in METHOD_TABLES])
def test_a_method_table_is_rebuilt_from_its_archived_runs(folder, tmp_path):
    from kd.report.write import write_report

    write_report(sorted((folder / "runs").iterdir()), tmp_path, "test", pictures=False)
    same_table(pd.read_csv(tmp_path / "table.csv"), pd.read_csv(folder / "table.csv"))
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| ")]
    committed = [line for line in (folder / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert rows == committed


def test_the_bf16_parity_tables_are_rebuilt_from_their_archived_runs():
    from kd.report.tables import load_metrics, setting_table

    studies = [p for p in (RESULTS / "bench" / "bf16-parity").iterdir() if p.is_dir()]
    assert studies
    for study in studies:
        frames = {p: load_metrics([study / p]) for p in ("fp32", "bf16")}
        rebuilt = setting_table(frames["fp32"], frames["bf16"], "fp32", "bf16")
        same_table(rebuilt, pd.read_csv(study.parent / f"{study.name}.csv"))


def test_the_cifar100_ablation_selection_is_rebuilt_from_its_archived_runs():
    from kd.report.tables import load_metrics, selection_table

    folder = RESULTS / "ablations" / "cifar100"
    if not (folder / "selection.csv").is_file():
        pytest.skip("the CIFAR-100 ablation has not been committed")
    rebuilt = selection_table(load_metrics(sorted((folder / "runs").iterdir())), "ccm")
    same_table(rebuilt, pd.read_csv(folder / "selection.csv"))


def test_the_cifar100_cam_weight_sweep_is_rebuilt_from_its_archived_runs():
    """Each selection-<method>-vs-<reference>.csv: the method's variants against the reference, from the runs."""
    from kd.report.tables import load_metrics, selection_table

    folder = RESULTS / "ablations" / "cifar100-sweep"
    tables = sorted(folder.glob("selection-*-vs-*.csv"))
    if not tables:
        pytest.skip("the CIFAR-100 cam_weight sweep has not been committed")
    metrics = load_metrics(sorted((folder / "runs").iterdir()))
    for table in tables:
        method, reference = table.stem.removeprefix("selection-").split("-vs-")
        family = metrics[metrics["method"].str.split("@").str[0] == method]
        same_table(selection_table(family, reference), pd.read_csv(table))


def test_the_cifar100_table_against_ccm_is_rebuilt_from_its_archived_runs():
    from kd.report.tables import against_table, load_metrics

    folder = RESULTS / "cifar100"
    if not (folder / "ccm-vs-every-method.csv").is_file():
        pytest.skip("the CIFAR-100 comparison has not been committed")
    rebuilt = against_table(load_metrics(sorted((folder / "runs").iterdir())), "ccm")
    same_table(rebuilt, pd.read_csv(folder / "ccm-vs-every-method.csv"))


def test_every_readme_figure_comes_from_a_committed_table():
    """The README quotes its tables' numbers: each 'xx.xx ± y.yy' it states appears in some committed table."""
    import re

    tables = " ".join(p.read_text() for p in RESULTS.glob("**/*.md"))
    quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d", (ROOT / "README.md").read_text())
    missing = [q for q in quoted if q not in tables]
    assert not missing, missing
