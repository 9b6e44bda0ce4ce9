"""kd.cam against formulas written here: CAM and CAAM as slow loops, the normalisations per sample,
resizing with torch's own pooling/interpolation, localisation scores on hand-made maps."""
import math

import pytest
import torch
import torch.nn.functional as F

from kd.cam import box_scores, caam, cam, l1_map_loss, normalise, to_common_size

EPS = 1e-6  # kd.cam.normalise's default epsilon


def reference_normalise(maps, kind, eps=EPS):
    """One sample at a time, over its H*W values."""
    out = []
    for m in maps:
        v = m.flatten().double()
        if kind == "minmax":
            v = (v - v.min()) / (v.max() - v.min() + eps)
        elif kind == "l2":
            v = v / (math.sqrt(sum(x * x for x in v.tolist())) + eps)
        else:
            e = (v - v.max()).exp()
            v = e / e.sum()
        out.append(v.view_as(m).float())
    return torch.stack(out)


def test_cam_and_caam_equal_a_slow_loop():
    torch.manual_seed(0)
    f, w = torch.randn(3, 5, 4, 6), torch.randn(7, 5)
    classes = torch.tensor([2, 0, 6])
    slow_cam = torch.zeros(3, 4, 6)
    slow_caam = torch.zeros(3, 4, 6)
    for b in range(3):
        for k in range(5):
            for i in range(4):
                for j in range(6):
                    slow_cam[b, i, j] += w[classes[b], k] * f[b, k, i, j]
                    slow_caam[b, i, j] += f[b, k, i, j]
    assert torch.allclose(cam(f, w, classes), slow_cam, atol=1e-5)
    assert torch.allclose(caam(f), slow_caam, atol=1e-5)


def test_cam_and_caam_of_a_hand_made_map():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # B=1, K=2, H=1, W=2
    w = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    assert cam(f, w, torch.tensor([1])).tolist() == [[[2 * 1 - 3, 2 * 2 + 1]]]
    assert cam(f, w, torch.tensor([0])).tolist() == [[[1.0, 2.0]]]
    assert caam(f).tolist() == [[[4.0, 1.0]]]
    assert cam(f.half(), w.half(), torch.tensor([1])).dtype == torch.float32  # float32 whatever the input


def test_cam_mean_is_the_logit_without_bias():
    torch.manual_seed(0)
    f, linear = torch.randn(2, 8, 3, 3), torch.nn.Linear(8, 4)
    logits = linear(f.mean((2, 3)))
    maps = cam(f, linear.weight, torch.tensor([1, 3]))
    assert torch.allclose(maps.mean((1, 2)) + linear.bias[[1, 3]], logits[[0, 1], [1, 3]], atol=1e-5)


@pytest.mark.parametrize("kind", ["minmax", "l2", "softmax"])
def test_normalisations_equal_the_formula_per_sample(kind):
    torch.manual_seed(0)
    maps = torch.randn(4, 5, 3) * torch.tensor([0.5, 3.0, 10.0, 1.0])[:, None, None] + 1
    assert torch.allclose(normalise(maps, kind), reference_normalise(maps, kind), atol=1e-6)
    assert torch.allclose(normalise(maps, kind, eps=0.5), reference_normalise(maps, kind, eps=0.5), atol=1e-6)


def test_normalisations_of_a_hand_made_map():
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    assert normalise(m, "minmax").flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)
    assert normalise(m, "l2").flatten().tolist() == pytest.approx([x / math.sqrt(14) for x in (0, 1, 2, 3)], abs=1e-6)
    total = sum(math.exp(x) for x in (0, 1, 2, 3))
    assert normalise(m, "softmax").flatten().tolist() == pytest.approx([math.exp(x) / total for x in (0, 1, 2, 3)], abs=1e-6)


def test_constant_and_zero_maps_stay_finite_with_the_formula_values():
    constant, zeros = torch.full((2, 4, 4), 7.0), torch.zeros(2, 4, 4)
    assert torch.equal(normalise(constant, "minmax"), zeros)  # (7 - 7) / (0 + eps)
    assert torch.allclose(normalise(constant, "l2"), torch.full((2, 4, 4), 7 / (28 + EPS)))  # ||7 * ones(16)|| = 28
    assert torch.allclose(normalise(constant, "softmax"), torch.full((2, 4, 4), 1 / 16))
    assert torch.equal(normalise(zeros, "minmax"), zeros) and torch.equal(normalise(zeros, "l2"), zeros)
    assert torch.allclose(normalise(zeros, "softmax"), torch.full((2, 4, 4), 1 / 16))
    with pytest.raises(ValueError, match="unknown normalisation 'max'"):
        normalise(zeros, "max")


