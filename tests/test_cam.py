"""kd.cam: CAM and CAAM against a slow loop, the normalisations' ranges and invariances, resizing, scores."""
import pytest
import torch

from kd.cam import box_scores, caam, cam, l1_map_loss, normalise, to_common_size


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


def test_cam_mean_is_the_logit_without_bias():
    torch.manual_seed(0)
    f, linear = torch.randn(2, 8, 3, 3), torch.nn.Linear(8, 4)
    logits = linear(f.mean((2, 3)))
    maps = cam(f, linear.weight, torch.tensor([1, 3]))
    assert torch.allclose(maps.mean((1, 2)) + linear.bias[[1, 3]], logits[[0, 1], [1, 3]], atol=1e-5)


@pytest.mark.parametrize("kind", ["minmax", "l2", "softmax"])
def test_normalisations_range_constant_maps_and_identity(kind):
    torch.manual_seed(0)
    maps = torch.randn(4, 5, 5) * 3 + 1
    out = normalise(maps, kind)
    flat = out.flatten(1)
    if kind == "minmax":
        assert flat.min() >= 0 and flat.max() <= 1
        assert torch.allclose(flat.min(1).values, torch.zeros(4)) and torch.allclose(flat.max(1).values, torch.ones(4), atol=1e-5)
    elif kind == "l2":
        assert torch.allclose(flat.norm(dim=1), torch.ones(4), atol=1e-5)
    else:
        assert (flat > 0).all() and torch.allclose(flat.sum(1), torch.ones(4), atol=1e-5)
    constant = normalise(torch.full((2, 4, 4), 7.0), kind)
    assert torch.isfinite(constant).all()
    zeros = normalise(torch.zeros(2, 4, 4), kind)
    assert torch.isfinite(zeros).all()
    assert l1_map_loss(out, normalise(maps.clone(), kind)).item() == 0.0


def test_minmax_and_l2_are_scale_invariant_softmax_is_not():
    torch.manual_seed(0)
    maps = torch.randn(3, 6, 6)
    for kind in ("minmax", "l2"):
        assert torch.allclose(normalise(maps, kind), normalise(maps * 25.0, kind), atol=1e-5)
        assert torch.allclose(normalise(maps, kind), normalise(maps * 0.2, kind), atol=1e-4)
    assert torch.allclose(normalise(maps, "minmax"), normalise(maps + 5.0, "minmax"), atol=1e-5)  # shift too
    assert not torch.allclose(normalise(maps, "softmax"), normalise(maps * 25.0, "softmax"), atol=1e-3)


def test_to_common_size_pools_or_upsamples_either_argument():
    large, small = torch.arange(64.0).view(1, 8, 8), torch.ones(1, 4, 4)
    a, b = to_common_size(large, small, "pool")
    assert a.shape == b.shape == (1, 4, 4) and torch.equal(b, small)
    assert a[0, 0, 0].item() == pytest.approx((0 + 1 + 8 + 9) / 4)
    a, b = to_common_size(small, large, "upsample")
    assert a.shape == b.shape == (1, 8, 8) and torch.equal(b, large)
    same = torch.randn(2, 4, 4)
    assert to_common_size(same, same, "pool")[0] is same


def test_box_scores():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0  # peak at pixels 8..15 of a 32x32 image: inside the box
    maps[1, 3, 3] = 1.0  # peak far outside
    boxes = torch.tensor([[4, 4, 20, 20], [4, 4, 20, 20]])
    energy, pointing = box_scores(maps, boxes, (32, 32))
    assert pointing.tolist() == [1.0, 0.0]
    assert energy[0] > 0.9 and energy[1] < 0.1
