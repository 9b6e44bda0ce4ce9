"""timm: and torchvision: adapters speak the feature interface, and CAM exactness is checked, not assumed."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from kd.errors import KDError
from kd.models import create_model, require_cam

NUM_CLASSES = 7
EXACT = [
    ("timm:resnet18", 64),
    ("timm:efficientnet_b0", 64),
    ("torchvision:resnet18", 64),
    ("torchvision:mobilenet_v2", 64),
    ("torchvision:shufflenet_v2_x0_5", 64),
    ("torchvision:densenet121", 32),
]
NOT_EXACT = [
    ("timm:mobilenetv3_small_100", 64),
    ("timm:convnext_atto", 64),
    ("torchvision:mobilenet_v3_small", 64),
]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = create_model(name, NUM_CLASSES).eval()
        return cache[name]

    return get


@pytest.mark.parametrize("name,size", EXACT)
def test_exact_models_give_exact_cam(models, name, size):
    model = models(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    classifier = model.get_classifier()
    assert model.cam_unavailable is None
    assert isinstance(classifier, torch.nn.Linear) and feats.classifier is classifier
    assert feats.logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(feats.logits, logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(classifier(feats.pre_pool.mean((2, 3))), logits, atol=1e-4, rtol=0)
    assert feats.pre_pool.shape[1] == classifier.in_features
    assert len(feats.stages) >= 3
    sizes = [s.shape[-1] for s in feats.stages]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes  # one map per resolution, shallow to deep
    assert sizes[-1] == feats.pre_pool.shape[-1]
    require_cam(model, "student", "ccm")


@pytest.mark.parametrize("name,size", NOT_EXACT)
def test_other_heads_refuse_cam_but_give_logits(models, name, size):
    model = models(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert isinstance(model.cam_unavailable, str) and model.cam_unavailable
    assert model.get_classifier() is None
    assert logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(feats.logits, logits, atol=1e-4, rtol=0)
    with pytest.raises(KDError, match=name):
        require_cam(model, "student", "ccm")


def test_timm_probe_keeps_training_mode_and_global_rng():
    torch.manual_seed(1)
    model = create_model("timm:convnext_atto", NUM_CLASSES)
    after_build = torch.rand(1)
    assert model.training and all(m.training for m in model.modules())
    torch.manual_seed(1)
    import timm

    timm.create_model("convnext_atto", pretrained=False, num_classes=NUM_CLASSES)
    assert torch.equal(torch.rand(1), after_build)  # the probe drew from its own generator


def test_training_forward_features_uses_the_models_own_head():
    model = create_model("torchvision:mobilenet_v2", NUM_CLASSES).train()  # classifier = Dropout -> Linear
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)
    a = model.forward_features(x).logits
    torch.manual_seed(3)
    torch.testing.assert_close(a, model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "name,suggestion,how",
    [
        ("timm:resnet1888", "resnet18", "timm.list_models"),
        ("torchvision:resnet1888", "resnet18", "torchvision.models.list_models"),
    ],
)
def test_unknown_names_suggest(name, suggestion, how):
    with pytest.raises(KDError) as err:
        create_model(name, NUM_CLASSES)
    message = str(err.value)
    assert "unknown" in message and suggestion in message and how in message and "\n" not in message


def test_plain_state_dict_of_wrapped_model_loads(models):
    source = models("torchvision:resnet18")
    target = create_model("torchvision:resnet18", NUM_CLASSES).eval()
    target.load_state_dict(source.model.state_dict())  # no "model." prefix
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    target.load_state_dict(source.state_dict())  # our own prefixed keys still load


def test_failed_download_is_one_kd_error_line(monkeypatch):
    import timm
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    monkeypatch.setattr(timm, "create_model", offline)
    for name in ("torchvision:resnet18", "timm:resnet18"):
        with pytest.raises(KDError) as err:
            create_model(name, NUM_CLASSES, pretrained=True)
        message = str(err.value)
        assert "pretrained" in message and "pretrained: false" in message and "\n" not in message


def test_pretrained_torchvision_head_is_resized(monkeypatch):
    import torchvision

    real = torchvision.models.get_model

    def fake_download(name, weights=None, **kwargs):  # what the weights give: the 1000-class model
        assert weights == "DEFAULT"
        return real(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", fake_download)
    model = create_model("torchvision:mobilenet_v2", NUM_CLASSES, pretrained=True)
    assert model.get_classifier().out_features == NUM_CLASSES
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
