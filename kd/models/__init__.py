"""Model zoo: the CIFAR benchmark architectures plus timm:/torchvision: adapters.

`create_model(name, num_classes)` is the only way models are built. Zoo entries are registered with
`@MODELS.register()` (kd.models.registry) on a factory `f(num_classes: int) -> FeatureModel`; names with a
`timm:` or `torchvision:` prefix go to the adapters.
"""
from __future__ import annotations

from kd.models.features import FeatureModel, Features, require_cam
from kd.models.registry import MODELS
from kd.models import mobilenetv2, resnet, resnet_bottleneck, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401  (registration)

ADAPTER_PREFIXES = ("timm:", "torchvision:")


def create_model(name: str, num_classes: int, pretrained: bool = False) -> FeatureModel:
    """Build a model by name; the result always speaks the feature interface."""
    if name.startswith(ADAPTER_PREFIXES):
        from kd.models.adapters import create_adapter

        model = create_adapter(name, num_classes, pretrained)
    else:
        model = MODELS.get(name)(num_classes=num_classes)
    model.arch_name = name
    return model


def model_names() -> list[str]:
    return MODELS.names() + [p + "<name>" for p in ADAPTER_PREFIXES]


__all__ = ["MODELS", "FeatureModel", "Features", "create_model", "model_names", "require_cam"]
