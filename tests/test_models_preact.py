"""Pre-ReLU stage maps (Features.preact_stages) and the BatchNorms before each stage's last ReLU
(model.bn_before_relu()), which OFD reads: right values, no in-place overwrite, and the teacher pass keeps them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd.engine.device import Hardware
from kd.engine.trainer import teacher_pass
from kd.models import MODELS, Features, create_model

RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
           "resnet32x4", "ResNet50"]
VGGS = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]
WRNS = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
RELU_ENDED = RESNETS + VGGS + ["ShuffleV1"]  # stage output == relu(pre-ReLU map)
WITH_MARGINS = RESNETS + VGGS + WRNS


def randomised(name: str, classes: int = 10) -> nn.Module:
    """A model whose BNs have random affine parameters and running statistics, so that the maps before the
    ReLUs are negative in many places (freshly built nets have identity BNs)."""
    torch.manual_seed(0)
    model = create_model(name, classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_every_zoo_model_is_classified_here():
    assert sorted(RELU_ENDED + WRNS + ["MobileNetV2", "ShuffleV2"]) == sorted(MODELS.names())


@pytest.mark.parametrize("name, train", [(n, False) for n in RELU_ENDED] +
                         [(n, True) for n in ("resnet8", "ResNet50", "vgg8", "ShuffleV1")])
def test_relu_of_the_preact_map_is_the_stage_output(name, train):
    model = randomised(name).train(train)
    with torch.set_grad_enabled(train):
        out = model.forward_features(torch.randn(2, 3, 16, 16))  # 16 px: the layout is the same, 4x less work
    assert out.preact_stages is not None and len(out.preact_stages) == len(out.stages)
    for pre, stage in zip(out.preact_stages, out.stages):
        assert pre.shape == stage.shape
        # An in-place ReLU would have overwritten the map: it would have no negative value left.
        assert (pre < 0).any()
        assert torch.equal(torch.relu(pre), stage)


@pytest.mark.parametrize("name", WRNS)
def test_wrn_preact_map_is_the_bn_that_the_next_relu_reads(name):
    model = randomised(name).eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, 32, 32))
        expected = [model.block2.layer[0].bn1(out.stages[0]), model.block3.layer[0].bn1(out.stages[1]),
                    model.bn1(out.stages[2])]
    assert len(out.preact_stages) == 3
    for pre, want in zip(out.preact_stages, expected):
        torch.testing.assert_close(pre, want, rtol=0, atol=0)
        assert (pre < 0).any()
    torch.testing.assert_close(torch.relu(out.preact_stages[-1]), out.pre_pool, rtol=0, atol=0)


def test_mobilenetv2_stage_maps_are_their_own_preact_maps_and_have_no_margins():
    model = randomised("MobileNetV2").eval()
    out = model.forward_features(torch.randn(2, 3, 32, 32))
    assert all(p is s for p, s in zip(out.preact_stages, out.stages)) and len(out.preact_stages) == 4
    assert model.bn_before_relu() is None


@pytest.mark.parametrize("name", ["ShuffleV2", "ShuffleV1"])
def test_models_without_margins(name):
    model = create_model(name, 10).eval()
    assert model.bn_before_relu() is None
    if name == "ShuffleV2":
        assert model.forward_features(torch.randn(2, 3, 32, 32)).preact_stages is None


def _capture_outputs(modules):
    seen = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out)) for i, m in enumerate(modules)]
    return seen, handles


@pytest.mark.parametrize("name", WITH_MARGINS)
def test_bn_before_relu_is_the_bn_feeding_each_stage_relu(name):
    model = randomised(name).eval()
    bns = model.bn_before_relu()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    seen, handles = _capture_outputs(bns)
    inputs = {}
    if name in RESNETS:  # the last block's input, to rebuild its shortcut
        layers = [model.layer1, model.layer2, model.layer3] + ([model.layer4] if name == "ResNet50" else [])
        handles += [layer[-1].conv1.register_forward_pre_hook(lambda mod, inp, i=i: inputs.__setitem__(i, inp[0]))
                    for i, layer in enumerate(layers)]
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, 16, 16))
    for h in handles:
        h.remove()
    assert len(bns) == len(out.preact_stages)
    for i, pre in enumerate(out.preact_stages):
        assert bns[i].num_features == pre.shape[1]
        if name in RESNETS:
            block = layers[i][-1]
            projection = block.downsample if name != "ResNet50" else (block.shortcut if len(block.shortcut) else None)
            shortcut = inputs[i] if projection is None else projection(inputs[i])
            torch.testing.assert_close(pre, seen[i] + shortcut)
        else:  # VGG, WRN: the BN output itself
            torch.testing.assert_close(pre, seen[i], rtol=0, atol=0)


def test_features_stay_backwards_compatible():
    f = Features(torch.zeros(1, 2), [], None, None)
    assert f.preact_stages is None


@pytest.mark.parametrize("name, shared", [("resnet8", False), ("MobileNetV2", True)])
def test_teacher_pass_clones_the_preact_maps(name, shared):
    model = randomised(name).eval()
    images = torch.randn(2, 3, 32, 32)
    out = teacher_pass(model, images, Hardware(torch.device("cpu"), None, False, False))
    with torch.no_grad():
        ref = model.forward_features(images)
    assert len(out.preact_stages) == len(ref.preact_stages)
    for p, r in zip(out.preact_stages, ref.preact_stages):
        assert not p.is_inference()  # usable in the student's autograd graph
        assert torch.equal(p, r)
    # a pre-ReLU map that is a stage map is copied once
    assert all((p is s) == shared for p, s in zip(out.preact_stages, out.stages))
    model_without = create_model("ShuffleV2", 10).eval()
    assert teacher_pass(model_without, images, Hardware(torch.device("cpu"), None, False, False)).preact_stages is None
