"""DKD and DIST: losses against the reference code's values and hand computations, the DKD warm-up, where
the gradients go, refusals, one training step, and DKD's per-pair values in the CIFAR-100 recipes."""
import json

import pytest
import torch
import torch.nn.functional as F

import kd.distillers.cat_kd  # noqa: F401  (registration, until kd/distillers/__init__.py imports them;
import kd.distillers.dist  # noqa: F401   the recipes' cat_kd sections need cat_kd registered too)
import kd.distillers.dkd  # noqa: F401
from conftest import ROOT, shared_file
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.dist import dist_loss
from kd.distillers.dkd import dkd_loss
from kd.errors import KDError
from kd.models import create_model
from kd.recipe import load_recipe


@pytest.fixture(scope="module")
def method_cases() -> list[dict]:
    return json.loads(shared_file("fixtures", "reference_losses_methods.json").read_text())["cases"]


def make(name, student="resnet8", teacher="resnet14", classes=10, **options):
    """A distiller built as kd/run.py builds one, and a teacher whose parameters require grad (so that a
    missing detach would show as a teacher gradient)."""
    cls = DISTILLERS.get(name)
    torch.manual_seed(0)
    t = create_model(teacher, classes).eval()
    s = create_model(student, classes)
    return cls(s, t, cls.Options(**options), DataSpec(classes, (32, 32))), t


def batch(n=4, classes=10):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), torch.randint(0, classes, (n,))


# --- reference values ---------------------------------------------------------------------------------------

def test_dkd_loss_matches_reference(method_cases):
    cases = [c for c in method_cases if c["loss"] == "dkd"]
    assert len(cases) == 3
    for c in cases:
        value = dkd_loss(torch.tensor(c["student_logits"]), torch.tensor(c["teacher_logits"]),
                         torch.tensor(c["targets"]), c["alpha"], c["beta"], c["T"])
        assert value.item() == pytest.approx(c["value"], rel=1e-5), (c["T"], c["alpha"], c["beta"])


def test_dist_loss_matches_reference(method_cases):
    cases = [c for c in method_cases if c["loss"] == "dist"]
    assert {c["tau"] for c in cases} == {1.0, 4.0}
    for c in cases:
        value = dist_loss(torch.tensor(c["student_logits"]), torch.tensor(c["teacher_logits"]),
                          c["beta"], c["gamma"], c["tau"])
        assert value.item() == pytest.approx(c["value"], rel=1e-5), c["tau"]


# --- DKD ------------------------------------------------------------------------------------------------------

def test_dkd_parts_recombine_into_the_kd_loss_of_each_sample():
    # The paper's identity: KD = TCKD + (1 - p_t) * NCKD, p_t the teacher's probability of the true class.
    torch.manual_seed(2)
    for T in (1.0, 4.0):
        for _ in range(3):
            s, t, y = torch.randn(1, 7) * 3, torch.randn(1, 7) * 3, torch.randint(0, 7, (1,))
            tckd = dkd_loss(s, t, y, 1.0, 0.0, T)
            nckd = dkd_loss(s, t, y, 0.0, 1.0, T)
            p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
            kl = (p_t * (p_t.log() - p_s.log())).sum() * T * T
            assert (tckd + (1 - p_t[0, y]) * nckd).item() == pytest.approx(kl.item(), rel=1e-5)
    logits = torch.randn(5, 10)
    assert dkd_loss(logits, logits.clone(), torch.arange(5), 1.0, 8.0, 4.0).item() == pytest.approx(0, abs=1e-6)


def test_dkd_loss_stays_finite_when_the_true_class_probability_rounds_to_one():
    student = torch.tensor([[60.0, 0.0, -1.0, 2.0]])  # p_y = 1 in float32: log(1 - p_y) would be -inf
    teacher = torch.tensor([[50.0, 1.0, 0.0, 0.0]])
    value = dkd_loss(student, teacher, torch.tensor([0]), 1.0, 8.0, 1.0)
    assert torch.isfinite(value) and value.item() >= 0
    student.requires_grad_(True)
    dkd_loss(student, teacher, torch.tensor([0]), 1.0, 8.0, 1.0).backward()
    assert torch.isfinite(student.grad).all()