def test_minmax_and_l2_are_scale_invariant_softmax_is_not():
    torch.manual_seed(0)
    maps = torch.randn(3, 6, 6)
    for kind in ("minmax", "l2"):  # the formula of the unscaled map describes the scaled one too
        assert torch.allclose(normalise(maps * 25.0, kind), reference_normalise(maps, kind), atol=1e-5)
        assert torch.allclose(normalise(maps * 0.2, kind), reference_normalise(maps, kind), atol=1e-4)
    assert torch.allclose(normalise(maps + 5.0, "minmax"), reference_normalise(maps, "minmax"), atol=1e-5)  # shift too
    sharp = normalise(maps * 25.0, "softmax")
    assert torch.allclose(sharp, reference_normalise(maps * 25.0, "softmax"), atol=1e-6)
    assert not torch.allclose(sharp, reference_normalise(maps, "softmax"), atol=1e-3)


def test_l1_map_loss_is_the_mean_absolute_difference():
    a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    b = torch.tensor([[[1.0, 1.0], [0.0, 7.0]]])
    assert l1_map_loss(a, b).item() == pytest.approx((1 + 0 + 2 + 4) / 4)
    torch.manual_seed(0)
    x, y = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    slow = sum(abs(p - q) for p, q in zip(x.flatten().tolist(), y.flatten().tolist())) / 60
    assert l1_map_loss(x, y).item() == pytest.approx(slow, rel=1e-5)


def test_to_common_size_pools_the_larger_map_either_way_round():
    large = torch.arange(64.0).view(1, 8, 8)
    small = torch.randn(1, 4, 4)
    blocks = large.view(1, 4, 2, 4, 2).mean((2, 4))  # mean of each 2x2 block
    assert blocks[0, 0, 0].item() == (0 + 1 + 8 + 9) / 4
    a, b = to_common_size(large, small, "pool")
    assert torch.equal(a, blocks) and torch.equal(b, small)
    a, b = to_common_size(small, large, "pool")  # the order of the arguments is kept
    assert torch.equal(a, small) and torch.equal(b, blocks)
    # uneven sizes: torch's adaptive pooling, written here, on the larger area
    torch.manual_seed(0)
    p, q = torch.randn(2, 7, 5), torch.randn(2, 3, 2)
    a, b = to_common_size(p, q, "pool")
    assert torch.allclose(a, F.adaptive_avg_pool2d(p[:, None], (3, 2))[:, 0]) and torch.equal(b, q)


def test_to_common_size_upsamples_the_smaller_map_bilinearly():
    small = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    large = torch.randn(1, 4, 4)
    a, b = to_common_size(small, large, "upsample")
    expected = F.interpolate(small[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(a, expected) and torch.equal(b, large)
    # by hand, align_corners=False: output pixel i reads source (i + 0.5) / 2 - 0.5, clamped at the edges
    assert a[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert a[0, :, 0].tolist() == pytest.approx([0.0, 0.5, 1.5, 2.0])
    b2, a2 = to_common_size(large, small, "upsample")  # the order of the arguments is kept
    assert torch.equal(b2, large) and torch.allclose(a2, expected)
    same = torch.randn(2, 4, 4)
    assert to_common_size(same, same.clone(), "pool")[0] is same


def test_box_scores_of_a_map_at_image_resolution():
    # at the image's own size the bilinear resize is the identity, so the scores are plain sums
    maps = torch.zeros(2, 8, 8)
    maps[0, 1, 6] = 3.0   # row 1, column 6: the peak
    maps[0, 6, 1] = 1.0
    maps[0, 2, 2] = -5.0  # negative mass does not count
    maps[1] = maps[0]
    boxes = torch.tensor([[5, 0, 8, 2],    # x (columns) 5..7, y (rows) 0..1: holds the peak
                          [0, 5, 6, 8]])   # columns 0..5, rows 5..7: holds the 1.0, not the peak (column 6 excluded)
    energy, pointing = box_scores(maps, boxes, (8, 8))
    assert energy.tolist() == pytest.approx([3 / 4, 1 / 4])
    assert pointing.tolist() == [1.0, 0.0]
    # the first box with x and y swapped (columns 0..1, rows 5..7) misses the peak and holds the 1.0
    energy, pointing = box_scores(maps[:1], torch.tensor([[0, 5, 2, 8]]), (8, 8))
    assert energy.item() == pytest.approx(1 / 4) and pointing.item() == 0.0


def test_box_scores_after_upsampling_equal_the_formula():
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 4)
    boxes = torch.tensor([[4, 4, 20, 20], [0, 8, 32, 16], [10, 0, 11, 32]])
    energy, pointing = box_scores(maps, boxes, (32, 32))
    up = F.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        positive = up[i].clamp_min(0)
        inside = positive[y0:y1, x0:x1].sum() / positive.sum()
        assert energy[i].item() == pytest.approx(inside.item(), rel=1e-5)
        row, col = divmod(int(up[i].argmax()), 32)
        assert pointing[i].item() == float(y0 <= row < y1 and x0 <= col < x1)
    # a 4x4 map whose one peak lands on image pixels 8..15
    peaked = torch.zeros(2, 4, 4)
    peaked[0, 1, 1] = 1.0
    peaked[1, 3, 3] = 1.0
    energy, pointing = box_scores(peaked, torch.tensor([[4, 4, 20, 20]] * 2), (32, 32))
    assert pointing.tolist() == [1.0, 0.0] and energy[0] > 0.9 and energy[1] < 0.1
