"""ReviewKD: the hierarchical context loss against the reference's value, ABF shapes and wiring, stage pairing
and its refusals, the warm-up schedule, and where the gradients go."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kd.distillers.reviewkd  # noqa: F401  (registration, until kd/distillers/__init__.py imports it)
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.reviewkd import ReviewKDOptions, hcl_loss
from kd.errors import KDError
from kd.models import create_model
from kd.models.features import Features
from kd.options import build as build_options
from conftest import shared_file

SPEC = DataSpec(10, (32, 32))


def make(student="resnet8", teacher="resnet14", teacher_grad=False, **options):
    """A reviewkd distiller built the way kd/run.py builds one, plus its teacher."""
    torch.manual_seed(0)
    t = create_model(teacher, 10).eval().requires_grad_(teacher_grad)
    s = create_model(student, 10)
    cls = DISTILLERS.get("reviewkd")
    return cls(s, t, cls.Options(**options), SPEC), t


def batch(teacher, n=4, autograd=False):
    torch.manual_seed(1)
    images, targets = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    with torch.set_grad_enabled(autograd):
        return images, targets, teacher.forward_features(images)


def teacher_levels(t_out):
    """The teacher's targets: its stage maps before their last ReLU (as the reference), then the pooled feature."""
    assert t_out.preact_stages is not None and any((m < 0).any() for m in t_out.preact_stages)
    return list(t_out.preact_stages) + [t_out.pre_pool.mean((2, 3), keepdim=True)]


# --- the loss against the reference -------------------------------------------------------------------------

def test_hcl_matches_the_reference_value():
    cases = json.loads(shared_file("fixtures", "reference_losses_methods.json").read_text())["cases"]
    (case,) = [c for c in cases if c["loss"] == "reviewkd_hcl"]
    student = [torch.tensor(f) for f in case["student_feats"]]
    teacher = [torch.tensor(f) for f in case["teacher_feats"]]
    assert [f.shape[-1] for f in student] == [8, 4, 1]  # all three weighting patterns: 4-2-1, 2-1, none
    assert hcl_loss(student, teacher).item() == pytest.approx(case["value"], rel=1e-5)


def test_hcl_weights_of_a_2x2_map():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 2, 2), torch.randn(3, 5, 2, 2)
    full = ((s - t) ** 2).mean()
    pooled = ((s.mean((2, 3)) - t.mean((2, 3))) ** 2).mean()  # only the 1x1 level is smaller than 2x2
    assert hcl_loss([s], [t]).item() == pytest.approx(((full + 0.5 * pooled) / 1.5).item(), rel=1e-6)


# --- ABF shapes and parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("student, teacher, mid, levels", [
    ("resnet8x4", "resnet32x4", 256, 4),
    ("resnet8", "resnet14", 64, 4),
    ("ShuffleV1", "resnet32x4", 512, 4),   # student maps half the teacher's size: upsampled
    ("MobileNetV2", "vgg13", 512, 5),      # 4 stages each; student 2x2 -> teacher 4x4 at the deepest stage
])
def test_fused_maps_have_the_teacher_shapes(student, teacher, mid, levels):
    cls = DISTILLERS.get("reviewkd")
    cls.check_models(create_model(student, 10), create_model(teacher, 10), cls.Options(), SPEC)
    distiller, t = make(student, teacher)
    assert len(distiller.abfs) == levels and distiller.abfs[0].reduce[0].out_channels == mid
    assert distiller.abfs[-1].attention is None and all(a.attention is not None for a in distiller.abfs[:-1])
    images, _, t_out = batch(t, n=2)
    out = distiller.student.forward_features(images)
    fused = distiller.fuse(list(out.stages) + [out.pre_pool.mean((2, 3), keepdim=True)])
    assert [f.shape for f in fused] == [f.shape for f in teacher_levels(t_out)]


def abf_parameter_count(student_channels, teacher_channels, mid):
    """1x1 conv + BN, 3x3 conv + BN per level; a 1x1 attention conv (with bias) on every level but the deepest."""
    count = sum(cs * mid + 2 * mid + mid * ct * 9 + 2 * ct for cs, ct in zip(student_channels, teacher_channels))
    return count + (len(student_channels) - 1) * (2 * mid * 2 + 2)


