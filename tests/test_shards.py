"""Sharding a comparison: `compare RECIPE --shard I/N` trains disjoint slices of the (method, seed) students in run
directories of their own, and `report` merges them into the table of the unsharded comparison; runs of different
recipes are refused."""
import csv

import pandas as pd
import pytest
import torch

from kd.cli import main
from kd.errors import KDError
from kd.recipe import load_recipe
from test_cli_run import small_recipe
from test_faults import one_line

TIMING = ("images_per_s", "seconds")


def metrics(path):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(open(path))]


def test_shards_are_contiguous_slices_of_the_seed_major_students_of_about_equal_cost(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla, kd, at]")
    seeds = "seeds=[0, 1, 2]"
    everyone = [(m, s) for s in (0, 1, 2) for m in ("vanilla", "kd", "at")]
    assert load_recipe(recipe, [seeds]).students() == everyone
    shards = [load_recipe(recipe, [seeds, f"shard={i}/4"]).students() for i in (1, 2, 3, 4)]
    # step costs 0.5, 1, 1 per seed (7.5 in all): cuts nearest to 1.875, 3.75 and 5.625; in order, none twice,
    # none left out
    assert shards == [[("vanilla", 0), ("kd", 0)], [("at", 0), ("vanilla", 1), ("kd", 1)], [("at", 1), ("vanilla", 2)],
                      [("kd", 2), ("at", 2)]]
    assert load_recipe(recipe, [seeds, "shard=2/3"]).students() == [("vanilla", 1), ("kd", 1), ("at", 1)]
    assert load_recipe(recipe, [seeds, "shard=2/4"]).run_name == "tiny-shard2of4"
    for bad, message in (("0/2", "shard '0/2' is not I/N with 1 <= I <= N"), ("3/2", "is not I/N"),
                         ("half", "is not I/N"), ("1/10", "the recipe has 9 students (3 methods x 3 seeds), so 10 "
                                                         "shards would leave some empty; use at most 9 shards")):
        with pytest.raises(KDError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(recipe, [seeds, f"shard={bad}"])


def test_costly_methods_are_dealt_out_so_that_shards_take_about_equal_time(tmp_path):
    from kd.distillers import DISTILLERS

    methods = ["vanilla", "cam_loss", "kd", "crd", "reviewkd"]
    cost = {m: DISTILLERS.get(m).step_cost for m in methods}
    assert cost["vanilla"] < cost["kd"] == 1.0 < cost["crd"] < cost["reviewkd"]  # as results/bench measures them
    recipe = small_recipe(tmp_path, methods=f"[{', '.join(methods)}]")
    shards = [load_recipe(recipe, ["seeds=[0, 1]", f"shard={i}/3"]).students() for i in (1, 2, 3)]
    assert sum(shards, []) == load_recipe(recipe, ["seeds=[0, 1]"]).students()
    costs = [sum(cost[m] for m, _ in shard) for shard in shards]
    # equal counts (3, 3, 4 students) would cost 2.05, 4.2 and 5.25; the cuts by cost come within one student's
    # cost of an equal share
    assert max(costs) <= sum(costs) / 3 + max(cost.values()) / 2 and max(costs) < 5.25


@pytest.fixture
def deterministic():
    yield
    torch.use_deterministic_algorithms(False)  # the recipes below turn it on for this process


def quickstart_overrides(tmp_path) -> list[str]:
    """The quickstart recipe (the seven methods, its pair) made small: fewer images and epochs, 3 seeds, a random
    teacher of the pair's architecture in place of the trained one, deterministic algorithms."""
    from kd.models import create_model

    torch.manual_seed(0)
    torch.save({"model": create_model("resnet20", 10).state_dict()}, tmp_path / "teacher.pt")
    return ["shapes={train_size: 64, test_size: 32}", "epochs=1", "batch_size=16", "seeds=[0, 1, 2]",
            "deterministic=true", f"teacher_checkpoint={tmp_path / 'teacher.pt'}"]


def test_merged_shards_equal_the_unsharded_comparison(tmp_path, capsys, deterministic):
    from conftest import ROOT

    recipe, small = ROOT / "recipes" / "quickstart.yaml", quickstart_overrides(tmp_path)
    assert main(["compare", str(recipe), *small, f"output_dir={tmp_path / 'whole'}"]) == 0
    (whole_run,) = (tmp_path / "whole").iterdir()
    shard_runs = []
    for i in (1, 2):  # by step cost: seed 0 and the first four students of seed 1 | the rest
        capsys.readouterr()
        assert main(["compare", str(recipe), *small, "--shard", f"{i}/2", f"output_dir={tmp_path / 'shards'}"]) == 0
        assert "merge their run directories" in capsys.readouterr().out
        (run,) = (tmp_path / "shards").glob(f"quickstart-shard{i}of2-*")
        shard_runs.append(run)
        assert f"shard: {i}/2" in (run / "recipe.yaml").read_text()  # the full recipe plus the shard: resumable
    methods = ["vanilla", "kd", "fitnets", "at", "cam_loss", "ccm", "ccm_kd"]
    first = [f"{m}-s0" for m in methods] + [f"{m}-s1" for m in methods[:4]]
    assert sorted(p.parent.name for p in shard_runs[0].glob("*/metrics.csv")) == sorted(first)
    for label in [f"{m}-s{seed}" for seed in (0, 1, 2) for m in methods]:
        (sharded,) = [run / label / "metrics.csv" for run in shard_runs if (run / label).is_dir()]
        assert metrics(sharded) == metrics(whole_run / label / "metrics.csv"), label
    assert main(["report", *map(str, shard_runs), "--out", str(tmp_path / "merged")]) == 0
    ours = pd.read_csv(tmp_path / "merged" / "table.csv").set_index("method")
    theirs = pd.read_csv(whole_run / "report" / "table.csv").set_index("method")
    assert list(ours.index) == list(theirs.index) == methods
    assert list(ours.columns) == list(theirs.columns)
    # ccm and vanilla of seed 1 trained in different shards: still paired, so ccm's difference counts 3 seeds
    assert (ours["seeds"] == 3).all() and ours.loc["ccm", "vs_vanilla_n"] == 3 and ours.loc["ccm", "vs_kd_n"] == 3
    for column in ours.columns.drop("images_per_s"):
        for method in ours.index:
            a, b = ours.loc[method, column], theirs.loc[method, column]
            if isinstance(a, float) and isinstance(b, float):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), (method, column)
            else:
                assert a == b, (method, column)
    # an interrupted shard is found again by its own recipe (the shard included), never another shard's run
    (shard_runs[1] / "summary.csv").unlink()
    capsys.readouterr()
    assert main(["compare", str(recipe), *small, "--shard", "2/2", f"output_dir={tmp_path / 'shards'}"]) == 0
    assert f"resuming the interrupted comparison in {shard_runs[1]}" in capsys.readouterr().out
    assert sorted((tmp_path / "shards").iterdir()) == sorted(shard_runs)


