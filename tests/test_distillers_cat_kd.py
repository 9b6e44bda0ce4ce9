"""CAT-KD: the loss against the reference code's values, the CAM stacks against a hand computation, where
the gradients go, binarisation, refusals, heterogeneous pairs, and the per-pair values in the CIFAR-100 recipes."""
import json

import pytest
import torch
import torch.nn.functional as F

import kd.distillers.cat_kd  # noqa: F401  (registration, until kd/distillers/__init__.py imports it)
import kd.distillers.dkd  # noqa: F401  (the recipes' dkd sections)
from conftest import ROOT, shared_file
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.cat_kd import cat_kd_loss
from kd.errors import KDError
from kd.models import create_model
from kd.recipe import load_recipe


@pytest.fixture(scope="module")
def method_cases() -> list[dict]:
    return json.loads(shared_file("fixtures", "reference_losses_methods.json").read_text())["cases"]


def make(student="resnet8", teacher="resnet14", classes=10, **options):
    """A cat_kd distiller and a teacher whose parameters require grad (a missing detach would show)."""
    cls = DISTILLERS.get("cat_kd")
    torch.manual_seed(0)
    t = create_model(teacher, classes).eval()
    s = create_model(student, classes)
    return cls(s, t, cls.Options(**options), DataSpec(classes, (32, 32))), t


def batch(n=4, classes=10):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), torch.randint(0, classes, (n,))


def cams_by_hand(pre_pool, weight):
    """All-class CAMs as the reference builds them: the classifier applied as a 1x1 conv, no bias."""
    return F.conv2d(pre_pool, weight[:, :, None, None])


def expected_term(s_cams, t_cams, r, normalise):
    s, t = F.adaptive_avg_pool2d(s_cams, r), F.adaptive_avg_pool2d(t_cams, r)
    if normalise:
        s = s / s.pow(2).sum((2, 3), keepdim=True).sqrt()
        t = t / t.pow(2).sum((2, 3), keepdim=True).sqrt()
    return ((s - t) ** 2).mean()


def test_cat_kd_loss_matches_reference(method_cases):
    cases = [c for c in method_cases if c["loss"] == "cat_kd"]
    assert {(c["cam_resolution"], c["normalize"]) for c in cases} == {(2, False), (4, True)}
    for c in cases:
        value = cat_kd_loss(torch.tensor(c["student_cams"]), torch.tensor(c["teacher_cams"]),
                            c["cam_resolution"], c["normalize"])
        assert value.item() == pytest.approx(c["value"], rel=1e-5)


def test_defaults_are_the_reference_code_defaults():
    o = DISTILLERS.get("cat_kd").Options()
    assert (o.ce_weight, o.cam_weight, o.cam_resolution, o.normalise, o.binarise) == (1.0, 400.0, 2, "l2", False)
    assert DISTILLERS.get("cat_kd").groups == ("cam",)


