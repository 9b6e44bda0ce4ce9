"""compare and report: the shared teacher pass equals training one after another; tables, curves, CAM
pictures and localisation scores are rebuilt from saved runs; several runs merge into one table."""
import csv

import pandas as pd
import pytest

from conftest import run_cli
from kd.report.tables import method_table
from test_cli_run import small_recipe

TIMING = {"images_per_s", "seconds"}


def metrics(run_dir, label):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(run_dir / label / "metrics.csv"))]


def test_shared_teacher_pass_gives_the_same_metrics_as_sequential_training(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla, kd, fitnets, at, cam_loss, ccm, ccm_kd]")
    runs = {}
    for shared in ("true", "false"):
        out = tmp_path / f"shared-{shared}"
        result = run_cli(str(recipe), "epochs=2", f"shared_teacher={shared}", f"output_dir={out}")
        assert result.returncode == 0, result.stderr
        runs[shared] = next(out.iterdir())
    for label in ("vanilla-s0", "kd-s0", "fitnets-s0", "at-s0", "cam_loss-s0", "ccm-s0", "ccm_kd-s0"):
        assert metrics(runs["true"], label) == metrics(runs["false"], label), label


def test_compare_writes_tables_curves_cams_and_localisation_and_resumes(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla, ccm]")
    result = run_cli("compare", str(recipe), "epochs=2", "seeds=[0, 1]")
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").iterdir())
    report = run / "report"
    for name in ("table.csv", "table.md", "curves.png", "cams.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    table = pd.read_csv(report / "table.csv")
    assert list(table["method"]) == ["vanilla", "ccm"] and set(table["seeds"]) == {2}
    for column in ("last_top1_mean", "last_top1_std", "best_top1_mean", "gain_vs_vanilla", "epochs_to_90pct",
                   "auc_top1", "images_per_s", "extra_params", "loc_energy", "loc_pointing"):
        assert column in table.columns, column
    assert "Made by `python run_kd.py compare" in (report / "table.md").read_text()
    scores = pd.read_csv(run / "localisation.csv")
    assert set(scores["method"]) == {"teacher", "vanilla", "ccm"} and scores["loc_pointing"].between(0, 100).all()
    # the same comparison again: it finished, so a new run starts (an unfinished one would be resumed)
    again = run_cli("compare", str(recipe), "epochs=2", "seeds=[0, 1]")
    assert again.returncode == 0 and "resuming" not in again.stdout
    (run2,) = [p for p in (tmp_path / "runs").iterdir() if p != run]
    (run2 / "summary.csv").unlink()  # as if interrupted after training
    third = run_cli("compare", str(recipe), "epochs=2", "seeds=[0, 1]")
    assert third.returncode == 0 and f"resuming the interrupted comparison in {run2}" in third.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 2
    # report merges runs into one table without training
    merged = run_cli("report", str(run), str(run2), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    table = pd.read_csv(tmp_path / "merged" / "table.csv")
    assert dict(zip(table["method"], table["seeds"])) == {"vanilla": 4, "ccm": 4}
    bad = run_cli("report", str(tmp_path))
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr


def test_method_table_convergence_gain_and_auc():
    rows = []
    curves = {"vanilla": [[10, 20, 40], [10, 30, 60]], "fast": [[30, 45, 55], [40, 50, 65]]}
    for method, seeds in curves.items():
        for seed, curve in enumerate(seeds):
            for epoch, top1 in enumerate(curve, start=1):
                rows.append({"run": "r", "method": method, "seed": seed, "epoch": epoch, "test_top1": float(top1),
                             "test_top5": 90.0, "images_per_s": 100.0, "teacher_top1": 80.0, "extra_params": 0})
    table = method_table(pd.DataFrame(rows)).set_index("method")
    assert table.loc["vanilla", "last_top1_mean"] == 50 and table.loc["fast", "last_top1_mean"] == 60
    assert table.loc["vanilla", "last_top1_std"] == pytest.approx(14.142, abs=1e-3)
    assert table.loc["fast", "gain_vs_vanilla"] == 10
    # vanilla's final mean is 50: 90 % = 45, 95 % = 47.5, 100 % = 50; fast's mean curve is 35, 47.5, 60
    assert table.loc["fast", ["epochs_to_90pct", "epochs_to_95pct", "epochs_to_100pct"]].tolist() == [2, 2, 3]
    assert table.loc["vanilla", ["epochs_to_90pct", "epochs_to_100pct"]].tolist() == [3, 3]
    assert table.loc["fast", "auc_top1"] == pytest.approx((35 + 47.5 + 60) / 3)


def test_against_table_pairs_every_method_with_the_reference_by_run_and_seed():
    from kd.report.tables import against_table

    # ccm's seeds: 10, 20, 30 (test) / 11, 21, 31 (val); 'up' is 2, 4, 6 above on test and 1, 1, 1 on val
    rows = []
    for method, test, val in (("ccm", [10, 20, 30], [11, 21, 31]), ("up", [12, 24, 36], [12, 22, 32])):
        for seed in range(3):
            rows.append({"run": f"shard{seed}", "method": method, "seed": seed, "epoch": 1,
                         "test_top1": float(test[seed]), "val_top1": float(val[seed])})
    table = against_table(pd.DataFrame(rows), "ccm").set_index("method")
    assert list(table.index) == ["up"]
    assert table.loc["up", "test_diff_mean"] == pytest.approx(4) and table.loc["up", "test_diff_n"] == 3
    half = 4.303 * 2 / 3 ** 0.5  # t(0.975, 2) x std of the differences (2) / sqrt(3)
    assert table.loc["up", "test_diff_low"] == pytest.approx(4 - half, abs=1e-3)
    assert not table.loc["up", "test_excludes_zero"]  # 4 +- 4.97: a tie
    # identical differences on val: a zero-width interval above 0
    assert table.loc["up", "val_diff_mean"] == pytest.approx(1) and table.loc["up", "val_excludes_zero"]


def test_report_recomputes_localisation_when_the_checkpoints_changed_or_the_cache_is_damaged(tmp_path):
    """A report made mid-training once left its CAM scores for good; an empty cache raised pandas' traceback."""
    recipe = small_recipe(tmp_path, methods="[vanilla, ccm]")
    assert run_cli("compare", str(recipe), "epochs=2").returncode == 0
    run = next((tmp_path / "runs").iterdir())
    first = pd.read_csv(run / "localisation.csv").set_index("method")
    assert first["checkpoint"].str.fullmatch("[0-9a-f]{64}").all()
    # the students' checkpoints change (as a resumed run's do): swap them, so each one's scores must move with it
    vanilla, ccm = (run / f"{m}-s0" / "checkpoints" / "last.pt" for m in ("vanilla", "ccm"))
    vanilla_bytes = vanilla.read_bytes()
    vanilla.write_bytes(ccm.read_bytes())
    ccm.write_bytes(vanilla_bytes)
    result = run_cli("report", str(run))
    assert result.returncode == 0, result.stderr
    second = pd.read_csv(run / "localisation.csv").set_index("method")
    for column in ("loc_energy", "loc_pointing"):
        assert second.loc["vanilla", column] == first.loc["ccm", column]
        assert second.loc["ccm", column] == first.loc["vanilla", column]
    table = pd.read_csv(run / "report" / "table.csv").set_index("method")
    assert table.loc["vanilla", "loc_energy"] == pytest.approx(first.loc["ccm", "loc_energy"])
    # a damaged cache (empty, or cut) is computed again, never a traceback
    for damaged in ("", "method,seed,loc_en"):
        (run / "localisation.csv").write_text(damaged)
        result = run_cli("report", str(run))
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert pd.read_csv(run / "localisation.csv").set_index("method")["checkpoint"].equals(second["checkpoint"])