def test_dkd_defaults_are_the_reference_ones():
    o = DISTILLERS.get("dkd").Options()
    assert (o.ce_weight, o.tckd_weight, o.nckd_weight, o.T, o.warmup_epochs) == (1.0, 1.0, 8.0, 4.0, 20)
    assert DISTILLERS.get("dkd").groups == ("logit",) and DISTILLERS.get("dist").groups == ("logit",)


def test_dkd_warmup_scales_only_the_dkd_term_as_the_reference_schedule():
    # reference: min(epoch / 20, 1) with epochs from 1; kd's epochs count from 0
    distiller, teacher = make("dkd", nckd_weight=2.0)
    full, _ = make("dkd", nckd_weight=2.0, warmup_epochs=0)
    distiller.eval(), full.eval()  # eval BN: every pass sees the same student
    images, targets = batch()
    with torch.no_grad():
        t_out = teacher.forward_features(images)
        _, reference = full(images, targets, t_out, epoch=0)
        for epoch, factor in ((0, 1 / 20), (4, 5 / 20), (9, 0.5), (18, 19 / 20), (19, 1.0), (100, 1.0)):
            _, losses = distiller(images, targets, t_out, epoch=epoch)
            assert losses["ce"].item() == pytest.approx(reference["ce"].item(), rel=1e-6), epoch
            assert losses["dkd"].item() == pytest.approx(factor * reference["dkd"].item(), rel=1e-5), epoch
    # the same scaling reaches the gradient: at epoch 0 the DKD gradient is 1/20 of the full one
    grads = []
    for epoch in (0, 19):
        distiller.zero_grad(set_to_none=True)
        distiller(images, targets, t_out, epoch=epoch)[1]["dkd"].backward()
        grads.append(distiller.student.fc.weight.grad.clone())
    assert torch.allclose(grads[0] * 20, grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name, term", [("dkd", "dkd"), ("dist", "dist")])
def test_gradient_reaches_the_student_only(name, term):
    distiller, teacher = make(name)
    assert all(p.requires_grad for p in teacher.parameters())
    images, targets = batch()
    t_out = teacher.forward_features(images)  # with autograd: only a detach keeps the teacher out
    logits, losses = distiller(images, targets, t_out, epoch=30)
    assert set(losses) == {"ce", term}
    losses[term].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert distiller.extra_parameter_count() == 0
    assert not any(k.startswith("_teacher") for k in distiller.state_dict())


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_pairs_with_different_classes_are_refused(name):
    cls = DISTILLERS.get(name)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 100)
    with pytest.raises(KDError, match=rf"{name} .*student has 10 classes and the teacher 100"):
        cls.check_models(student, teacher, cls.Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=rf"{name} .*1 class"):
        one = create_model("resnet8", 1)
        cls.check_models(one, create_model("resnet14", 1), cls.Options(), DataSpec(1, (32, 32)))
    cls.check_models(student, create_model("resnet14", 10), cls.Options(), DataSpec(10, (32, 32)))


def test_dkd_one_training_step_matches_a_hand_computation():
    distiller, teacher = make("dkd", nckd_weight=6.0, T=2.0)
    images, targets = batch(8)
    with torch.no_grad():
        t_out = teacher.forward_features(images)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    logits, losses = distiller(images, targets, t_out, epoch=3)
    # by hand: TCKD over [p_y, 1 - p_y], NCKD over the renormalised non-target classes
    s, t = logits.detach() / 2.0, t_out.logits / 2.0
    p_s, p_t = s.softmax(1), t.softmax(1)
    tckd = nckd = 0.0
    for i, y in enumerate(targets.tolist()):
        bs = torch.stack([p_s[i, y], 1 - p_s[i, y]])
        bt = torch.stack([p_t[i, y], 1 - p_t[i, y]])
        tckd += (bt * (bt / bs).log()).sum()
        keep = [c for c in range(10) if c != y]
        qs, qt = s[i, keep].softmax(0), t[i, keep].softmax(0)
        nckd += (qt * (qt / qs).log()).sum()
    expected = (4 / 20) * (tckd + 6.0 * nckd) / 8 * 4.0
    assert losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    before = distiller.student.fc.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, distiller.student.fc.weight)


# --- DIST -----------------------------------------------------------------------------------------------------

