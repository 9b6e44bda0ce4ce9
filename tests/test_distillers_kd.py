"""The KD loss against the benchmark's reference values, and the vanilla/kd distillers' behaviour."""
import pytest
import torch

from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.kd import kd_loss
from kd.models import create_model


def test_kd_loss_matches_reference(reference_losses):
    cases = [c for c in reference_losses if c["loss"] == "kd"]
    assert {c["T"] for c in cases} == {1.0, 4.0}
    for case in cases:
        value = kd_loss(torch.tensor(case["student_logits"]), torch.tensor(case["teacher_logits"]), case["T"])
        assert value.item() == pytest.approx(case["value"], rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_scales_with_t_squared():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1), reduction="sum") / 8
    assert kd_loss(s, t, 2.0).item() == pytest.approx(4 * kl.item(), rel=1e-5)


def build(name, teacher=None, **options):
    cls = DISTILLERS.get(name)
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    return cls(student, teacher, cls.Options(**options), DataSpec(10, (32, 32)))


def test_kd_distiller_terms_are_weighted_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    teacher = create_model("resnet14", 10).eval()
    assert all(p.requires_grad for p in teacher.parameters())
    distiller = build("kd", teacher, ce_weight=0.1, kd_weight=0.9, T=4.0)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    t_out = teacher.forward_features(images)  # autograd on: the teacher's logits carry its graph
    assert t_out.logits.requires_grad
    logits, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", "kd"}
    ce = -logits.log_softmax(1)[torch.arange(4), targets].mean()
    assert losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
    p_t = (t_out.logits / 4).softmax(1)
    kl = (p_t * (p_t.log() - (logits / 4).log_softmax(1))).sum(1).mean()  # batch mean of KL(t || s)
    assert losses["kd"].item() == pytest.approx(0.9 * 16 * kl.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())
    # the teacher is held by reference only: not in parameters(), the optimiser or the checkpoint
    assert not any(k.startswith("_teacher") for k in distiller.state_dict())
    assert sum(p.numel() for p in distiller.trainable_parameters()) == sum(p.numel() for p in distiller.student.parameters())
    assert distiller.extra_parameter_count() == 0


def test_vanilla_is_cross_entropy_only():
    distiller = build("vanilla")
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = distiller(images, targets, None)
    assert list(losses) == ["ce"]
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)
    assert not DISTILLERS.get("vanilla").needs_teacher and DISTILLERS.get("kd").needs_teacher
