"""cam_loss, ccm and ccm_kd: values against formulas written here (every option), gradient routing,
heterogeneous pairs, refusals, no extra parameters."""
import pytest
import torch
import torch.nn.functional as F

from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.errors import KDError
from kd.models import create_model
from kd.models.features import Features

# --- the formulas, written out here (none of kd.cam is used) ------------------------------------------------


def ref_cam(pre_pool, weight, classes):
    """CAM_c = sum_k W[c, k] F_k, one class per sample."""
    return (pre_pool.float() * weight.float()[classes][:, :, None, None]).sum(1)


def ref_caam(pre_pool):
    """CAAM = sum_k F_k."""
    total = torch.zeros_like(pre_pool[:, 0]).float()
    for k in range(pre_pool.shape[1]):
        total = total + pre_pool[:, k].float()
    return total


def ref_normalise(maps, kind, eps=1e-6):
    """Per sample over H x W: min-max, L2 or softmax."""
    flat = maps.flatten(1)
    if kind == "minmax":
        low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        out = (flat - low) / (high - low + eps)
    elif kind == "l2":
        out = flat / (flat.pow(2).sum(1, keepdim=True).sqrt() + eps)
    else:
        e = (flat - flat.max(1, keepdim=True).values).exp()
        out = e / e.sum(1, keepdim=True)
    return out.view_as(maps)


def ref_resize(student_map, teacher_map, mode):
    """Pool the larger map to the smaller one's size, or upsample (bilinear) the smaller to the larger."""
    hs, ht = student_map.shape[-2:], teacher_map.shape[-2:]
    if hs == ht:
        return student_map, teacher_map
    student_larger = hs[0] * hs[1] > ht[0] * ht[1]
    if mode == "pool":
        if student_larger:
            return F.adaptive_avg_pool2d(student_map[:, None], ht)[:, 0], teacher_map
        return student_map, F.adaptive_avg_pool2d(teacher_map[:, None], hs)[:, 0]
    if student_larger:
        return student_map, F.interpolate(teacher_map[:, None], size=hs, mode="bilinear", align_corners=False)[:, 0]
    return F.interpolate(student_map[:, None], size=ht, mode="bilinear", align_corners=False)[:, 0], teacher_map


def ref_self_term(pre_pool, weight, targets, kind, detach_target=False):
    """CAM-loss: mean | N(CAAM) - N(CAM_y) |, with W detached (and the whole CAM_y when detach_target)."""
    target = ref_cam(pre_pool, weight.detach(), targets)
    if detach_target:
        target = target.detach()
    return (ref_normalise(ref_caam(pre_pool), kind) - ref_normalise(target, kind)).abs().mean()


def ref_ccm_term(student_pre_pool, teacher_pre_pool, teacher_weight, classes, kind, resize):
    """CCM: mean | N(CAAM_student) - N(CAM_teacher,c) | after bringing both to one size."""
    s, t = ref_resize(ref_caam(student_pre_pool), ref_cam(teacher_pre_pool, teacher_weight, classes).detach(), resize)
    return (ref_normalise(s, kind) - ref_normalise(t, kind)).abs().mean()


def ref_kd(student_logits, teacher_logits, T):
    """T^2 * batch mean of KL(softmax(t/T) || softmax(s/T))."""
    p_t = (teacher_logits / T).softmax(1)
    kl = (p_t * ((teacher_logits / T).log_softmax(1) - (student_logits / T).log_softmax(1))).sum(1)
    return T * T * kl.mean()


def ref_ce(logits, targets):
    return -logits.log_softmax(1)[torch.arange(len(targets)), targets].mean()


# --- building blocks ----------------------------------------------------------------------------------------

def make(name, student="resnet8", teacher="resnet14", classes=10, size=32, **options):
    """A distiller and its teacher; the teacher's parameters keep requires_grad as create_model leaves them."""
    cls = DISTILLERS.get(name)
    torch.manual_seed(0)
    s = create_model(student, classes)
    t = create_model(teacher, classes).eval() if cls.needs_teacher else None
    return cls(s, t, cls.Options(**options), DataSpec(10, (size, size))), t


