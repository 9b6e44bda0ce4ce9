"""FitNets and AT: losses against the benchmark's reference values, regressor sizing, stage pairing,
and where the gradients go."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kd.distillers.at  # noqa: F401  (registration, until kd/distillers/__init__.py imports them)
import kd.distillers.fitnets  # noqa: F401
from kd.data import DataSpec
from kd.options import build as build_options
from kd.distillers import DISTILLERS
from kd.distillers.at import ATOptions, at_loss
from kd.distillers.fitnets import hint_loss
from kd.errors import KDError
from kd.models import create_model


def make(name, student="resnet8", teacher="resnet14", **options):
    """A distiller built the way kd/run.py builds one, plus its teacher (parameters left requiring grad)."""
    torch.manual_seed(0)
    t = create_model(teacher, 10).eval()
    s = create_model(student, 10)
    cls = DISTILLERS.get(name)
    return cls(s, t, cls.Options(**options), DataSpec(10, (32, 32))), t


def batch(teacher, n=2, grad=False):
    """Images, targets and the teacher's Features; grad=True runs the teacher with autograd on, so that a
    distiller that let gradient into the teacher's outputs would reach its parameters."""
    torch.manual_seed(1)
    images, targets = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    with torch.set_grad_enabled(grad):
        return images, targets, teacher.forward_features(images)


def step(distiller, teacher, epoch=0, n=2, grad=False):
    images, targets, t_out = batch(teacher, n, grad)
    logits, losses = distiller(images, targets, t_out, epoch)
    sum(losses.values()).backward()
    return logits, losses, t_out


def student_stages(distiller, images):
    """The student's stage maps for the batch (train-mode BN uses batch statistics: the distiller saw the same)."""
    with torch.no_grad():
        return distiller.student.forward_features(images).stages


def ref_attention(f):
    """AT map, written out: channel mean of f^2, each sample's map divided by its L2 norm over H x W."""
    a = (f.float() ** 2).sum(1).flatten(1) / f.shape[1]
    return a / a.pow(2).sum(1, keepdim=True).sqrt()


def ref_at_pair(s, t):
    """Pool the larger feature map to the smaller size (per direction), then the mean squared map difference."""
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    s = F.adaptive_avg_pool2d(s, size) if s.shape[2:] != size else s
    t = F.adaptive_avg_pool2d(t, size) if t.shape[2:] != size else t
    return ((ref_attention(s) - ref_attention(t)) ** 2).mean()


def ref_hint(regressor, student_map, teacher_map):
    """The regressor's conv -> BN -> ReLU applied leaf by leaf, then the mean squared error to the hint."""
    conv, bn, _ = regressor
    return ((torch.relu(bn(conv(student_map))) - teacher_map) ** 2).mean()


# --- reference values ---------------------------------------------------------------------------------------

def test_hint_and_at_losses_match_reference(reference_losses):
    hints = [c for c in reference_losses if c["loss"] == "hint_mse"]
    ats = [c for c in reference_losses if c["loss"] == "at"]
    assert hints and ats
    for c in hints:
        value = hint_loss(torch.tensor(c["student_regressed"]), torch.tensor(c["teacher_feature"]))
        assert value.item() == pytest.approx(c["value"], rel=1e-5)
    # the cases cover equal sizes, a larger student map and a larger teacher map
    for c in ats:
        value = at_loss(torch.tensor(c["student_feature"]), torch.tensor(c["teacher_feature"]), c["p"])
        assert value.item() == pytest.approx(c["value"], rel=1e-5)


# --- FitNets ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s_stage, t_stage, conv", [
    (1, 1, nn.Conv2d),           # 16x16 -> 16x16: 1x1 conv
    (0, 1, nn.Conv2d),           # 32x32 -> 16x16: stride-2 conv
    (1, 0, nn.ConvTranspose2d),  # 16x16 -> 32x32: transposed conv
])
def test_regressor_is_chosen_from_the_stage_sizes(s_stage, t_stage, conv):
    distiller, teacher = make("fitnets", student_stage=s_stage, teacher_stage=t_stage)
    first = distiller.regressor[0]
    assert type(first) is conv and isinstance(distiller.regressor[1], nn.BatchNorm2d)
    sizes = {(1, 1): ((1, 1), (1, 1)), (0, 1): ((3, 3), (2, 2)), (1, 0): ((4, 4), (2, 2))}[(s_stage, t_stage)]
    assert (first.kernel_size, first.stride) == sizes
    images, _, t_out = batch(teacher)
    regressed = distiller.regressor(distiller.student.forward_features(images).stages[s_stage])
    assert regressed.shape == t_out.stages[t_stage].shape