@pytest.mark.parametrize("student, teacher, channels, mid", [
    ("resnet8", "resnet14", ((16, 32, 64, 64), (16, 32, 64, 64)), 64),
    ("resnet8x4", "resnet32x4", ((64, 128, 256, 256), (64, 128, 256, 256)), 256),
])
def test_abf_modules_are_the_extra_parameters(student, teacher, channels, mid):
    distiller, _ = make(student, teacher)
    assert distiller.extra_parameter_count() == abf_parameter_count(*channels, mid)
    abf = list(distiller.abfs.parameters())
    trainable = distiller.trainable_parameters()
    assert all(any(p is q for q in trainable) for p in abf)
    assert any(k.startswith("abfs.") for k in distiller.state_dict())


# --- pairing and refusals -----------------------------------------------------------------------------------

def test_unequal_stage_counts_are_refused_until_stages_are_chosen():
    cls = DISTILLERS.get("reviewkd")
    student, teacher = create_model("MobileNetV2", 10), create_model("resnet14", 10).eval()
    with pytest.raises(KDError, match=r"student has 4 stages and the teacher 3.*reviewkd\.student_stages=\[1, 2, 3\]"
                                      r".*3: 160x2x2.*2: 64x8x8"):
        cls.check_models(student, teacher, cls.Options(), SPEC)
    with pytest.raises(KDError, match="reviewkd.student_stages"):
        cls(student, teacher, cls.Options(), SPEC)
    with pytest.raises(KDError, match=r"shallow to deep"):
        cls.check_models(student, teacher, cls.Options(student_stages=[3, 2, 1]), SPEC)
    with pytest.raises(KDError, match=r"reviewkd.student_stages: stage index 4 .*-4..3"):
        cls.check_models(student, teacher, cls.Options(student_stages=[1, 2, 4]), SPEC)
    options = build_options(ReviewKDOptions, {"student_stages": [1, 2, -1]}, "recipe", prefix="reviewkd.")
    cls.check_models(student, teacher, options, SPEC)
    distiller = cls(student, teacher, options, SPEC)
    assert distiller.student_stages == [1, 2, 3] and distiller.teacher_stages == [0, 1, 2]
    images, targets, t_out = batch(teacher, n=2)
    distiller.eval()
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out, 19)  # epoch 19 of the 20-epoch warm-up: weight 20/20
        expected = hand_review(distiller, images, t_out)
    assert losses["review"].item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0


def test_a_student_map_larger_than_its_teacher_map_is_refused():
    cls = DISTILLERS.get("reviewkd")
    student, teacher = create_model("resnet8", 10), create_model("MobileNetV2", 10)
    with pytest.raises(KDError, match=r"student's stage 0 \(16x32x32\) is larger than the teacher's stage 0 "
                                      r"\(12x16x16\).*reviewkd.student_stages / reviewkd.teacher_stages"):
        cls.check_models(student, teacher, cls.Options(teacher_stages=[0, 1, 2]), SPEC)


class NoPrePool(nn.Module):
    """A model whose features end without a spatial map (as a ViT adapter's do)."""
    arch_name = "tokens-only"

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward_features(self, x):
        f = self.conv(x)
        return Features(self.fc(f.mean((2, 3))), [f], None, None)


def test_a_model_without_a_pre_pool_map_is_refused_by_name():
    cls = DISTILLERS.get("reviewkd")
    with pytest.raises(KDError, match=r"teacher 'tokens-only' exposes none"):
        cls.check_models(create_model("resnet8", 10), NoPrePool(), cls.Options(), SPEC)


# --- warm-up and gradients ----------------------------------------------------------------------------------

def test_warmup_follows_the_reference_schedule_and_scales_only_its_term():
    distiller, teacher = make()
    distiller.eval()  # running BN statistics: every pass gives the same maps
    images, targets, t_out = batch(teacher)
    with torch.no_grad():
        runs = {e: distiller(images, targets, t_out, e)[1] for e in (0, 9, 19, 40)}
    full = runs[19]["review"].item()
    assert full > 0
    # the reference's min(epoch / 20, 1) over its 1-based epochs 1, 10, 20, 41
    for epoch, factor in ((0, 0.05), (9, 0.5), (19, 1.0), (40, 1.0)):
        assert runs[epoch]["review"].item() == pytest.approx(factor * full, rel=1e-6)
        assert runs[epoch]["ce"].item() == runs[19]["ce"].item()
    distiller.options.warmup_epochs = 0
    with torch.no_grad():
        assert distiller(images, targets, t_out, 0)[1]["review"].item() == pytest.approx(full, rel=1e-6)


def grads(distiller, teacher, epoch):
    distiller.zero_grad(set_to_none=True)
    images, targets, t_out = batch(teacher)
    _, losses = distiller(images, targets, t_out, epoch)
    sum(losses.values()).backward()
    return ([p.grad.clone() for p in distiller.abfs.parameters()],
            [p.grad.clone() for p in distiller.student.fc.parameters()])