def test_dist_is_one_minus_pearson_per_sample_and_per_class():
    torch.manual_seed(3)
    s, t = torch.randn(6, 10) * 2, torch.randn(6, 10) * 2
    for tau, beta, gamma in ((1.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 0.5, 0.0)):
        y_s, y_t = (s / tau).softmax(1), (t / tau).softmax(1)
        inter = 1 - torch.stack([torch.corrcoef(torch.stack([y_s[i], y_t[i]]))[0, 1] for i in range(6)]).mean()
        intra = 1 - torch.stack([torch.corrcoef(torch.stack([y_s[:, c], y_t[:, c]]))[0, 1] for c in range(10)]).mean()
        expected = tau ** 2 * (beta * inter + gamma * intra)
        assert dist_loss(s, t, beta, gamma, tau).item() == pytest.approx(expected.item(), rel=1e-5)
    # identical predictions: both correlations are 1 (up to the reference's eps)
    assert dist_loss(s, s.clone(), 1.0, 1.0, 1.0).item() == pytest.approx(0, abs=1e-5)


def test_dist_defaults_and_weighted_term():
    o = DISTILLERS.get("dist").Options()
    assert (o.ce_weight, o.inter_weight, o.intra_weight, o.T) == (1.0, 1.0, 1.0, 1.0)
    distiller, teacher = make("dist", inter_weight=2.0, intra_weight=0.5, T=4.0)
    distiller.eval()
    images, targets = batch(6)
    with torch.no_grad():
        t_out = teacher.forward_features(images)
        logits, losses = distiller(images, targets, t_out)
    y_s, y_t = (logits / 4).softmax(1), (t_out.logits / 4).softmax(1)
    inter = 1 - F.cosine_similarity(y_s - y_s.mean(1, keepdim=True), y_t - y_t.mean(1, keepdim=True), dim=1).mean()
    intra = 1 - F.cosine_similarity(y_s - y_s.mean(0, keepdim=True), y_t - y_t.mean(0, keepdim=True), dim=0).mean()
    assert losses["dist"].item() == pytest.approx((16 * (2.0 * inter + 0.5 * intra)).item(), rel=1e-4)
    assert losses["dist"].item() > 0


def test_dist_one_training_step():
    distiller, teacher = make("dist")
    images, targets = batch(8)
    with torch.no_grad():
        t_out = teacher.forward_features(images)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    _, losses = distiller(images, targets, t_out)
    assert torch.isfinite(losses["dist"]) and 0 < losses["dist"].item() < 4  # 1 - r lies in [0, 2] per relation
    before = distiller.student.fc.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, distiller.student.fc.weight)


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_losses_are_float32_under_autocast(name):
    distiller, teacher = make(name)
    images, targets = batch()
    with torch.no_grad():
        t_out = teacher.forward_features(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(images, targets, t_out, epoch=30)
    assert all(v.dtype == torch.float32 for v in losses.values())


# --- per-pair values in the CIFAR-100 recipes -----------------------------------------------------------------

# beta of mdistiller's configs/cifar100/dkd/<pair>.yaml (8: the config sets none, so the code default);
# None: mdistiller has no config for the pair
DKD_BETA = {
    "ResNet50-MobileNetV2": 8, "ResNet50-vgg8": None, "resnet110-resnet20": None, "resnet110-resnet32": 2,
    "resnet32x4-ShuffleV1": 8, "resnet32x4-ShuffleV2": 8, "resnet32x4-resnet8x4": 8, "resnet56-resnet20": 2,
    "vgg13-MobileNetV2": 6, "vgg13-vgg8": 6, "wrn_40_2-ShuffleV1": 8, "wrn_40_2-wrn_16_2": 6, "wrn_40_2-wrn_40_1": 6,
}


def test_cifar100_recipes_carry_the_reference_dkd_beta_per_pair():
    folders = sorted(p.parent.name for p in (ROOT / "recipes" / "cifar100").glob("*/students.yaml"))
    assert folders == sorted(DKD_BETA)
    for pair, beta in DKD_BETA.items():
        recipe = load_recipe(ROOT / "recipes" / "cifar100" / pair / "students.yaml")
        assert "dkd" in recipe.sections, pair
        o = recipe.method_options("dkd")
        assert (o.nckd_weight, o.tckd_weight, o.T, o.warmup_epochs, o.ce_weight) == (beta or 8.0, 1.0, 4.0, 20, 1.0), pair
        assert (recipe.sections["dkd"] == {}) == (beta is None), pair
