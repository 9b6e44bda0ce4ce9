"""cam_loss, ccm and ccm_kd: values, gradient routing, heterogeneous pairs, refusals, no extra parameters."""
import pytest
import torch
import torch.nn.functional as F

from kd.data import DataSpec
from kd.cam import caam, cam, normalise
from kd.distillers import DISTILLERS
from kd.errors import KDError
from kd.models import create_model
from kd.models.features import Features


def make(name, student="resnet8", teacher="resnet14", classes=10, size=32, **options):
    cls = DISTILLERS.get(name)
    torch.manual_seed(0)
    s = create_model(student, classes)
    t = create_model(teacher, classes).eval().requires_grad_(False) if cls.needs_teacher else None
    return cls(s, t, cls.Options(**options), DataSpec(10, (size, size))), t


def teacher_features(teacher, images):
    if teacher is None:
        return None
    with torch.inference_mode():
        out = teacher.forward_features(images)
    return Features(out.logits.clone(), [s.clone() for s in out.stages], out.pre_pool.clone(), out.classifier)


def batch(n=4, classes=10, size=32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


def test_defaults_are_the_ablation_results():
    from kd.distillers.ccm_kd import CCMKDOptions

    assert (DISTILLERS.get("ccm").Options().normalise, DISTILLERS.get("ccm").Options().cam_weight) == ("l2", 10.0)
    assert (CCMKDOptions().normalise, CCMKDOptions().cam_weight) == ("l2", 10.0)
    assert (DISTILLERS.get("cam_loss").Options().normalise, DISTILLERS.get("cam_loss").Options().cam_weight) == ("minmax", 0.05)


def test_cam_loss_value_matches_a_hand_computation():
    distiller, _ = make("cam_loss", cam_weight=2.0)
    images, targets = batch()
    logits, losses = distiller(images, targets, None)
    out = distiller.student.forward_features(images)
    w = distiller.student.fc.weight
    expected = sum((normalise(caam(out.pre_pool[i:i + 1])) - normalise(cam(out.pre_pool[i:i + 1], w, targets[i:i + 1]))).abs().mean()
                   for i in range(4)) / 4
    assert losses["cam"].item() == pytest.approx(2.0 * expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_cam_loss_gives_the_classifier_gradient_from_ce_only():
    images, targets = batch()
    distiller, _ = make("cam_loss", cam_weight=5.0)
    logits, losses = distiller(images, targets, None)
    sum(losses.values()).backward()
    full = distiller.student.fc.weight.grad.clone()
    body = distiller.student.layer1[0].conv1.weight.grad.clone()
    ce_only, _ = make("cam_loss", cam_weight=5.0)
    logits, _ = ce_only(images, targets, None)
    F.cross_entropy(logits, targets).backward()
    assert torch.allclose(full, ce_only.student.fc.weight.grad, atol=1e-6)
    assert not torch.allclose(body, ce_only.student.layer1[0].conv1.weight.grad)  # the features do get the CAM term


def test_detaching_the_whole_target_stops_gradient_through_the_cam_branch():
    images, targets = batch()
    distiller, _ = make("cam_loss", detach="target")
    out = distiller.student.forward_features(images)
    pre_pool = out.pre_pool.detach().requires_grad_(True)
    from kd.distillers.cam_loss import self_cam_term
    term = self_cam_term(Features(out.logits, [], pre_pool, out.classifier), targets, distiller.options)
    (grad,) = torch.autograd.grad(term, pre_pool)
    # the same gradient as when CAM_y is a constant computed beforehand: only the CAAM path carries gradient
    fixed = normalise(cam(pre_pool.detach(), out.classifier.weight.detach(), targets))
    pre_pool2 = pre_pool.detach().requires_grad_(True)
    (grad2,) = torch.autograd.grad((normalise(caam(pre_pool2)) - fixed).abs().mean(), pre_pool2)
    assert torch.allclose(grad, grad2, atol=1e-7)
    # and the default (detach the weight only) differs: the CAM branch then carries gradient too
    distiller.options.detach = "weight"
    term = self_cam_term(Features(out.logits, [], pre_pool, out.classifier), targets, distiller.options)
    (grad3,) = torch.autograd.grad(term, pre_pool)
    assert not torch.allclose(grad3, grad2, atol=1e-7)


def test_ccm_value_teacher_gets_no_gradient_and_adds_no_parameters():
    images, targets = batch()
    for kind in ("minmax", "l2"):
        distiller, teacher = make("ccm", cam_weight=3.0, normalise=kind)
        t_out = teacher_features(teacher, images)
        logits, losses = distiller(images, targets, t_out)
        assert set(losses) == {"ce", "cam"}
        s_out = distiller.student.forward_features(images)
        t_cam = cam(t_out.pre_pool, teacher.fc.weight, targets)  # both 8x8: no resize
        expected = (normalise(caam(s_out.pre_pool), kind) - normalise(t_cam, kind)).abs().mean()
        assert losses["cam"].item() == pytest.approx(3.0 * expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.student.fc.weight.grad is not None
    for name in ("cam_loss", "ccm", "ccm_kd"):
        assert make(name)[0].extra_parameter_count() == 0


def test_ccm_teacher_class_target_or_predicted():
    images, targets = batch()
    target, teacher = make("ccm")
    predicted, _ = make("ccm", teacher_class="predicted")
    t_out = teacher_features(teacher, images)
    wrong = (t_out.logits.argmax(1) + 1) % 10  # labels the teacher surely does not predict
    a = target(images, wrong, t_out)[1]["cam"]
    b = predicted(images, wrong, t_out)[1]["cam"]
    c = predicted(images, t_out.logits.argmax(1), t_out)[1]["cam"]
    assert not torch.allclose(a, b) and torch.allclose(b, c)


def test_ccm_kd_adds_the_kd_term_and_self_cam_and_warmup_work():
    distiller, teacher = make("ccm_kd", self_cam_weight=0.5, warmup_epochs=2)
    images, targets = batch()
    t_out = teacher_features(teacher, images)
    _, early = distiller(images, targets, t_out, epoch=1)
    _, late = distiller(images, targets, t_out, epoch=2)
    assert set(early) == set(late) == {"ce", "kd", "cam", "self_cam"}
    assert early["cam"].item() == 0 and early["self_cam"].item() == 0
    assert late["cam"].item() > 0 and late["self_cam"].item() > 0 and late["kd"].item() > 0
    assert distiller.options.ce_weight == 0.1 and distiller.options.kd_weight == 0.9 and distiller.options.T == 4.0


@pytest.mark.parametrize("teacher, student, sizes", [
    ("resnet32x4", "ShuffleV1", ((8, 8), (4, 4))),
    ("vgg13", "MobileNetV2", ((4, 4), (2, 2))),
    ("timm:resnet18", "timm:efficientnet_b0", ((2, 2), (2, 2))),
])
@pytest.mark.parametrize("resize", ["pool", "upsample"])
def test_heterogeneous_pairs_train_one_step(teacher, student, sizes, resize):
    size = 64 if teacher.startswith("timm") else 32
    distiller, t = make("ccm_kd", student=student, teacher=teacher, size=size, resize=resize)
    images, targets = batch(2, size=size)
    t_out = teacher_features(t, images)
    assert tuple(t_out.pre_pool.shape[-2:]) == sizes[0]
    assert tuple(distiller.student.forward_features(images).pre_pool.shape[-2:]) == sizes[1]
    logits, losses = distiller(images, targets, t_out)
    assert torch.isfinite(sum(losses.values())) and losses["cam"].item() > 0
    sum(losses.values()).backward()


def test_cam_methods_refuse_a_model_without_a_gap_linear_head():
    student = create_model("timm:mobilenetv3_small_100", 10)
    teacher = create_model("resnet14", 10)
    for name in ("cam_loss", "ccm", "ccm_kd"):
        with pytest.raises(KDError, match=r"the student 'timm:mobilenetv3_small_100' cannot give one"):
            DISTILLERS.get(name).check_models(student, teacher, DISTILLERS.get(name).Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=r"the teacher 'timm:mobilenetv3_small_100' cannot give one"):
        DISTILLERS.get("ccm").check_models(teacher, student, DISTILLERS.get("ccm").Options(), DataSpec(10, (32, 32)))