def test_default_stages_are_the_middle_ones_and_negative_indices_count_from_the_end():
    distiller, _ = make("fitnets")
    assert (distiller.student_stage, distiller.teacher_stage) == (1, 1)
    distiller, _ = make("fitnets", student_stage=-1, teacher_stage=-1)
    assert (distiller.student_stage, distiller.teacher_stage) == (2, 2)


def test_impossible_sizes_and_bad_indices_are_refused_before_training():
    cls = DISTILLERS.get("fitnets")
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    bad_size = cls.Options(student_stage=0, teacher_stage=2)  # 32x32 vs 8x8
    with pytest.raises(KDError, match=r"stage 0 \(16x32x32\).*stage 2 \(64x8x8\).*student_stage"):
        cls.check_models(student, teacher, bad_size, DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match="student_stage"):
        cls(student, teacher, bad_size, DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=r"fitnets.teacher_stage: stage index 3 .*-3..2.*64x8x8"):
        cls.check_models(student, teacher, cls.Options(teacher_stage=3), DataSpec(10, (32, 32)))
    cls.check_models(student, teacher, cls.Options(), DataSpec(10, (32, 32)))  # the default pair is fine


def test_fitnets_gradients_reach_the_regressor_and_student_but_not_the_teacher():
    distiller, teacher = make("fitnets")
    regressor = list(distiller.regressor.parameters())
    assert distiller.extra_parameter_count() == sum(p.numel() for p in regressor) > 0
    trainable = distiller.trainable_parameters()
    assert all(any(p is q for q in trainable) for p in regressor)
    assert any(k.startswith("regressor.") for k in distiller.state_dict())
    assert not any(k.startswith("_teacher") for k in distiller.state_dict())
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    assert all(p.requires_grad for p in teacher.parameters())
    _, losses, t_out = step(distiller, teacher, grad=True)  # the teacher's stages carry its graph
    assert t_out.stages[distiller.teacher_stage].requires_grad
    assert set(losses) == {"ce", "hint"} and losses["hint"].item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in regressor)
    assert all(p.grad is None for p in teacher.parameters())
    before = [p.detach().clone() for p in regressor]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, regressor))


