"""CRD: the NCE loss and the memory-bank update against hand computations written here (there is no fixture
case for CRD), the first-batch estimate of Z, negative sampling, where the gradients go, what is a buffer and
what a parameter, state-dict round trips, refusals, and a training step on real kd models."""
import math

import pytest
import torch
from torch import nn

import kd.distillers.crd as crd  # noqa: F401  (registration, until kd/distillers/__init__.py imports it)
from kd.data import DataSpec
from kd.distillers import DISTILLERS
from kd.errors import KDError
from kd.models import create_model
from kd.models.features import Features

TRAIN_SIZE = 64


def make(seed=0, train_size=TRAIN_SIZE, **options):
    """A distiller built the way kd/run.py builds one, plus its teacher."""
    torch.manual_seed(seed)
    t = create_model("resnet14", 10).eval().requires_grad_(False)
    s = create_model("resnet8", 10)
    cls = DISTILLERS.get("crd")
    labels = torch.arange(train_size) % 10  # what a loaded data set declares; the default negatives read them
    return cls(s, t, cls.Options(**options), DataSpec(10, (32, 32), train_size, labels)), t


def batch(teacher, n=4, seed=1, train_size=TRAIN_SIZE):
    g = torch.Generator().manual_seed(seed)
    images, targets = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    index = torch.randperm(train_size, generator=g)[:n]
    with torch.no_grad():
        return images, targets, teacher.forward_features(images), index


# --- hand computations (plain Python over floats: no kd function involved) ---------------------------------------

def hand_embed(pooled: torch.Tensor, linear: nn.Linear) -> list[list[float]]:
    w, b = linear.weight.detach().tolist(), linear.bias.detach().tolist()
    out = []
    for x in pooled.tolist():
        y = [sum(wi * xi for wi, xi in zip(row, x)) + bj for row, bj in zip(w, b)]
        norm = math.sqrt(sum(v * v for v in y))
        out.append([v / norm for v in y])
    return out


def hand_exp_scores(memory, samples, embedding, T):
    """exp(<memory[samples[i][k]], embedding[i]> / T) as nested lists."""
    return [[math.exp(sum(m * v for m, v in zip(memory[j], embedding[i])) / T) for j in samples[i]]
            for i in range(len(samples))]


def hand_nce(exp_scores, Z, n_data):
    """-1/B sum_i [log P_i0 / (P_i0 + K/N + eps) + sum_k log (K/N) / (P_ik + K/N + eps)], P = exp / Z."""
    k = len(exp_scores[0]) - 1
    noise, eps, total = k / n_data, 1e-7, 0.0
    for row in exp_scores:
        p = [e / Z for e in row]
        total += math.log(p[0] / (p[0] + noise + eps))
        total += sum(math.log(noise / (q + noise + eps)) for q in p[1:])
    return -total / len(exp_scores)


def hand_update(row, embedding, momentum):
    y = [momentum * r + (1 - momentum) * v for r, v in zip(row, embedding)]
    norm = math.sqrt(sum(v * v for v in y))
    return [v / norm for v in y]


# --- the loss on a tiny setting -----------------------------------------------------------------------------------

def test_crd_loss_matches_the_nce_formula_by_hand():
    g = torch.Generator().manual_seed(3)
    n, d, T = 7, 3, 0.5
    mem_s, mem_t = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    v_s = torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=1)
    samples = torch.tensor([[4, 0, 2, 2], [1, 6, 3, 5]])  # positive first, K = 3 (a repeat is allowed)
    z = (9.0, 11.0)
    expected = (hand_nce(hand_exp_scores(mem_t.tolist(), samples.tolist(), v_s.tolist(), T), z[0], n)
                + hand_nce(hand_exp_scores(mem_s.tolist(), samples.tolist(), v_t.tolist(), T), z[1], n))
    value = crd.crd_loss(v_s, v_t, mem_s, mem_t, samples, T, z)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # the other direction swaps the banks: a swap must change the value (the pairing is tested, not just a sum)
    assert crd.crd_loss(v_s, v_t, mem_t, mem_s, samples, T, z).item() != pytest.approx(expected, rel=1e-3)


