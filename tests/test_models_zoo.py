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
def test_feature_interface(name):
    torch.manual_seed(0)
    model = create_model(name, 100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert feats.classifier is classifier
    assert feats.logits.shape == (2, 100)
    torch.testing.assert_close(feats.logits, logits)
    # CAM exactness: GAP of pre_pool through the classifier is the logits.
    with torch.no_grad():
        torch.testing.assert_close(classifier(feats.pre_pool.mean((2, 3))), logits, atol=1e-5, rtol=0)
    assert feats.pre_pool.shape[1] == classifier.in_features
    if _fixture() is not None:
        expected = [tuple(s) for s in fixture_for(name)["is_feat_shapes_32x32"][1:-1]]
        assert [tuple(s.shape[1:]) for s in feats.stages] == expected


@pytest.mark.parametrize("name", ZOO)
def test_other_input_size_and_class_count(name):
    model = create_model(name, 10).eval()
    assert model.get_classifier().out_features == 10
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
