"""End to end, the way a user runs it: `run_kd.py RECIPE.yaml key=value` on a small shapes subset."""
import csv
import math
import shutil

import pytest
import torch

from conftest import run_cli
from kd.models import create_model


def small_recipe(tmp_path, methods="[vanilla, kd]", extra="", shapes="{train_size: 64, test_size: 32, num_classes: 4, image_size: 32}"):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": create_model("resnet14", 4).state_dict()}, teacher)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""name: tiny
dataset: shapes
shapes: {shapes}
teacher: resnet14
teacher_checkpoint: {teacher}
student: resnet8
methods: {methods}
epochs: 1
batch_size: 16
lr: 0.05
output_dir: {tmp_path / 'runs'}
{extra}""")
    return recipe


def test_one_epoch_run_writes_a_complete_run_directory(tmp_path):
    recipe = small_recipe(tmp_path)
    result = run_cli(str(recipe), "epochs=2", "kd.T=2")
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny-")
    run = runs[0]
    assert "T: 2.0" in (run / "recipe.yaml").read_text() and "epochs: 2" in (run / "recipe.yaml").read_text()
    summary = list(csv.DictReader(open(run / "summary.csv")))
    assert [r["method"] for r in summary] == ["vanilla", "kd"]
    for method, terms in (("vanilla", ["loss_ce"]), ("kd", ["loss_ce", "loss_kd"])):
        rows = list(csv.DictReader(open(run / f"{method}-s0" / "metrics.csv")))
        assert [r["epoch"] for r in rows] == ["1", "2"]
        for column in ["lr", "loss", *terms, "train_top1", "test_top1", "test_top5", "images_per_s", "seconds"]:
            assert column in rows[0], column
        assert 0 <= float(rows[-1]["test_top1"]) <= 100
        last = torch.load(run / f"{method}-s0" / "checkpoints" / "last.pt", weights_only=True)
        best = torch.load(run / f"{method}-s0" / "checkpoints" / "best.pt", weights_only=True)
        assert last["epoch"] == 2 and "optimizer" in last and "model" in best
        create_model("resnet8", 4).load_state_dict(best["model"])
    assert "teacher resnet14: test top-1" in result.stdout
    assert "kd" in result.stdout and "vanilla" in result.stdout


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path):
    recipe = small_recipe(tmp_path)
    for args, message in (
        ([str(recipe), "epochs=zero"], "'epochs' must be an integer, got 'zero'"),
        ([str(recipe), "student=resnet9"], "unknown model 'resnet9'"),
        ([str(recipe), f"teacher_checkpoint={tmp_path / 'nope.pt'}"], "nope.pt does not exist"),
        ([str(recipe), "teacher=resnet20"], "does not fit the teacher architecture 'resnet20'"),
        ([str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_list_shows_every_kind_of_name():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    for name in ("resnet32x4", "ShuffleV2", "timm:<name>", "shapes", "cifar100", "imagefolder", "kd", "vanilla",
                 "quickstart", "resnet32x4-resnet8x4", "recipes/quickstart.yaml"):
        assert name in result.stdout, name


def test_a_distiller_defined_outside_the_package_runs_through_the_cli(tmp_path):
    (tmp_path / "my_distiller.py").write_text('''
from dataclasses import dataclass
import torch.nn.functional as F
from kd.distillers import DISTILLERS, BaseOptions, Distiller


@dataclass
class Options(BaseOptions):
    match_weight: float = 1.0


@DISTILLERS.register("logit_match")
class LogitMatch(Distiller):
    """Match the teacher's logits with mean squared error."""
    Options = Options

    def forward(self, images, targets, teacher, epoch=0):
        logits = self.student(images)
        return logits, {"ce": self.ce(logits, targets),
                        "match": self.options.match_weight * F.mse_loss(logits, teacher.logits)}
''')
    recipe = small_recipe(tmp_path, methods="[logit_match]", extra="imports: [my_distiller.py]\nlogit_match: {match_weight: 0.5}\n")
    result = run_cli(str(recipe))
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").iterdir())
    rows = list(csv.DictReader(open(run / "logit_match-s0" / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["loss_match"]) > 0
    assert "match_weight: 0.5" in (run / "recipe.yaml").read_text()


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_students_and_teacher_train_on_the_cpu(tmp_path):
    """compile: true is the GPU configuration; the same torch.compile path runs (slowly) on the CPU."""
    recipe = small_recipe(tmp_path, methods="[vanilla, ccm]")
    result = run_cli(str(recipe), "compile=true")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").iterdir())
    for label in ("vanilla-s0", "ccm-s0"):
        row = next(csv.DictReader(open(run_dir / label / "metrics.csv")))
        assert math.isfinite(float(row["loss"])) and 0 <= float(row["test_top1"]) <= 100