@pytest.mark.parametrize("normalise, r", [("l2", 2), ("none", 4)])
def test_term_is_the_mse_of_all_class_cams(normalise, r):
    distiller, teacher = make(cam_weight=3.0, cam_resolution=r, normalise=normalise)
    distiller.eval()  # eval BN so that a second pass gives the same maps
    images, targets = batch()
    with torch.no_grad():
        t_out = teacher.forward_features(images)
        logits, losses = distiller(images, targets, t_out)
        s_out = distiller.student.forward_features(images)
    assert set(losses) == {"ce", "cat"}
    fc = distiller.student.fc
    s_cams = cams_by_hand(s_out.pre_pool, fc.weight)
    assert s_cams.shape == (4, 10, 8, 8)
    # the maps are the true CAMs: their spatial mean plus the bias gives the logits
    assert torch.allclose(s_cams.mean((2, 3)) + fc.bias, logits, atol=1e-4)
    expected = 3.0 * expected_term(s_cams, cams_by_hand(t_out.pre_pool, teacher.fc.weight), r, normalise == "l2")
    assert losses["cat"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_every_class_is_transferred_not_only_the_true_one():
    # unlike CCM, which reads the teacher's CAM of the true class only
    distiller, teacher = make()
    distiller.eval()
    images, _ = batch()
    targets = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        t_out = teacher.forward_features(images)
        before = distiller(images, targets, t_out)[1]["cat"]
        teacher.fc.weight[7] *= -2  # a class no image is labelled with
        after = distiller(images, targets, teacher.forward_features(images))[1]["cat"]
    assert not torch.allclose(before, after)


def test_gradient_reaches_the_student_features_and_classifier_weight_but_not_the_teacher():
    distiller, teacher = make(ce_weight=0.0)
    assert all(p.requires_grad for p in teacher.parameters())
    images, targets = batch()
    t_out = teacher.forward_features(images)  # with autograd: only detaches keep the teacher out
    _, losses = distiller(images, targets, t_out)
    losses["cat"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    student = distiller.student
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    assert student.fc.bias.grad is None or student.fc.bias.grad.abs().sum() == 0  # the bias is not in a CAM
    assert all(p.grad is not None for p in student.layer1.parameters())
    assert distiller.extra_parameter_count() == 0


def test_binarise_thresholds_the_teacher_maps_at_their_mean_absolute_value():
    distiller, teacher = make(binarise=True, normalise="none", cam_resolution=4, cam_weight=1.0)
    plain, _ = make(normalise="none", cam_resolution=4, cam_weight=1.0)
    distiller.eval(), plain.eval()
    images, targets = batch()
    with torch.no_grad():
        t_out = teacher.forward_features(images)
        value = distiller(images, targets, t_out)[1]["cat"]
        s_cams = cams_by_hand(distiller.student.forward_features(images).pre_pool, distiller.student.fc.weight)
        t_cams = cams_by_hand(t_out.pre_pool, teacher.fc.weight)
        threshold = t_cams.abs().sum((2, 3), keepdim=True) / 64
        binary = torch.where(t_cams > threshold, 1.0, 0.0)
        assert 0 < binary.mean() < 1
        assert value.item() == pytest.approx(expected_term(s_cams, binary, 4, False).item(), rel=1e-5)
        assert not torch.allclose(value, plain(images, targets, t_out)[1]["cat"])


def test_refusals_name_the_problem():
    cls = DISTILLERS.get("cat_kd")
    data = DataSpec(10, (32, 32))
    with pytest.raises(KDError, match=r"cat_kd needs an exact class activation map.*student 'timm:mobilenetv3_small_100'"):
        cls.check_models(create_model("timm:mobilenetv3_small_100", 10), create_model("resnet14", 10), cls.Options(), data)
    with pytest.raises(KDError, match=r"cat_kd .*teacher 'timm:mobilenetv3_small_100' cannot give one"):
        cls.check_models(create_model("resnet8", 10), create_model("timm:mobilenetv3_small_100", 10), cls.Options(), data)
    with pytest.raises(KDError, match=r"cat_kd .*student has 10 classes and the teacher 100"):
        cls.check_models(create_model("resnet8", 10), create_model("resnet14", 100), cls.Options(), data)
    with pytest.raises(KDError, match=r"cat_kd.cam_resolution 4 is larger than the student's 2x2 pre-pool map.*at most 2"):
        cls.check_models(create_model("MobileNetV2", 10), create_model("vgg13", 10), cls.Options(cam_resolution=4), data)
    cls.check_models(create_model("MobileNetV2", 10), create_model("vgg13", 10), cls.Options(cam_resolution=2), data)


@pytest.mark.parametrize("teacher, student, r", [("resnet32x4", "ShuffleV1", 4), ("vgg13", "MobileNetV2", 2)])
def test_heterogeneous_pairs_train_one_step(teacher, student, r):
    distiller, t = make(student, teacher, cam_resolution=r)
    images, targets = batch(2)
    with torch.no_grad():
        t_out = t.forward_features(images)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01)
    distiller.eval()  # eval BN so that a second pass gives the same maps
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        s_out = distiller.student.forward_features(images)
        s_cams = cams_by_hand(s_out.pre_pool, s_out.classifier.weight)
        t_cams = cams_by_hand(t_out.pre_pool, t_out.classifier.weight)
        assert s_cams.shape[-1] != t_cams.shape[-1]  # maps of different sizes, both pooled to r x r
        expected = 400.0 * expected_term(s_cams, t_cams, r, True)
    assert losses["cat"].item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0
    distiller.train()
    sum(losses.values()).backward()
    optimizer.step()


def test_one_training_step_on_resnets_and_float32_under_autocast():
    distiller, teacher = make(cam_weight=15.0, normalise="none")
    images, targets = batch(8)
    with torch.no_grad():
        t_out = teacher.forward_features(images)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    _, losses = distiller(images, targets, t_out)
    assert torch.isfinite(losses["cat"]) and losses["cat"].item() > 0
    before = distiller.student.fc.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, distiller.student.fc.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, low = distiller(images, targets, t_out)
    assert all(v.dtype == torch.float32 for v in low.values())


# --- per-pair values in the CIFAR-100 recipes -----------------------------------------------------------------

# (CAT_loss_weight, CAM_RESOLUTION, IF_NORMALIZE) of the CAT-KD authors' configs/cifar100/CAT_KD/<pair>.yaml;
# None: no config for the pair (the defaults stay)
CAT = {
    "ResNet50-MobileNetV2": (40, 2, True), "ResNet50-vgg8": None, "resnet110-resnet20": None,
    "resnet110-resnet32": (1.8, 2, False), "resnet32x4-ShuffleV1": (600, 4, True), "resnet32x4-ShuffleV2": (600, 4, True),
    "resnet32x4-resnet8x4": (15, 2, False), "resnet56-resnet20": (0.7, 2, False), "vgg13-MobileNetV2": (15, 2, True),
    "vgg13-vgg8": (4.5, 2, False), "wrn_40_2-ShuffleV1": (80, 4, True), "wrn_40_2-wrn_16_2": (12, 2, False),
    "wrn_40_2-wrn_40_1": (1.5, 2, False),
}


def test_cifar100_recipes_carry_the_reference_cat_kd_values_and_the_pairs_accept_them():
    folders = sorted(p.parent.name for p in (ROOT / "recipes" / "cifar100").glob("*/students.yaml"))
    assert folders == sorted(CAT)
    cls = DISTILLERS.get("cat_kd")
    for pair, values in CAT.items():
        recipe = load_recipe(ROOT / "recipes" / "cifar100" / pair / "students.yaml")
        assert "cat_kd" in recipe.sections, pair
        o = recipe.method_options("cat_kd")
        weight, r, norm = values or (400, 2, True)
        assert (o.cam_weight, o.cam_resolution, o.normalise, o.binarise, o.ce_weight) == \
            (weight, r, "l2" if norm else "none", False, 1.0), pair
        assert (recipe.sections["cat_kd"] == {}) == (values is None), pair
        # the pair's pre-pool maps are large enough for the resolution (100 classes, 32x32)
        cls.check_models(create_model(recipe.student, 100), create_model(recipe.teacher, 100), o, DataSpec(100, (32, 32)))