def test_hint_term_is_weighted_mse_of_the_regressed_map():
    distiller, teacher = make("fitnets", feat_weight=100.0)
    images, targets, t_out = batch(teacher)
    distiller.eval()  # eval BN so that a second pass gives the same regressed map
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        regressed = distiller.regressor(distiller.student.forward_features(images).stages[1])
    expected = 100.0 * torch.nn.functional.mse_loss(regressed, t_out.stages[1])
    assert losses["hint"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_hint_epochs_train_only_the_layers_up_to_the_hint_stage():
    distiller, teacher = make("fitnets", hint_epochs=2)  # hint stage 1 = resnet8's layer2
    student = distiller.student
    logits, losses, _ = step(distiller, teacher, epoch=1)
    assert set(losses) == {"hint"} and logits.shape == (2, 10)
    for name in ("layer3", "fc"):
        assert all(p.grad is None for p in getattr(student, name).parameters()), name
    for name in ("conv1", "layer1", "layer2"):
        assert all(p.grad is not None for p in getattr(student, name).parameters()), name
    assert all(p.grad is not None for p in distiller.regressor.parameters())
    distiller.zero_grad(set_to_none=True)
    _, losses, _ = step(distiller, teacher, epoch=2)
    assert set(losses) == {"ce", "hint"}
    assert all(p.grad is not None for p in student.fc.parameters())


def test_losses_are_float32_under_autocast():
    distiller, teacher = make("fitnets")
    images, targets, t_out = batch(teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(images, targets, t_out)
    assert all(v.dtype == torch.float32 for v in losses.values())
    distiller, teacher = make("at")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(images, targets, t_out)
    assert losses["at"].dtype == torch.float32


@pytest.mark.parametrize("teacher, student, kind, stages", [
    ("resnet32x4", "ShuffleV1", nn.ConvTranspose2d, (1, 1)),  # student 480x8x8 -> teacher 128x16x16
    ("vgg13", "MobileNetV2", nn.Conv2d, (1, 1)),             # student 16x8x8 -> teacher 256x8x8
])
def test_fitnets_heterogeneous_pairs_work_with_default_stages(teacher, student, kind, stages):
    cls = DISTILLERS.get("fitnets")
    cls.check_models(create_model(student, 10), create_model(teacher, 10), cls.Options(), DataSpec(10, (32, 32)))
    distiller, t = make("fitnets", student, teacher)
    assert type(distiller.regressor[0]) is kind
    assert (distiller.student_stage, distiller.teacher_stage) == stages
    images, targets, t_out = batch(t)
    logits, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", "hint"}
    with torch.no_grad():
        s_map = student_stages(distiller, images)[stages[0]]
        expected = 100.0 * ref_hint(distiller.regressor, s_map, t_out.stages[stages[1]])
    assert losses["hint"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in distiller.regressor.parameters())


# --- AT -----------------------------------------------------------------------------------------------------

def test_at_default_pairs_every_stage_and_adds_no_parameters():
    distiller, teacher = make("at")  # resnet14 -> resnet8, 3 stages each
    assert distiller.pairs == [(0, 0), (1, 1), (2, 2)]
    assert distiller.extra_parameter_count() == 0
    assert all(p.requires_grad for p in teacher.parameters())
    _, losses, t_out = step(distiller, teacher, grad=True)  # the teacher's stages carry its graph
    assert all(s.requires_grad for s in t_out.stages)
    assert set(losses) == {"ce", "at"}
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())


def test_at_term_is_the_weighted_sum_over_pairs():
    distiller, teacher = make("at", feat_weight=1000.0)
    distiller.eval()
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out)
        stages = distiller.student.forward_features(images).stages
    expected = 1000.0 * sum(ref_at_pair(s, t) for s, t in zip(stages, t_out.stages))
    assert losses["at"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("teacher, student, n_pairs", [("resnet32x4", "ShuffleV1", 3), ("vgg13", "MobileNetV2", 4)])
def test_at_heterogeneous_pairs_with_equal_stage_counts(teacher, student, n_pairs):
    cls = DISTILLERS.get("at")
    cls.check_models(create_model(student, 10), create_model(teacher, 10), cls.Options(), DataSpec(10, (32, 32)))
    distiller, t = make("at", student, teacher)
    assert distiller.pairs == [(i, i) for i in range(n_pairs)]
    images, targets, t_out = batch(t)
    _, losses = distiller(images, targets, t_out)
    stages = student_stages(distiller, images)
    expected = 1000.0 * sum(ref_at_pair(stages[i], t_out.stages[i]) for i in range(n_pairs))
    assert losses["at"].item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0


def test_at_unequal_stage_counts_need_explicit_pairs():
    cls = DISTILLERS.get("at")
    student, teacher = create_model("resnet8", 10), create_model("ResNet50", 10).eval().requires_grad_(False)
    with pytest.raises(KDError, match=r"student has 3 stages and the teacher 4.*at\.pairs"):
        cls.check_models(student, teacher, cls.Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match="at.pairs"):
        cls(student, teacher, cls.Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=r"at.pairs: stage index 4 .*teacher has 4 stages.*-4..3"):
        cls.check_models(student, teacher, cls.Options(pairs=[[0, 4]]), DataSpec(10, (32, 32)))
    options = build_options(ATOptions, {"pairs": [[0, 1], [1, 2], [-1, -1]]}, "recipe", prefix="at.")
    cls.check_models(student, teacher, options, DataSpec(10, (32, 32)))
    distiller = cls(student, teacher, options, DataSpec(10, (32, 32)))
    assert distiller.pairs == [(0, 1), (1, 2), (2, 3)]
    images, targets, t_out = batch(teacher)
    _, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", "at"}
    stages = student_stages(distiller, images)  # resnet8: 32, 16, 8 px; ResNet50: 32, 16, 8, 4 px
    expected = 1000.0 * sum(ref_at_pair(stages[s], t_out.stages[t]) for s, t in [(0, 1), (1, 2), (2, 3)])
    assert losses["at"].item() == pytest.approx(expected.item(), rel=1e-5)
