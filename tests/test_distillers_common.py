"""What every registered distiller must do, checked for each one: the teacher gets no gradient and is never
called, the student and the extra modules learn, and a run of every method trains, resumes exactly from a
checkpoint and runs under torchrun."""
import csv
import shutil

import pytest
import torch

from conftest import run_cli
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.models import create_model
from test_cli_run import small_recipe

METHODS = DISTILLERS.names()
LATE_EPOCH = 1000  # past every warm-up, so that each term is active


def one_step(name, student_arch="resnet8", teacher_arch="resnet14"):
    """A distiller with a teacher that COULD receive gradient (requires_grad on, Features computed with autograd),
    one forward and backward; returns (distiller, teacher, losses, teacher_calls)."""
    torch.manual_seed(0)
    teacher = create_model(teacher_arch, 10).eval()
    student = create_model(student_arch, 10)
    cls = DISTILLERS.get(name)
    distiller = cls(student, teacher, cls.Options(), DataSpec(10, (32, 32), train_size=16,
                                                            train_labels=torch.arange(16) % 10))
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    t_out = teacher.forward_features(images) if cls.needs_teacher else None
    calls = []
    for entry in ("forward", "forward_features"):
        original = getattr(teacher, entry)
        setattr(teacher, entry, lambda *a, _f=original, _e=entry, **k: (calls.append(_e), _f(*a, **k))[1])
    extra = {"index": torch.arange(8)} if cls.needs_index else {}
    logits, losses = distiller(images, targets, t_out, LATE_EPOCH, **extra)
    sum(losses.values()).backward()
    return distiller, teacher, logits, losses, calls


@pytest.mark.parametrize("name", METHODS)
def test_the_teacher_gets_no_gradient_and_is_never_run_by_the_distiller(name):
    distiller, teacher, logits, losses, calls = one_step(name)
    assert calls == [], f"{name} ran the teacher itself"
    assert all(p.grad is None for p in teacher.parameters()), f"{name} sent gradient into the teacher"
    assert logits.shape == (8, 10)
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    assert any(v.item() != 0 for v in losses.values())


@pytest.mark.parametrize("name", METHODS)
def test_the_student_and_every_extra_module_learn(name):
    distiller, _, _, losses, _ = one_step(name)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    for module in distiller.extra_modules():
        for pname, p in module.named_parameters():
            assert id(p) in trainable, f"{name}: {pname} is not optimised"
            assert p.grad is not None, f"{name}: extra parameter {pname} gets no gradient"
    assert distiller.extra_parameter_count() == sum(p.numel() for m in distiller.extra_modules() for p in m.parameters())
    # whatever the distiller keeps beyond the student is in its state dict, so checkpoints carry it
    state = distiller.state_dict()
    for module_name, module in distiller.named_children():
        for key in module.state_dict():
            assert f"{module_name}.{key}" in state


def metric_rows(path):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in csv.DictReader(open(path))]


def test_every_method_trains_and_resumes_exactly_from_its_checkpoint(tmp_path):
    recipe = small_recipe(tmp_path, methods="[all]")
    done = run_cli(str(recipe), "epochs=2", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (whole,) = list((tmp_path / "runs").iterdir())
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    (cut / "summary.csv").unlink()
    for name in METHODS:  # as if killed after epoch 1: the previous checkpoint becomes the last one
        checkpoints = cut / f"{name}-s0" / "checkpoints"
        (checkpoints / "last.pt.prev").replace(checkpoints / "last.pt")
        assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run_cli("--resume", str(cut), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in METHODS:
        label = f"{name}-s0"
        assert metric_rows(cut / label / "metrics.csv") == metric_rows(whole / label / "metrics.csv"), name
        ours = torch.load(cut / label / "checkpoints" / "last.pt", weights_only=True)["distiller"]
        theirs = torch.load(whole / label / "checkpoints" / "last.pt", weights_only=True)["distiller"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name


def test_every_method_runs_under_torchrun_with_two_processes(tmp_path):
    from test_distributed import torchrun

    recipe = small_recipe(tmp_path, methods="[all]")
    result = torchrun(str(recipe), "batch_size=16", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    for name in METHODS:
        rows = list(csv.DictReader(open(run / f"{name}-s0" / "metrics.csv")))
        assert [r["epoch"] for r in rows] == ["1"] and 0 <= float(rows[0]["test_top1"]) <= 100
