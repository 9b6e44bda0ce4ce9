"""VID and OFD: losses against the reference code's values, the BN-derived margins, stage pairing, refusals,
and where the gradients go."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kd.distillers.ofd  # noqa: F401  (registration, until kd/distillers/__init__.py imports them)
import kd.distillers.vid  # noqa: F401
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.ofd import OFDOptions, bn_margin, ofd_loss
from kd.distillers.vid import VIDOptions, vid_loss
from kd.errors import KDError
from kd.models import create_model
from kd.options import build as build_options

from conftest import shared_file

SPEC = DataSpec(10, (32, 32))


@pytest.fixture(scope="module")
def method_cases() -> list[dict]:
    return json.loads(shared_file("fixtures", "reference_losses_methods.json").read_text())["cases"]


def randomise_bns(model: nn.Module, seed: int = 3) -> nn.Module:
    """Random BN affine parameters and statistics, so margins differ per channel and maps are partly negative."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.rand(m.num_features, generator=g) - 0.5
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def make(name, student="resnet8", teacher="resnet14", grad_teacher=False, **options):
    """A distiller built the way kd/run.py builds one, plus its teacher (requires_grad on when asked)."""
    torch.manual_seed(0)
    t = randomise_bns(create_model(teacher, 10)).eval().requires_grad_(grad_teacher)
    s = create_model(student, 10)
    cls = DISTILLERS.get(name)
    return cls(s, t, build_options(cls.Options, options, "recipe", prefix=f"{name}."), SPEC), t


def batch(teacher, n=2, with_grad=False):
    torch.manual_seed(1)
    images, targets = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    with torch.set_grad_enabled(with_grad):
        return images, targets, teacher.forward_features(images)


# --- reference values ---------------------------------------------------------------------------------------

def test_vid_loss_matches_reference(method_cases):
    cases = [c for c in method_cases if c["loss"] == "vid"]
    assert cases
    for c in cases:
        value = vid_loss(torch.tensor(c["pred_mean"]), torch.tensor(c["teacher_feat"]), torch.tensor(c["log_scale"]))
        assert value.item() == pytest.approx(c["value"], rel=1e-5)


def test_ofd_loss_matches_reference(method_cases):
    cases = [c for c in method_cases if c["loss"] == "ofd_feat"]
    assert cases
    for c in cases:
        value = ofd_loss(torch.tensor(c["source"]), torch.tensor(c["target"]), torch.tensor(c["margin"]))
        assert value.item() == pytest.approx(c["value"], rel=1e-5)


# --- the margin -----------------------------------------------------------------------------------------------