def test_dense_and_gathered_scores_agree_in_value_and_gradient():
    g = torch.Generator().manual_seed(4)
    memory = torch.randn(50, 8, generator=g)
    samples = torch.randint(0, 50, (3, 20), generator=g)
    results = []
    for dense in (True, False):
        v = torch.randn(3, 8, generator=torch.Generator().manual_seed(5)).requires_grad_()
        scores = crd.contrast_scores(memory, samples, v, dense=dense)
        (scores * torch.arange(20.0)).sum().backward()
        results.append((scores.detach(), v.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)
    expected = [[sum(memory[j, c].item() * v.detach()[i, c].item() for c in range(8)) for j in samples[i].tolist()]
                for i in range(3)]
    torch.testing.assert_close(results[1][0], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_negatives_are_uniform_over_the_other_images_and_the_positive_is_first():
    index = torch.tensor([0, 3, 4])
    torch.manual_seed(0)
    samples = crd.draw_samples(index, 5, 4000)
    assert samples.shape == (3, 4001) and torch.equal(samples[:, 0], index)
    for row, i in zip(samples[:, 1:], index.tolist()):
        assert i not in row.tolist()  # never the image itself
        counts = torch.bincount(row, minlength=5).float()
        others = [j for j in range(5) if j != i]
        assert (counts[others] > 800).all() and (counts[others] < 1200).all()  # about 1000 each of 4
    torch.manual_seed(0)
    assert torch.equal(crd.draw_samples(index, 5, 4000), samples)  # the global RNG decides


# --- the distiller: loss, Z and bank update against hand computation ----------------------------------------------

@pytest.mark.parametrize("momentum", [0.5, 0.2])
def test_forward_loss_z_and_bank_update_match_hand_computation(monkeypatch, momentum):
    distiller, teacher = make(nce_k=5, nce_m=momentum, negatives="any")  # draws patched below
    distiller.eval()  # BN in eval: the features read below are the ones forward saw
    images, targets, t_out, index = batch(teacher, n=3)
    g = torch.Generator().manual_seed(7)
    samples = torch.cat([index[:, None], torch.randint(0, TRAIN_SIZE, (3, 5), generator=g)], 1)
    monkeypatch.setattr(crd, "draw_samples", lambda idx, n, k: samples)
    mem_s, mem_t = distiller.memory_student.clone(), distiller.memory_teacher.clone()
    assert (distiller.nce_z < 0).all()  # not yet estimated

    _, terms = distiller(images, targets, t_out, 0, index=index)

    with torch.no_grad():
        pooled_s = distiller.student.forward_features(images).pre_pool.mean((2, 3))
    v_s = hand_embed(pooled_s, distiller.embed_student)
    v_t = hand_embed(t_out.pre_pool.mean((2, 3)), distiller.embed_teacher)
    exp_s = hand_exp_scores(mem_t.tolist(), samples.tolist(), v_s, 0.07)  # student against the teacher's bank
    exp_t = hand_exp_scores(mem_s.tolist(), samples.tolist(), v_t, 0.07)  # teacher against the student's bank
    z_s = sum(map(sum, exp_s)) / (3 * 6) * TRAIN_SIZE  # first batch: mean of exp scores times N
    z_t = sum(map(sum, exp_t)) / (3 * 6) * TRAIN_SIZE
    assert distiller.nce_z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    expected = 0.8 * (hand_nce(exp_s, z_s, TRAIN_SIZE) + hand_nce(exp_t, z_t, TRAIN_SIZE))
    assert set(terms) == {"ce", "crd"}
    assert terms["crd"].item() == pytest.approx(expected, rel=1e-5)

    # bank update at the batch's rows: row <- normalise(m * row + (1 - m) * embedding); every other row untouched
    rows = index.tolist()
    for memory, old, v in ((distiller.memory_student, mem_s, v_s), (distiller.memory_teacher, mem_t, v_t)):
        for i, r in enumerate(rows):
            assert memory[r].tolist() == pytest.approx(hand_update(old[r].tolist(), v[i], momentum), rel=1e-5, abs=1e-6)
            assert memory[r].norm().item() == pytest.approx(1.0, rel=1e-6)
        rest = [r for r in range(TRAIN_SIZE) if r not in rows]
        assert torch.equal(memory[rest], old[rest])

    # Z is estimated once: a second batch keeps it and is normalised by it
    z_before = distiller.nce_z.clone()
    images2, targets2, t_out2, index2 = batch(teacher, n=3, seed=2)
    monkeypatch.setattr(crd, "draw_samples", lambda idx, n, k: torch.cat([idx[:, None], samples[:, 1:]], 1))
    mem_s2, mem_t2 = distiller.memory_student.clone(), distiller.memory_teacher.clone()
    _, terms2 = distiller(images2, targets2, t_out2, 0, index=index2)
    assert torch.equal(distiller.nce_z, z_before)
    with torch.no_grad():
        pooled_s2 = distiller.student.forward_features(images2).pre_pool.mean((2, 3))
    samples2 = torch.cat([index2[:, None], samples[:, 1:]], 1).tolist()
    expected2 = 0.8 * (hand_nce(hand_exp_scores(mem_t2.tolist(), samples2, hand_embed(pooled_s2, distiller.embed_student), 0.07), z_s, TRAIN_SIZE)
                       + hand_nce(hand_exp_scores(mem_s2.tolist(), samples2, hand_embed(t_out2.pre_pool.mean((2, 3)), distiller.embed_teacher), 0.07), z_t, TRAIN_SIZE))
    assert terms2["crd"].item() == pytest.approx(expected2, rel=1e-5)


def test_kd_weight_adds_the_kd_term():
    distiller, teacher = make(nce_k=8, kd_weight=1.0)
    images, targets, t_out, index = batch(teacher)
    _, terms = distiller(images, targets, t_out, 0, index=index)
    assert set(terms) == {"ce", "crd", "kd"} and terms["kd"].item() > 0
    p_t = torch.softmax(t_out.logits / 4, 1)
    log_p_s = torch.log_softmax(distiller.student(images).detach() / 4, 1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(1).mean() * 16
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-4)


# --- gradients, buffers, parameters -------------------------------------------------------------------------------

def test_gradients_reach_the_student_and_both_heads_but_not_the_teacher():
    distiller, _ = make(nce_k=16)
    torch.manual_seed(5)
    teacher = create_model("resnet14", 10).eval()  # requires_grad ON: the distiller must detach
    assert all(p.requires_grad for p in teacher.parameters())
    images, targets, _, index = batch(teacher)
    t_out = teacher.forward_features(images)  # with autograd
    assert t_out.pre_pool.requires_grad
    _, terms = distiller(images, targets, t_out, 0, index=index)
    terms["crd"].backward()  # the CRD term alone
    assert all(p.grad is None for p in teacher.parameters())
    for head in (distiller.embed_student, distiller.embed_teacher):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert distiller.student.conv1.weight.grad.abs().sum() > 0
    assert distiller.student.fc.weight.grad is None  # the pooled feature comes before the classifier


def test_banks_are_buffers_not_parameters_and_heads_are_counted():
    distiller, teacher = make(nce_k=16)
    banks = [distiller.memory_student, distiller.memory_teacher]
    for bank in banks:
        assert bank.shape == (TRAIN_SIZE, 128) and bank.dtype == torch.float32 and not bank.requires_grad
        assert bank.numel() * bank.element_size() == TRAIN_SIZE * 128 * 4  # bytes per bank
    params = list(distiller.parameters())
    assert not any(p is b for p in params for b in banks)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert not any(p is b for p in in_optimizer for b in banks)
    assert {"memory_student", "memory_teacher", "nce_z"} <= set(dict(distiller.named_buffers()))
    assert {"memory_student", "memory_teacher", "nce_z"} <= set(distiller.state_dict())
    c_s, c_t = distiller.student.fc.in_features, teacher.fc.in_features
    assert distiller.extra_parameter_count() == (c_s + 1) * 128 + (c_t + 1) * 128
    heads = list(distiller.embed_student.parameters()) + list(distiller.embed_teacher.parameters())
    assert all(any(p is q for q in in_optimizer) for p in heads)
    # the reference's initialisation: uniform in [-s, s], s = 1 / sqrt(128 / 3)
    bound = 1 / math.sqrt(128 / 3)
    for bank in banks:
        assert bank.abs().max().item() <= bound and bank.abs().max().item() > 0.9 * bound
        assert abs(bank.mean().item()) < 0.01
    assert not torch.equal(banks[0], banks[1])


def test_state_dict_round_trip_restores_banks_and_z_exactly():
    trained, teacher = make(seed=0, nce_k=16)
    images, targets, t_out, index = batch(teacher)
    trained(images, targets, t_out, 0, index=index)
    fresh, _ = make(seed=1, nce_k=16)  # other banks and heads
    images2, targets2, t_out2, index2 = batch(teacher, seed=3)
    fresh(images2, targets2, t_out2, 0, index=index2)  # its own Z, already estimated
    assert not torch.equal(fresh.memory_student, trained.memory_student)
    fresh.load_state_dict(trained.state_dict())
    for name in ("memory_student", "memory_teacher", "nce_z"):
        assert torch.equal(getattr(fresh, name), getattr(trained, name)), name
    # the next step is the same in both (same RNG): the restored Z is used, not the one fresh had estimated
    outs = []
    for distiller in (trained, fresh):
        torch.manual_seed(9)
        outs.append(distiller(images2, targets2, t_out2, 0, index=index2)[1]["crd"].item())
    assert outs[0] == outs[1]
    assert torch.equal(fresh.memory_student, trained.memory_student)
    # a state saved before the first step (Z unset) makes the next step estimate Z again
    unset, _ = make(seed=2, nce_k=16)
    trained.load_state_dict(unset.state_dict())
    assert (trained.nce_z < 0).all()
    trained(images, targets, t_out, 0, index=index)
    assert (trained.nce_z > 0).all()


# --- refusals -----------------------------------------------------------------------------------------------------

class NoPrePool(nn.Module):
    """A model whose features carry no pre-pool map (as a token model's adapter)."""

    arch_name = "timm:tokens_only"

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward_features(self, x):
        return Features(self.fc(x.mean((2, 3))), [], None, None)


def test_models_without_pre_pool_and_unknown_train_size_are_refused():
    cls = DISTILLERS.get("crd")
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    spec = DataSpec(10, (32, 32), TRAIN_SIZE, torch.arange(TRAIN_SIZE) % 10)
    cls.check_models(student, teacher, cls.Options(), spec)  # the zoo pair is fine
    with pytest.raises(KDError, match=r"teacher 'timm:tokens_only' exposes no pre-pool map"):
        cls.check_models(student, NoPrePool(), cls.Options(), spec)
    with pytest.raises(KDError, match=r"student 'timm:tokens_only' exposes no pre-pool map"):
        cls(NoPrePool(), teacher, cls.Options(), spec)
    with pytest.raises(KDError, match=r"train_size is None"):
        cls.check_models(student, teacher, cls.Options(), DataSpec(10, (32, 32)))
    with pytest.raises(KDError, match=r"train_size is None"):
        cls(student, teacher, cls.Options(), DataSpec(10, (32, 32)))
    distiller, teacher = make(nce_k=4)
    images, targets, t_out, _ = batch(teacher)
    with pytest.raises(KDError, match="index"):
        distiller(images, targets, t_out, 0)


# --- a training step on real models -------------------------------------------------------------------------------

def test_training_step_on_resnet8_from_resnet14():
    distiller, teacher = make(nce_k=32)
    assert distiller.needs_index and distiller.groups == ("feature",)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9)
    heads_before = [p.detach().clone() for p in distiller.embed_teacher.parameters()]
    for step in range(3):
        images, targets, t_out, index = batch(teacher, n=8, seed=10 + step)
        banks_before = distiller.memory_teacher.clone()
        logits, terms = distiller(images, targets, t_out, step, index=index)
        assert logits.shape == (8, 10) and set(terms) == {"ce", "crd"}
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values())
        assert terms["crd"].item() > 0
        changed = (distiller.memory_teacher != banks_before).any(1).nonzero().flatten()
        assert sorted(changed.tolist()) == sorted(index.tolist())
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(heads_before, distiller.embed_teacher.parameters()))


