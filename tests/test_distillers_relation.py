"""pkt, rkd, sp, nst and kdsvd: losses against the reference code's values, hand computations on real
models, stage pairing and refusals, float32 under autocast, and where the gradients go."""
import json

import pytest
import torch
import torch.nn.functional as F

import kd.distillers.kdsvd  # noqa: F401  (registration, until kd/distillers/__init__.py imports them)
import kd.distillers.nst  # noqa: F401
import kd.distillers.pkt  # noqa: F401
import kd.distillers.rkd  # noqa: F401
import kd.distillers.sp  # noqa: F401
from conftest import shared_file
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.distillers.kdsvd import KDSVDOptions, align_to_teacher, kdsvd_loss
from kd.distillers.nst import nst_loss
from kd.distillers.pkt import pkt_loss
from kd.distillers.rkd import rkd_loss
from kd.distillers.sp import sp_loss
from kd.errors import KDError
from kd.models import create_model
from kd.models.features import Features
from kd.options import build as build_options

METHODS = ("pkt", "rkd", "sp", "nst", "kdsvd")
DATA = DataSpec(10, (32, 32))


@pytest.fixture(scope="module")
def method_cases():
    cases = json.loads(shared_file("fixtures", "reference_losses_methods.json").read_text())["cases"]
    return {name: [c for c in cases if c["loss"] == name] for name in METHODS}


def tensors(nested):
    return [torch.tensor(x) for x in nested]


# --- reference values ---------------------------------------------------------------------------------------

def test_pooled_feature_losses_match_reference(method_cases):
    assert method_cases["pkt"] and method_cases["rkd"]
    for c in method_cases["pkt"]:
        value = pkt_loss(torch.tensor(c["student_feat"]), torch.tensor(c["teacher_feat"]))
        assert value.item() == pytest.approx(c["value"], rel=1e-5)
    for c in method_cases["rkd"]:
        value = rkd_loss(torch.tensor(c["student_feat"]), torch.tensor(c["teacher_feat"]),
                         c["distance_weight"], c["angle_weight"])
        assert value.item() == pytest.approx(c["value"], rel=1e-5)


def test_stage_losses_match_reference(method_cases):
    assert method_cases["sp"] and method_cases["nst"]
    for name, loss in (("sp", sp_loss), ("nst", nst_loss)):
        for c in method_cases[name]:
            value = sum(loss(s, t) for s, t in zip(tensors(c["student_feats"]), tensors(c["teacher_feats"]), strict=True))
            assert value.item() == pytest.approx(c["value"], rel=1e-5), name


def test_kdsvd_loss_matches_reference(method_cases):
    assert method_cases["kdsvd"]
    for c in method_cases["kdsvd"]:
        value = kdsvd_loss(tensors(c["student_feats"]), tensors(c["teacher_feats"]), c["k"])
        assert value.item() == pytest.approx(c["value"], rel=1e-3)


# --- hand-written formulas (independent of the module code) -------------------------------------------------

def hand_pkt(s, t, eps=1e-7):
    def probs(x):
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdim=True)
    ps, pt = probs(s), probs(t)
    return (pt * (torch.log(pt + eps) - torch.log(ps + eps))).mean()


def hand_rkd(s, t, wd=25.0, wa=50.0, squared=False):
    def dist(x):
        d = torch.cdist(x, x) ** (2 if squared else 1)
        off = ~torch.eye(len(x), dtype=torch.bool)
        return d / d[off].mean()

    def angles(x):
        b = len(x)
        e = torch.zeros(b, b, x.shape[1])
        for j in range(b):
            for i in range(b):
                if i != j:
                    e[j, i] = (x[i] - x[j]) / (x[i] - x[j]).norm()
        return torch.einsum("jid,jkd->jik", e, e)
    return wd * F.smooth_l1_loss(dist(s), dist(t)) + wa * F.smooth_l1_loss(angles(s), angles(t))


