"""`run_kd.py evaluate`: a run directory reproduces its last metrics rows; kd's best.pt, the benchmark's format and a
bare state dict are scored as numbers written out here predict; bad input is one line, exit 2, no file written."""
import csv
import math
import shutil

import pytest
import torch

from kd.cli import main
from kd.models import create_model
from test_cli_run import small_recipe
from test_faults import one_line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run: vanilla and kd students of resnet8 on 4-class shapes, 2 epochs, evaluated in fp32."""
    tmp = tmp_path_factory.mktemp("evaluate")
    assert main([str(small_recipe(tmp)), "epochs=2", "precision=fp32"]) == 0
    (path,) = (tmp / "runs").iterdir()
    return path


def rows(path):
    return list(csv.DictReader(open(path)))


def test_a_run_directory_reproduces_the_last_metrics_rows(run, tmp_path, capsys):
    out = tmp_path / "eval" / "scores.csv"
    assert main(["evaluate", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vanilla-s0" in printed and "kd-s0" in printed and "top-1 %" in printed
    scores = {r["model"]: r for r in rows(out)}
    assert list(scores) == ["vanilla-s0", "kd-s0"]
    for label, score in scores.items():
        last = rows(run / label / "metrics.csv")[-1]
        assert score["arch"] == "resnet8" and score["epoch"] == "2" and score["dataset"] == "shapes"
        for column in ("test_top1", "test_top5", "test_loss"):
            assert float(score[column]) == pytest.approx(float(last[column]), rel=1e-6), (label, column)
        # shapes has object boxes: the CAM localisation scores come with the accuracy
        assert 0 <= float(score["loc_energy"]) <= 100 and 0 <= float(score["loc_pointing"]) <= 100


def test_a_kd_checkpoint_names_its_architecture_and_its_run_gives_the_data(run, tmp_path):
    best = run / "kd-s0" / "checkpoints" / "best.pt"
    saved = torch.load(best, weights_only=True)
    out = tmp_path / "best.csv"
    assert main(["evaluate", str(best), "--out", str(out)]) == 0
    (score,) = rows(out)
    row = rows(run / "kd-s0" / "metrics.csv")[saved["epoch"] - 1]
    assert score["model"] == "kd-s0/best.pt" and score["epoch"] == str(saved["epoch"])
    assert float(score["test_top1"]) == pytest.approx(saved["test_top1"])
    assert float(score["test_loss"]) == pytest.approx(float(row["test_loss"]), rel=1e-6)


def constant_model():
    """resnet8 for 10 classes whose logits are the classifier bias [9, 8, ..., 0] whatever the image."""
    model = create_model("resnet8", 10)
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.copy_(torch.arange(9, -1, -1).float())
    return model.state_dict()


@pytest.mark.parametrize("form", ["benchmark", "bare"])
def test_the_benchmark_format_and_a_bare_state_dict_with_arch(tmp_path, form):
    state = constant_model()
    torch.save({"model": state, "epoch": 240} if form == "benchmark" else state, tmp_path / "w.pth")
    out = tmp_path / "w.csv"
    assert main(["evaluate", str(tmp_path / "w.pth"), "--arch", "resnet8", "--data", "shapes", "--out", str(out)]) == 0
    (score,) = rows(out)
    # shapes' default test set: 2,000 images, 200 of each of 10 classes. Every image is called class 0 (bias 9),
    # and classes 0-4 are the top five: top-1 10 %, top-5 50 %; the loss is logsumexp(b) - mean(b) over the classes.
    bias = list(range(9, -1, -1))
    loss = math.log(sum(math.exp(b) for b in bias)) - sum(bias) / 10
    assert float(score["test_top1"]) == pytest.approx(10.0) and float(score["test_top5"]) == pytest.approx(50.0)
    assert float(score["test_loss"]) == pytest.approx(loss, rel=1e-5)
    assert score["epoch"] == ("240" if form == "benchmark" else "")


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    torch.save(constant_model(), tmp_path / "bare.pt")
    torch.save({"epoch": 3, "accuracy": 70.0}, tmp_path / "nostate.pt")
    (tmp_path / "text.pt").write_text("hello")
    shutil.copy(run / "kd-s0" / "checkpoints" / "best.pt", tmp_path / "four.pt")  # 4 classes, outside its run
    empty = tmp_path / "empty-run"
    shutil.copytree(run, empty, ignore=shutil.ignore_patterns("checkpoints"))
    out = tmp_path / "out.csv"
    cases = [
        ([str(tmp_path / "bare.pt"), "--data", "shapes"], ["bare.pt is a bare state dict", "give --arch NAME"]),
        ([str(tmp_path / "bare.pt"), "--arch", "resnet8"], ["which data set is", "give --data NAME"]),
        ([str(tmp_path / "bare.pt"), "--arch", "resnet14", "--data", "shapes"],
         ["does not fit the model architecture 'resnet14'", "give the right --arch"]),
        ([str(tmp_path / "four.pt"), "--data", "shapes"], ["four.pt was trained for 4 classes, but the data set has 10"]),
        ([str(run / "kd-s0" / "checkpoints" / "best.pt"), "--arch", "resnet14"],
         ["holds a resnet8 (it says so), not a resnet14"]),
        ([str(tmp_path / "nostate.pt"), "--arch", "resnet8"],
         ["nostate.pt holds no model state dict", "evaluate takes a run directory"]),
        ([str(tmp_path / "text.pt"), "--arch", "resnet8"], ["text.pt is not a readable torch checkpoint"]),
        ([str(tmp_path / "missing.pt")], ["missing.pt does not exist"]),
        ([str(empty)], [f"{empty} holds no student checkpoint", "--resume"]),
        ([str(run), "--arch", "resnet14"], ["trained resnet8 students", "drop --arch resnet14"]),
        ([str(tmp_path)], ["is not a run directory"]),
        ([str(run), "--out", str(tmp_path)], ["--out", "that is a folder"]),
    ]
    for args, pieces in cases:
        capsys.readouterr()
        extra = [] if "--out" in args else ["--out", str(out)]
        assert main(["evaluate", *args, *extra]) == 2, args
        one_line(capsys, *pieces)
        assert not out.exists(), args
