"""The CIFAR-100 benchmark zoo: exact architectures (so published checkpoints load) and the feature interface.

The architecture facts come from ../shared/fixtures/cifar100_benchmark_models.json (recorded from the
benchmark's reference code); tests that need it skip where that file is absent, and fail under CI.
"""
from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kd.models import MODELS, create_model

from conftest import shared_file

ZOO = MODELS.names()


@lru_cache(maxsize=1)
def _fixture() -> dict:
    return json.loads(shared_file("fixtures", "cifar100_benchmark_models.json").read_text())


def fixture_for(name: str) -> dict:
    data = _fixture()
    assert name in data, f"zoo model '{name}' is not in the benchmark fixture"
    return data[name]


def test_zoo_names_are_the_benchmark_names():
    assert sorted(_fixture()) == sorted(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_params_keys_and_shapes_match_benchmark(name):
    ref = fixture_for(name)
    model = create_model(name, 100)
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    state = model.state_dict()
    assert set(state) == set(ref["state_dict"])
    wrong = {k: (list(v.shape), ref["state_dict"][k]) for k, v in state.items() if list(v.shape) != ref["state_dict"][k]}
    assert not wrong


@pytest.mark.parametrize("name", ZOO)
def test_published_checkpoint_layout_loads_strictly(name):
    ref = fixture_for(name)
    checkpoint = {
        "model": {
            key: torch.zeros((), dtype=torch.long) if key.endswith("num_batches_tracked") else torch.randn(shape)
            for key, shape in ref["state_dict"].items()
        }
    }
    model = create_model(name, 100)
    result = model.load_state_dict(checkpoint["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = next(k for k in ref["state_dict"] if k.endswith("weight"))
    assert torch.equal(model.state_dict()[key], checkpoint["model"][key])


@pytest.mark.parametrize("name", ZOO)
def test_other_input_size_and_class_count(name):
    model = create_model(name, 10).eval()
    assert model.get_classifier().out_features == 10
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


# --- kd's assembly of each architecture against a forward written here from the leaf modules ----------------
# Each reference calls only convs, BNs, linears (their own forwards) and torch functions, wiring them as the
# architecture is defined; what it checks is kd's body/head: block wiring, stage taps, pre_pool and the head.

def shuffle(x, groups):
    """Channel shuffle: channel g * (C / groups) + i moves to i * groups + g."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def ref_resnet(m, x):  # basic blocks, post-activation, projection shortcut where the shape changes
    x = F.relu(m.bn1(m.conv1(x)))
    stages = []
    for layer in (m.layer1, m.layer2, m.layer3):
        for b in layer:
            out = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))
            x = F.relu(out + (x if b.downsample is None else b.downsample[1](b.downsample[0](x))))
        stages.append(x)
    return stages, x, m.fc


def ref_bottleneck(m, x):  # 1x1 -> 3x3 -> 1x1 x4, post-activation; ResNet50's 4 groups
    x = F.relu(m.bn1(m.conv1(x)))
    stages = []
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for b in layer:
            out = F.relu(b.bn1(b.conv1(x)))
            out = F.relu(b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
            x = F.relu(out + (b.shortcut[1](b.shortcut[0](x)) if len(b.shortcut) else x))
        stages.append(x)
    return stages, x, m.linear


def ref_wrn(m, x):  # pre-activation blocks; a projection reads the pre-activated input; final BN + ReLU
    x = m.conv1(x)
    stages = []
    for group in (m.block1, m.block2, m.block3):
        for b in group.layer:
            pre = F.relu(b.bn1(x))
            out = b.conv2(F.relu(b.bn2(b.conv1(pre))))
            x = out + (x if b.convShortcut is None else b.convShortcut(pre))
        stages.append(x)
    return stages, F.relu(m.bn1(x)), m.fc


def ref_vgg(m, x):  # conv-BN-ReLU throughout; max-pool before blocks 1-3; block4 at the same size as block3
    def run(block, x):
        convs = [c for c in block if isinstance(c, nn.Conv2d)]
        bns = [b for b in block if isinstance(b, nn.BatchNorm2d)]
        assert len(convs) == len(bns) > 0
        for conv, bn in zip(convs, bns):
            x = F.relu(bn(conv(x)))
        return x

    x = run(m.block0, x)
    stages = []
    for i, block in enumerate((m.block1, m.block2, m.block3, m.block4)):
        x = run(block, F.max_pool2d(x, 2) if i < 3 else x)
        stages.append(x)
    return stages, x, m.classifier


def ref_mobilenetv2(m, x):  # inverted residuals, linear projection; stages read after blocks 1, 2, 4, 6
    x = F.relu(m.conv1[1](m.conv1[0](x)))
    stages = []
    for i, stage in enumerate(m.blocks):
        for b in stage:
            c = b.conv
            out = F.relu(c[1](c[0](x)))   # 1x1 expand
            out = F.relu(c[4](c[3](out)))  # 3x3 depthwise
            out = c[7](c[6](out))          # 1x1 projection, no ReLU
            x = x + out if c[3].stride == (1, 1) and out.shape == x.shape else out
        if i in (1, 2, 4, 6):
            stages.append(x)
    return stages, F.relu(m.conv2[1](m.conv2[0](x))), m.classifier[0]


def ref_shufflev1(m, x):
    x = F.relu(m.bn1(m.conv1(x)))
    stages = []
    for layer in (m.layer1, m.layer2, m.layer3):
        for u in layer:
            out = shuffle(F.relu(u.bn1(u.conv1(x))), u.conv1.groups)
            out = F.relu(u.bn2(u.conv2(out)))
            out = u.bn3(u.conv3(out))
            if u.conv2.stride == (2, 2):  # down-sampling unit: concatenate the 3x3 average-pooled input
                x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
            else:
                x = F.relu(out + x)
        stages.append(x)
    return stages, x, m.linear


def ref_shufflev2(m, x):
    x = F.relu(m.bn1(m.conv1(x)))
    stages = []
    for layer in (m.layer1, m.layer2, m.layer3):
        for u in layer:
            if hasattr(u, "conv4"):  # down-sampling unit: two stride-2 branches
                left = F.relu(u.bn2(u.conv2(u.bn1(u.conv1(x)))))
                right = F.relu(u.bn3(u.conv3(x)))
                right = F.relu(u.bn5(u.conv5(u.bn4(u.conv4(right)))))
            else:  # basic unit: the first half passes through, the second is transformed
                half = x.shape[1] // 2
                left, right = x[:, :half], x[:, half:]
                right = F.relu(u.bn3(u.conv3(u.bn2(u.conv2(F.relu(u.bn1(u.conv1(right))))))))
            x = shuffle(torch.cat([left, right], 1), 2)
        stages.append(x)
    return stages, F.relu(m.bn2(m.conv2(x))), m.linear


def reference_forward(name):
    if name == "ResNet50":
        return ref_bottleneck
    for prefix, ref in (("resnet", ref_resnet), ("wrn_", ref_wrn), ("vgg", ref_vgg), ("MobileNetV2", ref_mobilenetv2),
                        ("ShuffleV1", ref_shufflev1), ("ShuffleV2", ref_shufflev2)):
        if name.startswith(prefix):
            return ref
    raise AssertionError(f"zoo model '{name}' has no reference forward in this test: write one")


def randomise_batch_norms(model, generator):
    """Running statistics and affine parameters away from the identity, so that a skipped or misplaced BN shows."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=generator) * 0.6 + 0.7)
            bn.weight.copy_(torch.rand(c, generator=generator) * 0.6 + 0.7)
            bn.bias.copy_(torch.randn(c, generator=generator) * 0.2)


def assert_close_scaled(actual, expected, what):
    scale = expected.abs().max().clamp_min(1e-6)
    assert actual.shape == expected.shape, what
    assert ((actual - expected).abs().max() / scale).item() < 1e-5, what


@pytest.mark.parametrize("name", ZOO)
def test_feature_interface_equals_an_independent_forward_from_the_leaf_modules(name):
    """logits (model(x) and forward_features(x).logits), pre_pool and every stage against the reference
    forward above; its logits are classifier(GAP(pre_pool)), so the CAM identity is checked too."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(name, 100).eval()
    randomise_batch_norms(model, generator)
    with torch.no_grad():
        model.get_classifier().bias.copy_(torch.randn(100, generator=generator))
    x = torch.randn(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        stages, pre_pool, classifier = reference_forward(name)(model, x)
        logits = classifier(pre_pool.mean((2, 3)))
        feats = model.forward_features(x)
        plain = model(x)
    assert isinstance(classifier, nn.Linear) and classifier.in_features == pre_pool.shape[1]
    assert feats.classifier is classifier and model.get_classifier() is classifier
    assert len(feats.stages) == len(stages)
    for i, (ours, ref) in enumerate(zip(feats.stages, stages)):
        assert_close_scaled(ours, ref, f"stage {i}")
    assert_close_scaled(feats.pre_pool, pre_pool, "pre_pool")
    assert logits.shape == (2, 100) and logits.std() > 1e-3  # not a constant output that would match anything
    assert_close_scaled(feats.logits, logits, "forward_features(x).logits")
    assert_close_scaled(plain, logits, "model(x)")
    expected = [tuple(s) for s in fixture_for(name)["is_feat_shapes_32x32"][1:-1]]
    assert [tuple(s.shape[1:]) for s in feats.stages] == expected


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_the_head_computes_fp32_logits_under_bf16_autocast(name):
    """Logits feed softmaxes at a temperature: under autocast the head (pool + Linear) stays in fp32 while
    the body runs in bf16, and the logits equal the fp32 head applied to the bf16 pre-pool map."""
    model = create_model(name, 100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(x)
        logits = model(x)
    assert out.pre_pool.dtype == torch.bfloat16
    assert out.logits.dtype == logits.dtype == torch.float32
    fc = model.get_classifier()
    expected = fc(out.pre_pool.float().mean((2, 3)))
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