def test_report_refuses_runs_of_different_recipes_and_merges_other_seeds(tmp_path, capsys):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    runs = {}
    for name, extra in (("a", []), ("seeds", ["seeds=[1]", "methods=[vanilla, kd]"]), ("lr", ["lr=0.1", "epochs=2"])):
        assert main([str(recipe), *extra, f"output_dir={tmp_path / name}"]) == 0
        (runs[name],) = (tmp_path / name).iterdir()
    # the same recipe with another seed (and another method): one table
    assert main(["report", str(runs["a"]), str(runs["seeds"]), "--out", str(tmp_path / "ok")]) == 0
    table = pd.read_csv(tmp_path / "ok" / "table.csv")
    assert dict(zip(table["method"], table["seeds"])) == {"vanilla": 2, "kd": 1}
    capsys.readouterr()
    assert main(["report", str(runs["a"]), str(runs["lr"]), "--out", str(tmp_path / "no")]) == 2
    line = one_line(capsys, "cannot merge runs of different recipes: epochs, lr differ",
                    f"lr: 0.05 in {runs['a']}, 0.1 in {runs['lr']}")
    assert "seeds" not in line.split("differ")[0] and not (tmp_path / "no").exists(), line


def test_recipes_saved_before_log_and_shard_existed_still_resume_and_merge(tmp_path):
    from kd.engine.rundir import RunDir
    from kd.report.merge import differences

    recipe = load_recipe(small_recipe(tmp_path), [])
    text = recipe.to_yaml()
    old = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(("log:", "shard:")))
    assert old != text
    run = RunDir(tmp_path / "old")
    run.path.mkdir()
    run.write_recipe(old)
    assert run.recipe_differences(text) == []
    assert run.recipe_differences(load_recipe(small_recipe(tmp_path), ["shard=1/2"]).to_yaml()) == ["shard"]
    assert differences(run.recipe_mapping(), {**run.recipe_mapping(), "log": ["csv"], "shard": "2/2"}) == []
    # a method section only one run has is no difference (that run did not train the method); one both have is
    assert differences(run.recipe_mapping(), {**run.recipe_mapping(), "epochs": 3, "ccm": {"cam_weight": 2.0}}) == ["epochs"]
    assert differences(run.recipe_mapping(), {**run.recipe_mapping(), "kd": {"T": 2.0}}) == ["kd"]