def test_warmup_scales_the_abf_gradients_but_not_the_classifier_gradients():
    distiller, teacher = make()
    abf_early, fc_early = grads(distiller, teacher, 0)
    abf_full, fc_full = grads(distiller, teacher, 19)
    # the classifier reads the pooled feature after it is taken, so only CE reaches it
    assert all(torch.equal(a, b) for a, b in zip(fc_early, fc_full))
    assert all((a - 0.05 * b).norm() <= 1e-5 * (0.05 * b).norm() for a, b in zip(abf_early, abf_full))
    assert any(b.abs().sum() > 0 for b in abf_full)


def test_gradients_reach_the_abfs_and_the_student_but_not_the_teacher():
    distiller, teacher = make(teacher_grad=True)
    images, targets, t_out = batch(teacher, autograd=True)
    assert t_out.stages[0].requires_grad and t_out.pre_pool.requires_grad
    _, losses = distiller(images, targets, t_out, 0)
    assert set(losses) == {"ce", "review"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    for abf in distiller.abfs:
        for name in ("reduce", "project") + (("attention",) if abf.attention is not None else ()):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(abf, name).parameters()), name
    for name in ("conv1", "layer1", "layer2", "layer3"):
        assert all(p.grad is not None for p in getattr(distiller.student, name).parameters()), name


# --- the value of the term, and one training step -----------------------------------------------------------

def bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def hand_review(distiller, images, t_out):
    """The review term recomputed from the ABF weights with functional ops, deepest level first (eval mode)."""
    out = distiller.student.forward_features(images)
    levels = [out.stages[i] for i in distiller.student_stages] + [out.pre_pool.mean((2, 3), keepdim=True)]
    targets = teacher_levels(t_out)
    assert distiller.teacher_stages == list(range(len(t_out.preact_stages)))  # every teacher stage, in order
    fused, residual = [], None
    for abf, x, t in zip(reversed(distiller.abfs), reversed(levels), reversed(targets)):
        x = bn(F.conv2d(x, abf.reduce[0].weight), abf.reduce[1])
        if residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = torch.sigmoid(F.conv2d(torch.cat([x, residual], 1), abf.attention[0].weight, abf.attention[0].bias))
            x = a[:, :1] * x + a[:, 1:] * residual
        x = F.interpolate(x, size=t.shape[-2:], mode="nearest")
        fused.append(bn(F.conv2d(x, abf.project[0].weight, padding=1), abf.project[1]))
        residual = x
    total = 0.0
    for f, t in zip(fused, reversed(targets)):
        level, weight, weights = ((f - t) ** 2).mean(), 1.0, 1.0
        for size in (4, 2, 1):
            if size < f.shape[-1]:
                weight /= 2
                level = level + weight * ((F.adaptive_avg_pool2d(f, size) - F.adaptive_avg_pool2d(t, size)) ** 2).mean()
                weights += weight
        total = total + level / weights
    return total


@pytest.mark.parametrize("student, teacher", [("resnet8", "resnet14"), ("MobileNetV2", "vgg13")])
def test_review_term_equals_a_hand_computation(student, teacher):
    distiller, t = make(student, teacher, feat_weight=5.0)
    distiller.eval()
    images, targets, t_out = batch(t)
    with torch.no_grad():
        _, losses = distiller(images, targets, t_out, 9)
        expected = 5.0 * 0.5 * hand_review(distiller, images, t_out)
    assert losses["review"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_training_step_on_real_models():
    distiller, teacher = make()
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9)
    before_abf = [p.detach().clone() for p in distiller.abfs.parameters()]
    before_teacher = [p.detach().clone() for p in teacher.parameters()]
    images, targets, t_out = batch(teacher, n=16)
    logits, losses = distiller(images, targets, t_out, 19)
    assert logits.shape == (16, 10)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    # at initialisation the ABF output is BN-normalised (about unit variance per channel), the teacher's maps
    # are non-negative with their own scale: the term is of order 1 per level, 4 levels
    assert 0.1 < losses["review"].item() < 40
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before_abf, distiller.abfs.parameters()))
    assert all(torch.equal(b, p) for b, p in zip(before_teacher, teacher.parameters()))


def test_losses_are_float32_under_autocast():
    distiller, teacher = make()
    images, targets, t_out = batch(teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(images, targets, t_out, 5)
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert torch.isfinite(losses["review"])