def hand_sp(s, t):
    def gram(x):
        q = x.reshape(len(x), -1)
        g = q @ q.T
        return g / g.norm(dim=1, keepdim=True)
    return ((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2


def hand_nst(s, t):
    def unit(x):
        x = x.reshape(x.shape[0], x.shape[1], -1)
        return x / x.norm(dim=2, keepdim=True).clamp_min(1e-12)  # a dead (all-zero) channel stays zero
    s, t = unit(s), unit(t)
    k = lambda a, b: torch.einsum("bin,bjn->bij", a, b).pow(2).mean()  # noqa: E731
    return k(t, t) + k(s, s) - 2 * k(s, t)


def test_rkd_squared_option_uses_squared_distances():
    torch.manual_seed(0)
    s, t = torch.randn(5, 6), torch.randn(5, 9)
    assert rkd_loss(s, t, 25, 50, squared=True).item() == pytest.approx(hand_rkd(s, t, squared=True).item(), rel=1e-5)
    assert rkd_loss(s, t, 25, 50).item() == pytest.approx(hand_rkd(s, t).item(), rel=1e-5)
    assert rkd_loss(s, t, 25, 50, squared=True).item() != pytest.approx(rkd_loss(s, t, 25, 50).item(), rel=1e-3)


def test_nst_pools_the_larger_map_and_allows_different_channel_counts():
    torch.manual_seed(0)
    big, small = torch.randn(3, 5, 8, 8), torch.randn(3, 7, 4, 4)
    pooled = F.avg_pool2d(big, 2)  # 8x8 -> 4x4 is exactly 2x2 averaging
    assert nst_loss(big, small).item() == pytest.approx(hand_nst(pooled, small).item(), rel=1e-5)
    assert nst_loss(small, big).item() == pytest.approx(hand_nst(small, pooled).item(), rel=1e-5)


@pytest.mark.parametrize("loss", [pkt_loss, rkd_loss])
def test_pooled_losses_are_zero_when_the_student_equals_the_teacher(loss):
    torch.manual_seed(0)
    f = torch.randn(6, 16)
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(f, torch.randn(6, 32)).item() > 1e-4


@pytest.mark.parametrize("loss", [sp_loss, nst_loss, lambda s, t: kdsvd_loss([s, s * 0.5 + 1], [t, t * 0.5 + 1])])
def test_stage_losses_are_zero_when_the_student_equals_the_teacher(loss):
    torch.manual_seed(0)
    f = torch.randn(4, 6, 8, 8)
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(f, torch.randn(4, 6, 8, 8)).item() > 1e-4


def test_kdsvd_alignment_picks_the_closest_student_vector_with_its_sign():
    eye = torch.eye(5)
    student = torch.stack([eye[2], -eye[0], eye[3], eye[4]], dim=1)[None]  # (1, W=5, 4 candidates)
    teacher = torch.stack([0.8 * eye[0] + 0.6 * eye[1]], dim=1)[None]     # closest: the 2nd candidate, sign -
    aligned = align_to_teacher(student, teacher)
    assert aligned.shape == (1, 5, 1)
    assert torch.equal(aligned[0, :, 0], eye[0])


def test_kdsvd_gives_finite_gradients_when_a_student_map_is_degenerate():
    torch.manual_seed(0)
    student = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    student[0][1] = 0.0  # an all-zero (dead) map: repeated singular values, the SVD gradient is undefined
    student = [s.requires_grad_(True) for s in student]
    teacher = [torch.rand(2, 6, 8, 8), torch.rand(2, 12, 4, 4)]
    loss = kdsvd_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(torch.isfinite(s.grad).all() for s in student)
    assert student[0].grad[0].abs().sum() > 0  # the healthy image still gets its gradient


@pytest.mark.parametrize("loss, args", [
    (pkt_loss, ((6, 16), (6, 32))),
    (rkd_loss, ((6, 16), (6, 32))),
    (sp_loss, ((4, 8, 8, 8), (4, 16, 8, 8))),
    (nst_loss, ((4, 8, 8, 8), (4, 16, 4, 4))),
    (lambda s, t: kdsvd_loss([s, s.flip(2)], [t, t.flip(2)]), ((4, 8, 8, 8), (4, 16, 8, 8))),
])
def test_losses_stay_float32_under_autocast(loss, args):
    torch.manual_seed(0)
    s, t = (torch.randn(*shape) for shape in args)
    plain = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmuls would run in bf16 here
        mixed = loss(s, t)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(plain.item(), rel=1e-6)


# --- distillers on real models -------------------------------------------------------------------------------

def make(name, student="resnet8", teacher="resnet14", **options):
    """A distiller built the way kd/run.py builds one; its teacher keeps requires_grad ON, so that a missing
    detach would show up as a teacher gradient."""
    torch.manual_seed(0)
    t = create_model(teacher, 10).eval()
    s = create_model(student, 10)
    cls = DISTILLERS.get(name)
    return cls(s, t, cls.Options(**options), DATA), t


def batch(teacher, n=4):
    torch.manual_seed(1)
    images, targets = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    return images, targets, teacher.forward_features(images)  # WITH autograd: the distiller must detach


def test_registered_with_the_reference_defaults():
    expected = {
        "pkt": {"feat_weight": 30000.0, "ce_weight": 1.0},
        "rkd": {"feat_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0, "squared": False, "ce_weight": 1.0},
        "sp": {"feat_weight": 3000.0, "pairs": [[-1, -1]], "ce_weight": 1.0},
        "nst": {"feat_weight": 50.0, "pairs": None, "ce_weight": 1.0},
        "kdsvd": {"feat_weight": 1.0, "k": 1, "pairs": None, "ce_weight": 1.0},
    }
    for name, defaults in expected.items():
        cls = DISTILLERS.get(name)
        assert cls.groups == ("feature",) and cls.paper and cls.summary()
        options = cls.Options()
        assert {k: getattr(options, k) for k in defaults} == defaults, name
    assert DISTILLERS.get("sp").Options().pairs is not DISTILLERS.get("sp").Options().pairs  # no shared default list


def test_default_stage_pairs():
    assert make("sp")[0].pairs == [(2, 2)]
    assert make("nst")[0].pairs == [(0, 0), (1, 1), (2, 2)]
    assert make("kdsvd")[0].pairs == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_the_student_and_never_the_teacher(name):
    distiller, teacher = make(name)
    assert distiller.extra_parameter_count() == 0
    assert not any(k.startswith("_teacher") for k in distiller.state_dict())
    images, targets, t_out = batch(teacher)
    assert t_out.logits.requires_grad
    logits, losses = distiller(images, targets, t_out)
    assert set(losses) == {"ce", name} and logits.shape == (4, 10)
    term = losses[name]
    assert torch.isfinite(term) and term.item() > 0
    term.backward(retain_graph=True)  # the method's term alone
    student = distiller.student
    assert student.fc.weight.grad is None  # the pooled feature and the stage maps come before the classifier
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    losses["ce"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name, weight, hand", [
    ("pkt", 30000.0, lambda s, t: hand_pkt(s.pre_pool.mean((2, 3)), t.pre_pool.mean((2, 3)))),
    ("rkd", 2.0, lambda s, t: hand_rkd(s.pre_pool.mean((2, 3)), t.pre_pool.mean((2, 3)))),
    ("sp", 3000.0, lambda s, t: hand_sp(s.stages[-1], t.stages[-1])),
    ("nst", 50.0, lambda s, t: sum(hand_nst(a, b) for a, b in zip(s.stages, t.stages))),
])
def test_one_training_step_term_equals_a_hand_computation(name, weight, hand):
    distiller, teacher = make(name, feat_weight=weight)
    images, targets, t_out = batch(teacher, n=6)
    if name == "pkt":
        # The pooled features of an untrained ReLU network are nearly parallel, so its cosine-kernel
        # distribution is almost uniform and the KL (~1e-8) is float32 rounding; a zero-mean teacher
        # feature gives a well-conditioned value to compare.
        torch.manual_seed(2)
        t_out = Features(t_out.logits, t_out.stages, torch.randn_like(t_out.pre_pool).requires_grad_(True), t_out.classifier)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    distiller.eval()  # eval BN so that a second pass gives the same features
    logits, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        expected = weight * hand(distiller.student.forward_features(images), t_out)
    assert losses[name].item() == pytest.approx(expected.item(), rel=1e-4)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    before = distiller.student.conv1.weight.detach().clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, distiller.student.conv1.weight)


def test_kdsvd_training_step_on_real_models():
    distiller, teacher = make("kdsvd", feat_weight=3.0)
    images, targets, t_out = batch(teacher, n=6)
    distiller.eval()
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        stages = distiller.student.forward_features(images).stages
        unweighted = kdsvd_loss(stages, [s.detach() for s in t_out.stages], 1)
    assert torch.isfinite(losses["kdsvd"]) and unweighted.item() > 0
    assert losses["kdsvd"].item() == pytest.approx(3.0 * unweighted.item(), rel=1e-4)


def test_sp_pairs_choose_the_stages_and_are_summed():
    options = build_options(DISTILLERS.get("sp").Options, {"pairs": [[0, 0], [-1, -1]]}, "recipe", prefix="sp.")
    cls = DISTILLERS.get("sp")
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval()
    distiller = cls(student, teacher, options, DATA)
    assert distiller.pairs == [(0, 0), (2, 2)]
    images, targets, t_out = batch(teacher)
    distiller.eval()
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        s = distiller.student.forward_features(images).stages
        expected = 3000.0 * (hand_sp(s[0], t_out.stages[0]) + hand_sp(s[2], t_out.stages[2]))
    assert losses["sp"].item() == pytest.approx(expected.item(), rel=1e-4)


# --- refusals ------------------------------------------------------------------------------------------------

def test_pooled_methods_refuse_a_model_without_a_pre_pool_map():
    no_pool = create_model("torchvision:mobilenet_v3_small", 10)  # its head is not GAP -> Linear: no pre_pool
    plain = create_model("resnet8", 10)
    for name in ("pkt", "rkd"):
        cls = DISTILLERS.get(name)
        with pytest.raises(KDError, match=rf"{name} distils the pooled .*the student 'torchvision:mobilenet_v3_small' exposes no pre-pool map"):
            cls.check_models(no_pool, plain, cls.Options(), DATA)
        with pytest.raises(KDError, match=r"the teacher 'torchvision:mobilenet_v3_small' exposes no pre-pool map"):
            cls.check_models(plain, no_pool, cls.Options(), DATA)
        with pytest.raises(KDError, match="exposes no pre-pool map"):
            cls(no_pool, plain, cls.Options(), DATA)
        cls.check_models(plain, create_model("ShuffleV1", 10), cls.Options(), DATA)  # different widths are fine


def test_stage_methods_refuse_a_model_without_stage_maps():
    no_stages = create_model("torchvision:mobilenet_v3_small", 10)
    plain = create_model("resnet8", 10)
    with pytest.raises(KDError, match=r"the student exposes no stage maps, so 'sp.pairs'"):
        DISTILLERS.get("sp").check_models(no_stages, plain, DISTILLERS.get("sp").Options(), DATA)
    for name in ("nst", "kdsvd"):
        with pytest.raises(KDError, match=rf"{name}: the student has 0 stages and the teacher 3"):
            DISTILLERS.get(name).check_models(no_stages, plain, DISTILLERS.get(name).Options(), DATA)


@pytest.mark.parametrize("name", ["nst", "kdsvd"])
def test_unequal_stage_counts_need_explicit_pairs(name):
    cls = DISTILLERS.get(name)
    student, teacher = create_model("resnet8", 10), create_model("vgg8", 10).eval()
    with pytest.raises(KDError, match=rf"student has 3 stages and the teacher 4.*{name}\.pairs.*64x8x8.*512x4x4"):
        cls.check_models(student, teacher, cls.Options(), DATA)
    with pytest.raises(KDError, match=rf"{name}\.pairs"):
        cls(student, teacher, cls.Options(), DATA)
    with pytest.raises(KDError, match=rf"{name}\.pairs: stage index 4 .*teacher has 4 stages.*-4..3"):
        cls.check_models(student, teacher, cls.Options(pairs=[[1, 0], [2, 4]]), DATA)
    # resnet8 32x16x16, 64x8x8 with vgg8 128x16x16, 256x8x8 (equal widths, as kdsvd needs)
    options = build_options(cls.Options, {"pairs": [[1, 0], [-1, 1]]}, "recipe", prefix=f"{name}.")
    distiller = cls(student, teacher, options, DATA)
    assert distiller.pairs == [(1, 0), (2, 1)]
    images, targets, t_out = batch(teacher)
    distiller.eval()  # eval BN so that a second pass gives the same features
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        s = distiller.student.forward_features(images).stages
        chosen_s, chosen_t = [s[1], s[2]], [t_out.stages[0].detach(), t_out.stages[1].detach()]
        if name == "nst":
            expected = 50.0 * sum(hand_nst(a, b) for a, b in zip(chosen_s, chosen_t))
        else:  # kdsvd's loss itself is checked against the reference values above; here: the stages it pairs
            expected = kdsvd_loss(chosen_s, chosen_t, 1)
    assert losses[name].item() == pytest.approx(expected.item(), rel=1e-4) and expected.item() > 0


def test_sp_refuses_an_out_of_range_stage():
    cls = DISTILLERS.get("sp")
    with pytest.raises(KDError, match=r"sp.pairs: stage index 3 .*student has 3 stages.*-3..2.*64x8x8"):
        cls.check_models(create_model("resnet8", 10), create_model("resnet14", 10), cls.Options(pairs=[[3, -1]]), DATA)
    with pytest.raises(KDError, match=r"sp.pairs is empty"):
        cls.check_models(create_model("resnet8", 10), create_model("resnet14", 10), cls.Options(pairs=[]), DATA)


def test_kdsvd_refuses_pairs_it_cannot_relate():
    cls = DISTILLERS.get("kdsvd")
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    with pytest.raises(KDError, match=r"student stage 0 \(16x32x32\) and teacher stage 1 \(32x16x16\) differ in width \(32 vs 16\)"):
        cls.check_models(student, teacher, KDSVDOptions(pairs=[[0, 1], [1, 2]]), DATA)
    with pytest.raises(KDError, match=r"at least two stage pairs"):
        cls.check_models(student, teacher, KDSVDOptions(pairs=[[-1, -1]]), DATA)
    with pytest.raises(KDError, match=r"kdsvd.k is 9, but teacher stage 2 \(64x8x8\) has only 8 singular vectors"):
        cls.check_models(student, teacher, KDSVDOptions(k=9), DATA)
    # vgg13 -> MobileNetV2: equal stage counts, but the deepest maps are 4 and 2 wide
    with pytest.raises(KDError, match=r"student stage 3 \(160x2x2\) and teacher stage 3 \(512x4x4\) differ in width"):
        cls.check_models(create_model("MobileNetV2", 10), create_model("vgg13", 10), KDSVDOptions(), DATA)
    cls.check_models(create_model("MobileNetV2", 10), create_model("vgg13", 10),
                     KDSVDOptions(pairs=[[0, 0], [1, 1], [2, 2]]), DATA)


@pytest.mark.parametrize("name", ["sp", "nst"])
def test_heterogeneous_pairs_work_with_default_stages(name):
    # MobileNetV2 12x16x16 .. 160x2x2 under vgg8 128x16x16 .. 512x4x4: other channel counts everywhere and
    # a smaller deepest map (nst pools the teacher's 4x4 to 2x2)
    cls = DISTILLERS.get(name)
    cls.check_models(create_model("MobileNetV2", 10), create_model("vgg8", 10), cls.Options(), DATA)
    distiller, teacher = make(name, "MobileNetV2", "vgg8")
    assert distiller.pairs == ([(3, 3)] if name == "sp" else [(0, 0), (1, 1), (2, 2), (3, 3)])
    images, targets, t_out = batch(teacher)
    distiller.eval()
    _, losses = distiller(images, targets, t_out)
    with torch.no_grad():
        s = distiller.student.forward_features(images).stages
        if name == "sp":  # one pair of the deepest stages; the Gram matrices are batch x batch, any widths
            expected = 3000.0 * hand_sp(s[3], t_out.stages[3])
        else:  # every stage; the teacher's 4x4 deepest map averaged to the student's 2x2 first
            pooled = [b if b.shape[-1] == a.shape[-1] else F.adaptive_avg_pool2d(b, a.shape[-1])
                      for a, b in zip(s, t_out.stages)]
            assert [b.shape[-1] for b in pooled] == [16, 8, 4, 2]
            expected = 50.0 * sum(hand_nst(a, b) for a, b in zip(s, pooled))
    assert losses[name].item() == pytest.approx(expected.item(), rel=1e-4) and expected.item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