def teacher_features(teacher, images):
    """The teacher's Features as the trainer hands them over: computed under inference_mode."""
    if teacher is None:
        return None
    with torch.inference_mode():
        out = teacher.forward_features(images)
    return Features(out.logits.clone(), [s.clone() for s in out.stages], out.pre_pool.clone(), out.classifier)


def batch(n=4, classes=10, size=32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


def student_pre_pool(distiller, images):
    """The student's pre-pool map for the batch (train-mode BN uses batch statistics: the distiller saw the same)."""
    with torch.no_grad():
        return distiller.student.forward_features(images).pre_pool


def fake_teacher(size, channels=8, classes=10, n=4):
    """Hand-made teacher Features with a pre-pool map of the given spatial size and a GAP -> Linear head."""
    torch.manual_seed(2)
    pre_pool = torch.randn(n, channels, *size) + 0.5
    linear = torch.nn.Linear(channels, classes)
    with torch.no_grad():
        logits = linear(pre_pool.mean((2, 3)))
    return Features(logits, [], pre_pool, linear)


# --- tests --------------------------------------------------------------------------------------------------

def test_defaults_are_the_ablation_results():
    from kd.distillers.ccm_kd import CCMKDOptions

    assert (DISTILLERS.get("ccm").Options().normalise, DISTILLERS.get("ccm").Options().cam_weight) == ("l2", 50.0)
    assert (CCMKDOptions().normalise, CCMKDOptions().cam_weight) == ("l2", 10.0)
    assert (DISTILLERS.get("cam_loss").Options().normalise, DISTILLERS.get("cam_loss").Options().cam_weight) == ("minmax", 0.05)
    options = CCMKDOptions()
    assert (options.teacher_class, options.resize, options.self_cam_weight, options.detach) == ("target", "pool", 0.0, "weight")


@pytest.mark.parametrize("kind", ["minmax", "l2", "softmax"])
@pytest.mark.parametrize("detach", ["weight", "target"])
def test_cam_loss_value_matches_the_formula(kind, detach):
    distiller, _ = make("cam_loss", cam_weight=2.0, normalise=kind, detach=detach, ce_weight=0.5)
    images, targets = batch()
    logits, losses = distiller(images, targets, None)
    assert set(losses) == {"ce", "cam"}
    expected = ref_self_term(student_pre_pool(distiller, images), distiller.student.fc.weight, targets, kind)
    assert losses["cam"].item() == pytest.approx(2.0 * expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(0.5 * ref_ce(logits, targets).item(), rel=1e-5)


def test_cam_loss_of_a_hand_made_map():
    """One sample, K=2 channels, 1x3 map: the numbers worked out by hand."""
    from kd.distillers.cam_loss import self_cam_term

    pre_pool = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 3.0, 1.0]]]])  # CAAM = [1, 3, 3]
    linear = torch.nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))  # CAM_1 = [2, -3, 3]
    o = DISTILLERS.get("cam_loss").Options(normalise="minmax")
    # minmax: N(CAAM) = [0, 1, 1], N(CAM_1) = [5/6, 0, 1] -> mean |.| = (5/6 + 1 + 0) / 3
    term = self_cam_term(Features(None, [], pre_pool, linear), torch.tensor([1]), o)
    assert term.item() == pytest.approx((5 / 6 + 1) / 3, rel=1e-5)
    # class 0: CAM_0 = [1, 0, 2] -> N = [1/2, 0, 1] -> mean |.| = (1/2 + 1 + 0) / 3
    term = self_cam_term(Features(None, [], pre_pool, linear), torch.tensor([0]), o)
    assert term.item() == pytest.approx((1 / 2 + 1) / 3, rel=1e-5)


def test_cam_loss_warmup_turns_the_term_off():
    distiller, _ = make("cam_loss", cam_weight=1.0, warmup_epochs=2)
    images, targets = batch()
    _, early = distiller(images, targets, None, epoch=1)
    _, late = distiller(images, targets, None, epoch=2)
    assert early["cam"].item() == 0.0
    expected = ref_self_term(student_pre_pool(distiller, images), distiller.student.fc.weight, targets, "minmax")
    assert late["cam"].item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0


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