def expected_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma^2), or -3|gamma| where P(x < 0) <= 0.001, written out with math."""
    s = abs(gamma)
    tail = 0.5 * math.erfc(beta / s / math.sqrt(2))  # Phi(-beta/s)
    if tail <= 1e-3:
        return -3 * s
    return beta - s * math.exp(-0.5 * (beta / s) ** 2) / math.sqrt(2 * math.pi) / tail


def test_margin_of_a_bn_with_known_parameters():
    bn = nn.BatchNorm2d(5)
    bn.weight.data = torch.tensor([2.0, -2.0, 1.0, 0.5, 1.0])
    bn.bias.data = torch.tensor([1.0, 1.0, 4.0, -1.0, 0.0])
    margin = bn_margin(bn.weight, bn.bias)
    # gamma 2, beta 1: z = 0.5, phi(0.5) = 0.35206533, Phi(-0.5) = 0.30853754 -> 1 - 2 * 1.14107777
    assert margin[0].item() == pytest.approx(-1.2821555, abs=1e-6)
    assert margin[1].item() == pytest.approx(margin[0].item())  # the sign of gamma does not matter
    assert margin[2].item() == -3.0  # P(x < 0) = Phi(-4) < 0.001
    assert margin[4].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # half-normal mean
    for i in range(5):
        assert margin[i].item() == pytest.approx(expected_margin(bn.weight[i].item(), bn.bias[i].item()), rel=1e-6)
    # and it is the mean of the negative part: a sampled check independent of the formula
    g = torch.Generator().manual_seed(0)
    x = 1.0 + 2.0 * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    assert x[x < 0].mean().item() == pytest.approx(margin[0].item(), abs=5e-3)


def test_margin_of_a_zero_weight_bn_is_finite():
    margin = bn_margin(torch.zeros(3), torch.tensor([-0.5, 0.0, 0.5]))
    assert margin.tolist() == [-0.5, 0.0, 0.0]


@pytest.mark.parametrize("teacher, bns", [
    ("resnet14", lambda t: [t.layer1[-1].bn2, t.layer2[-1].bn2, t.layer3[-1].bn2]),
    ("wrn_16_1", lambda t: [t.block2.layer[0].bn1, t.block3.layer[0].bn1, t.bn1]),
])
def test_ofd_margins_come_from_the_teachers_bns_before_each_stage_relu(teacher, bns):
    distiller, t = make("ofd", teacher=teacher)
    margins = distiller.margins()
    assert len(margins) == 3
    for margin, bn in zip(margins, bns(t)):
        want = torch.tensor([expected_margin(g, b) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())])
        assert margin.shape == (1, bn.num_features, 1, 1)
        torch.testing.assert_close(margin.flatten(), want, rtol=1e-5, atol=1e-6)
        assert (margin < 0).all()
    # margins are state, not parameters: saved with the distiller, never optimised
    assert {f"margin{i}" for i in range(3)} <= set(distiller.state_dict())
    assert not any(name.startswith("margin") for name, _ in distiller.named_parameters())


# --- VID ------------------------------------------------------------------------------------------------------

def test_vid_regressors_and_initial_variance():
    distiller, _ = make("vid", student="resnet8x4", teacher="resnet14")  # 64/128/256 -> 16/32/64 channels
    assert distiller.pairs == [(0, 0), (1, 1), (2, 2)]
    for regressor, (cs, ct) in zip(distiller.regressors, [(64, 16), (128, 32), (256, 64)]):
        kinds = [type(m) for m in regressor]
        assert kinds == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
        convs = [regressor[0], regressor[2], regressor[4]]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(cs, ct), (ct, ct), (ct, ct)]
        assert all(c.kernel_size == (1, 1) and c.bias is None for c in convs)
    for log_scale, ct in zip(distiller.log_scales, (16, 32, 64)):
        assert log_scale.shape == (ct,)
        torch.testing.assert_close(F.softplus(log_scale) + 1e-5, torch.full((ct,), 5.0))


def test_vid_gradients_reach_regressors_log_scales_and_student_but_not_the_teacher():
    distiller, teacher = make("vid", grad_teacher=True)
    extra = list(distiller.regressors.parameters()) + list(distiller.log_scales)
    assert distiller.extra_parameter_count() == sum(p.numel() for p in extra) > 0
    trainable = distiller.trainable_parameters()
    assert all(any(p is q for q in trainable) for p in extra)
    assert {"log_scales.0", "regressors.0.0.weight"} <= set(distiller.state_dict())
    images, targets, t_out = batch(teacher, with_grad=True)
    assert t_out.stages[0].requires_grad  # the teacher's maps carry a graph: the distiller must cut it
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    _, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", "vid"} and torch.isfinite(losses["vid"])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra)
    assert all(p.grad is not None for p in distiller.student.parameters())
    before = [p.detach().clone() for p in distiller.log_scales]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, distiller.log_scales))


def nll(mean, target, variance):
    return (0.5 * ((mean - target) ** 2 / variance + math.log(variance))).mean()


def test_vid_term_is_the_weighted_sum_of_gaussian_nlls():
    distiller, teacher = make("vid", feat_weight=2.0)
    distiller.eval()
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        stages = distiller.student.forward_features(images).stages
        expected = 2.0 * sum(nll(r(s), t, 5.0) for r, s, t in zip(distiller.regressors, stages, t_out.stages))
    assert losses["vid"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_vid_pools_the_larger_map_to_the_smaller():
    # resnet8 stages 32/16/8 px; vgg8's 16/8/4/4 px: student maps are larger, so they are pooled
    distiller, teacher = make("vid", student="resnet8", teacher="vgg8", pairs=[[0, 0], [2, 1]])
    distiller.eval()
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        stages = distiller.student.forward_features(images).stages
        pooled = [F.adaptive_avg_pool2d(stages[0], 16), stages[2]]
        expected = sum(nll(r(s), t_out.stages[t], 5.0) for r, s, t in zip(distiller.regressors, pooled, (0, 1)))
    assert losses["vid"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the other way round: the teacher's larger map is pooled to the student's
    distiller, teacher = make("vid", student="vgg8", teacher="resnet8", pairs=[[0, 0]])
    distiller.eval()
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        stage = distiller.student.forward_features(images).stages[0]
        expected = nll(distiller.regressors[0](stage), F.adaptive_avg_pool2d(t_out.stages[0], 16), 5.0)
    assert losses["vid"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_vid_refusals():
    cls = DISTILLERS.get("vid")
    student, teacher = create_model("resnet8", 10), create_model("vgg8", 10)
    with pytest.raises(KDError, match=r"vid: the student has 3 stages and the teacher 4.*vid\.pairs.*16x32x32"):
        cls.check_models(student, teacher, VIDOptions(), SPEC)
    with pytest.raises(KDError, match="vid.pairs"):
        cls(student, teacher, VIDOptions(), SPEC)
    with pytest.raises(KDError, match=r"vid.pairs: stage index 4 .*teacher has 4 stages"):
        cls.check_models(student, teacher, VIDOptions(pairs=[[0, 4]]), SPEC)
    with pytest.raises(KDError, match=r"init_pred_var .* must be larger than vid.eps"):
        cls.check_models(student, create_model("resnet14", 10), VIDOptions(init_pred_var=1e-6), SPEC)
    cls.check_models(student, teacher, VIDOptions(pairs=[[0, 1], [1, 2], [-1, -1]]), SPEC)


# --- OFD ------------------------------------------------------------------------------------------------------

def test_ofd_connectors_and_gradients():
    distiller, teacher = make("ofd", grad_teacher=True)
    for connector, c in zip(distiller.connectors, (16, 32, 64)):
        conv, bn = connector
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == c
    extra = list(distiller.connectors.parameters())
    assert distiller.extra_parameter_count() == sum(p.numel() for p in extra) > 0
    trainable = distiller.trainable_parameters()
    assert all(any(p is q for q in trainable) for p in extra)
    images, targets, t_out = batch(teacher, n=4, with_grad=True)
    assert t_out.preact_stages[0].requires_grad
    _, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", "ofd"}
    assert torch.isfinite(losses["ofd"]) and losses["ofd"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra)
    # the student learns through its pre-ReLU maps, down to its first layer
    assert distiller.student.conv1.weight.grad.abs().sum() > 0


def partial_l2(source, target, margin):
    """OFD's partial L2 in its paper form: target clipped from below at the margin, squared error kept
    where the student exceeds that target or the teacher is positive; summed over C, H, W, batch mean."""
    clipped = torch.max(target, margin)
    keep = (source > clipped) | (target > 0)
    return ((source - clipped) ** 2 * keep).sum() / source.shape[0]


def test_ofd_term_is_the_stage_weighted_partial_l2():
    distiller, teacher = make("ofd")
    distiller.eval()
    images, targets, t_out = batch(teacher, n=3)
    bns = [teacher.layer1[-1].bn2, teacher.layer2[-1].bn2, teacher.layer3[-1].bn2]
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        preact = distiller.student.forward_features(images).preact_stages
        expected = 0.0
        for i, (c, s, t, bn) in enumerate(zip(distiller.connectors, preact, t_out.preact_stages, bns)):
            margin = torch.tensor([expected_margin(g, b) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())])
            expected += partial_l2(c(s), t, margin.view(1, -1, 1, 1)) / (4, 2, 1)[i]
    assert losses["ofd"].item() == pytest.approx(0.001 * expected.item(), rel=1e-5)


@pytest.mark.parametrize("teacher, student", [("resnet32x4", "ShuffleV1"), ("vgg13", "MobileNetV2"),
                                              ("wrn_16_2", "wrn_16_1")])
def test_ofd_heterogeneous_and_benchmark_pairs_train(teacher, student):
    cls = DISTILLERS.get("ofd")
    cls.check_models(create_model(student, 10), create_model(teacher, 10), OFDOptions(), SPEC)
    distiller, t = make("ofd", student=student, teacher=teacher)
    images, targets, t_out = batch(t)
    distiller.eval()  # eval BN so that a second pass gives the same maps
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():  # each pair: connector, teacher map pooled to the student's size, halved per stage back
        preact = distiller.student.forward_features(images).preact_stages
        n = len(distiller.pairs)
        expected = 0.0
        for i, ((a, b), connector, margin) in enumerate(zip(distiller.pairs, distiller.connectors, distiller.margins())):
            source = connector(preact[a])
            target = F.adaptive_avg_pool2d(t_out.preact_stages[b], source.shape[-1])
            expected += partial_l2(source, target, margin) / 2 ** (n - 1 - i)
    assert losses["ofd"].item() == pytest.approx(0.001 * expected.item(), rel=1e-5) and expected.item() > 0
    distiller.train()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in distiller.connectors.parameters())


def test_ofd_pools_the_teacher_map_to_the_students_size():
    distiller, teacher = make("ofd", student="vgg8", teacher="resnet14", pairs=[[0, 0]])  # 16 px <- 32 px
    distiller.eval()
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        source = distiller.connectors[0](distiller.student.forward_features(images).preact_stages[0])
        target = F.adaptive_avg_pool2d(t_out.preact_stages[0], 16)
        expected = partial_l2(source, target, distiller.margin0)  # the margin itself is checked above
    assert losses["ofd"].item() == pytest.approx(0.001 * expected.item(), rel=1e-5)


def test_ofd_refusals():
    cls = DISTILLERS.get("ofd")
    resnet8, resnet14 = create_model("resnet8", 10), create_model("resnet14", 10)
    with pytest.raises(KDError, match=r"student 'ShuffleV2' does not give them"):
        cls.check_models(create_model("ShuffleV2", 10), resnet14, OFDOptions(), SPEC)
    for teacher in ("MobileNetV2", "ShuffleV1"):
        with pytest.raises(KDError, match=rf"teacher '{teacher}' does not give them.*resnet8"):
            cls.check_models(resnet8, create_model(teacher, 10), OFDOptions(), SPEC)
    with pytest.raises(KDError, match=r"teacher '.*' does not give them"):
        cls(resnet8, create_model("MobileNetV2", 10), OFDOptions(), SPEC)
    vgg8 = create_model("vgg8", 10)
    with pytest.raises(KDError, match=r"ofd: the student has 3 stages and the teacher 4.*ofd\.pairs"):
        cls.check_models(resnet8, vgg8, OFDOptions(), SPEC)
    # a teacher map smaller than the student's would have to be enlarged
    with pytest.raises(KDError, match=r"teacher's stage 0 \(128x16x16\) is smaller than the student's stage 0 \(16x32x32\)"):
        cls.check_models(resnet8, vgg8, OFDOptions(pairs=[[0, 0]]), SPEC)
    cls.check_models(resnet8, vgg8, OFDOptions(pairs=[[1, 0], [2, 1]]), SPEC)


def test_losses_are_float32_under_autocast():
    for name in ("vid", "ofd"):
        distiller, teacher = make(name)
        images, targets, t_out = batch(teacher)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, losses = distiller(images, targets, t_out)
        assert all(v.dtype == torch.float32 for v in losses.values()), name
        assert torch.isfinite(losses[name])