def test_losses_are_float32_under_autocast():
    distiller, teacher = make(nce_k=8)
    images, targets, t_out, index = batch(teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, terms = distiller(images, targets, t_out, 0, index=index)
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert distiller.memory_student.dtype == torch.float32


# --- negatives of the other classes (the reference's CIFAR-100 mode, with replacement) --------------------------

def test_other_class_negatives_never_share_the_anchors_class_and_reach_every_other_image():
    torch.manual_seed(0)
    labels = torch.tensor([3, 0, 1, 3, 2, 0, 1, 1, 2, 3, 0, 2])  # 4 classes of 3 images, shuffled
    by_class = torch.argsort(labels, stable=True)
    class_start = torch.tensor([0, 3, 6, 9, 12])
    index = torch.tensor([0, 1, 4, 7])
    samples = crd.draw_other_class_samples(index, labels[index], by_class, class_start, 3000)
    assert samples.shape == (4, 3001) and torch.equal(samples[:, 0], index)
    for row, anchor in zip(samples, index.tolist()):
        drawn = row[1:]
        assert (labels[drawn] != labels[anchor]).all()
        # uniform over the 9 images of the other three classes: each drawn about 3000 / 9 = 333 times
        counts = torch.bincount(drawn, minlength=12)[labels != labels[anchor]]
        assert len(counts) == 9 and counts.min() > 250 and counts.max() < 420


def test_other_class_negatives_need_the_training_labels_and_train():
    cls = DISTILLERS.get("crd")
    t = create_model("resnet14", 10).eval().requires_grad_(False)
    with pytest.raises(KDError, match="crd.negatives other_classes .*declared no labels"):
        cls(create_model("resnet8", 10), t, cls.Options(), DataSpec(10, (32, 32), TRAIN_SIZE))  # the default mode
    cls(create_model("resnet8", 10), t, cls.Options(negatives="any"), DataSpec(10, (32, 32), TRAIN_SIZE))  # needs none
    torch.manual_seed(0)
    labels = torch.arange(TRAIN_SIZE) % 10
    distiller = cls(create_model("resnet8", 10), t, cls.Options(negatives="other_classes", nce_k=32),
                    DataSpec(10, (32, 32), TRAIN_SIZE, labels))
    assert "by_class" not in distiller.state_dict() and "class_start" not in distiller.state_dict()  # derived
    images, _, t_out, index = batch(t)
    _, losses = distiller(images, labels[index], t_out, index=index)
    assert torch.isfinite(losses["crd"]) and losses["crd"].item() > 0
    assert DISTILLERS.get("crd").Options().negatives == "other_classes"  # the reference's mode is the default


def _two_rank_banks(rank, store, out):
    import torch.distributed as dist

    from kd.engine.device import resolve_hardware
    from kd.engine.distributed import Distributed, wrap_ddp

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        distiller, teacher = make(nce_k=16)  # the same seed on both ranks: the same initial banks
        ddp = wrap_ddp(distiller, resolve_hardware("cpu", "fp32", False), Distributed(rank, 2, 0))
        optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
        for step in range(3):  # each rank its own images and indices, as the sharded loader gives them
            images, targets, t_out, index = batch(teacher, seed=10 * step + rank)
            _, losses = ddp(images, targets, t_out, index=index)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        state = {}
        for name in ("memory_student", "memory_teacher", "nce_z"):
            mine = getattr(distiller, name)
            state[name] = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(state[name], mine)
        if rank == 0:
            torch.save({"ignored": sorted(ddp.parameters_to_ignore), **state}, out)
    finally:
        dist.destroy_process_group()


def test_under_ddp_the_banks_stay_equal_on_every_rank_without_being_broadcast(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_banks, args=(str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["ignored"] == ["memory_student", "memory_teacher", "nce_z"]  # DDP leaves them to CRD
    for name in ("memory_student", "memory_teacher", "nce_z"):
        rank0, rank1 = result[name]
        assert torch.equal(rank0, rank1), name  # kept equal by the all-gathered update alone
    fresh, _ = make(nce_k=16)
    assert not torch.equal(result["memory_student"][0], fresh.memory_student)  # and they did change
    assert (result["nce_z"][0] > 0).all()