@pytest.mark.parametrize("detach", ["weight", "target"])
def test_detach_option_routes_the_feature_gradient_as_the_formula_does(detach):
    """detach=weight: gradient through both maps; detach=target: through the CAAM only."""
    images, targets = batch()
    distiller, _ = make("cam_loss", cam_weight=1.0, ce_weight=0.0, detach=detach)
    _, losses = distiller(images, targets, None)
    losses["cam"].backward()
    ours = [p.grad.clone() for p in distiller.student.layer3.parameters()]

    reference, _ = make("cam_loss")  # the same initial weights
    out = reference.student.forward_features(images)
    ref_self_term(out.pre_pool, out.classifier.weight, targets, "minmax", detach_target=detach == "target").backward()
    expected = [p.grad for p in reference.student.layer3.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(ours, expected))

    other, _ = make("cam_loss")
    out = other.student.forward_features(images)
    ref_self_term(out.pre_pool, out.classifier.weight, targets, "minmax", detach_target=detach != "target").backward()
    assert not all(torch.allclose(a, p.grad, rtol=1e-4, atol=1e-7) for a, p in zip(ours, other.student.layer3.parameters()))


@pytest.mark.parametrize("name", ["ccm", "ccm_kd"])
@pytest.mark.parametrize("kind", ["minmax", "l2", "softmax"])
@pytest.mark.parametrize("teacher_class", ["target", "predicted"])
def test_ccm_value_matches_the_formula(name, kind, teacher_class):
    images, targets = batch()
    kd_options = {"kd_weight": 0.6, "T": 2.0} if name == "ccm_kd" else {}
    distiller, teacher = make(name, cam_weight=3.0, normalise=kind, teacher_class=teacher_class, ce_weight=0.3, **kd_options)
    t_out = teacher_features(teacher, images)
    logits, losses = distiller(images, targets, t_out)
    classes = targets if teacher_class == "target" else t_out.logits.argmax(1)
    assert teacher_class == "predicted" or not torch.equal(classes, t_out.logits.argmax(1))  # the options differ here
    # resnet8 and resnet14 both end at 8x8: no resize
    expected = ref_ccm_term(student_pre_pool(distiller, images), t_out.pre_pool, teacher.fc.weight, classes, kind, "pool")
    assert losses["cam"].item() == pytest.approx(3.0 * expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(0.3 * ref_ce(logits, targets).item(), rel=1e-5)
    if name == "ccm":
        assert set(losses) == {"ce", "cam"}
    else:
        assert set(losses) == {"ce", "kd", "cam"}
        assert losses["kd"].item() == pytest.approx(0.6 * ref_kd(logits, t_out.logits, 2.0).item(), rel=1e-5)


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


@pytest.mark.parametrize("name", ["ccm", "ccm_kd"])
@pytest.mark.parametrize("resize", ["pool", "upsample"])
@pytest.mark.parametrize("teacher_size", [(4, 4), (16, 16), (4, 8)])
def test_ccm_resizes_either_map_as_the_formula_does(name, resize, teacher_size):
    """The student (resnet8) ends at 8x8; hand-made teacher Features end smaller, larger or of another shape."""
    images, targets = batch()
    distiller, _ = make(name, cam_weight=1.0, resize=resize)
    t_out = fake_teacher(teacher_size)
    s = student_pre_pool(distiller, images)
    for kind in ("minmax", "l2", "softmax"):
        distiller.options.normalise = kind
        _, losses = distiller(images, targets, t_out)
        expected = ref_ccm_term(s, t_out.pre_pool, t_out.classifier.weight, targets, kind, resize)
        assert losses["cam"].item() == pytest.approx(expected.item(), rel=1e-5), kind
        other = ref_ccm_term(s, t_out.pre_pool, t_out.classifier.weight, targets, kind, "upsample" if resize == "pool" else "pool")
        assert abs(other.item() - expected.item()) > 1e-4 * expected.item()  # the two modes do differ here


@pytest.mark.parametrize("kind", ["minmax", "l2"])
@pytest.mark.parametrize("detach", ["weight", "target"])
def test_ccm_kd_self_cam_and_warmup(kind, detach):
    distiller, teacher = make("ccm_kd", self_cam_weight=0.5, warmup_epochs=2, normalise=kind, detach=detach)
    images, targets = batch()
    t_out = teacher_features(teacher, images)
    logits, early = distiller(images, targets, t_out, epoch=1)
    _, late = distiller(images, targets, t_out, epoch=2)
    assert set(early) == set(late) == {"ce", "kd", "cam", "self_cam"}
    assert early["cam"].item() == 0 and early["self_cam"].item() == 0
    assert early["kd"].item() == pytest.approx(0.9 * ref_kd(logits, t_out.logits, 4.0).item(), rel=1e-5)  # KD has no warm-up
    s = student_pre_pool(distiller, images)
    self_term = ref_self_term(s, distiller.student.fc.weight, targets, kind)
    ccm = ref_ccm_term(s, t_out.pre_pool, teacher.fc.weight, targets, kind, "pool")
    assert late["self_cam"].item() == pytest.approx(0.5 * self_term.item(), rel=1e-5)
    assert late["cam"].item() == pytest.approx(10.0 * ccm.item(), rel=1e-5)
    assert late["kd"].item() == pytest.approx(early["kd"].item(), rel=1e-6)
    assert distiller.options.ce_weight == 0.1 and distiller.options.kd_weight == 0.9 and distiller.options.T == 4.0
    _, no_self = make("ccm_kd")[0](images, targets, t_out)
    assert "self_cam" not in no_self  # off by default


@pytest.mark.parametrize("name", ["ccm", "ccm_kd"])
def test_ccm_teacher_gets_no_gradient_and_adds_no_parameters(name):
    images, targets = batch()
    distiller, teacher = make(name)
    assert all(p.requires_grad for p in teacher.parameters())
    out = teacher.forward_features(images)  # autograd on: the teacher's graph reaches the distiller
    assert out.logits.requires_grad and out.pre_pool.requires_grad
    _, losses = distiller(images, targets, out)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert distiller.extra_parameter_count() == 0
    assert sum(p.numel() for p in distiller.trainable_parameters()) == sum(p.numel() for p in distiller.student.parameters())


def test_cam_loss_adds_no_parameters():
    assert make("cam_loss")[0].extra_parameter_count() == 0


@pytest.mark.parametrize("teacher, student, sizes", [
    ("resnet32x4", "ShuffleV1", ((8, 8), (4, 4))),
    ("vgg13", "MobileNetV2", ((4, 4), (2, 2))),
    ("timm:resnet18", "timm:efficientnet_b0", ((2, 2), (2, 2))),
])
def test_heterogeneous_pairs_terms_equal_the_formula(teacher, student, sizes):
    size = 64 if teacher.startswith("timm") else 32
    distiller, t = make("ccm_kd", student=student, teacher=teacher, size=size)
    images, targets = batch(2, size=size)
    t_out = teacher_features(t, images)
    assert tuple(t_out.pre_pool.shape[-2:]) == sizes[0]
    s = student_pre_pool(distiller, images)
    assert tuple(s.shape[-2:]) == sizes[1]
    for resize in ("pool", "upsample"):
        distiller.options.resize = resize
        logits, losses = distiller(images, targets, t_out)
        ccm = ref_ccm_term(s, t_out.pre_pool, t_out.classifier.weight, targets, "l2", resize)
        assert losses["cam"].item() == pytest.approx(10.0 * ccm.item(), rel=1e-4), resize
        assert losses["kd"].item() == pytest.approx(0.9 * ref_kd(logits, t_out.logits, 4.0).item(), rel=1e-4)
        assert losses["ce"].item() == pytest.approx(0.1 * ref_ce(logits, targets).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert distiller.student.get_classifier().weight.grad is not None


def test_cam_methods_refuse_a_model_without_a_gap_linear_head():
    student = create_model("timm:mobilenetv3_small_100", 10)
    teacher = create_model("resnet14", 10)
    for name in ("cam_loss", "ccm", "ccm_kd"):
        with pytest.raises(KDError, match=r"the student 'timm:mobilenetv3_small_100' cannot give one"):
            DISTILLERS.get(name).check_models(student, teacher, DISTILLERS.get(name).Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=r"the teacher 'timm:mobilenetv3_small_100' cannot give one"):
        DISTILLERS.get("ccm").check_models(teacher, student, DISTILLERS.get("ccm").Options(), DataSpec(10, (32, 32)))
