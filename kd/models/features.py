"""The one feature interface: every model, ours or timm's or torchvision's, is reached through it.

`model.forward_features(x)` returns a `Features` record:
- logits      (B, classes)
- stages      stage outputs, shallow to deep (what FitNets and AT read)
- pre_pool    (B, K, H, W), the exact tensor global average pooling consumes (what CAM reads),
              or None when the model has no such tensor
- preact_stages  optional: each stage's map BEFORE the ReLU that ends it (what OFD reads), one per
              stage, or None when the model cannot give them (the default; adapters never do)
and `model.get_classifier()` is the final nn.Linear, so that for every model with a GAP -> Linear head
    classifier(pre_pool.mean((2, 3))) == logits.
A model whose head is anything else sets `cam_unavailable` to a sentence saying why, and CAM-based
distillers refuse it with that sentence. `forward(x)` returns logits only, so the models stay ordinary
classifiers (checkpoints, torch.compile, evaluation).

Pre-ReLU maps: a model that can give them returns them as a third item of `body` (tensors that exist in
the forward pass anyway: nothing extra is computed for them), and `model.bn_before_relu()` lists, per
stage, the BatchNorm whose output (plus the shortcut, in residual nets) that ReLU acts on; OFD derives the
teacher's margins from those BNs. Which models give what is documented in kd/distillers/ofd.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd.errors import KDError


@dataclass
class Features:
    logits: torch.Tensor
    stages: list[torch.Tensor]
    pre_pool: torch.Tensor | None
    classifier: nn.Linear | None
    preact_stages: list[torch.Tensor] | None = None  # stage maps before their last ReLU (see above)


class FeatureModel(nn.Module):
    """Base of every model in the toolkit.

    Subclasses implement `body(x) -> (stages, pre_pool)`, or `(stages, pre_pool, preact_stages)` where
    they can give pre-ReLU maps, and set `self.classifier_name`, the attribute path of the final Linear
    (kept at the benchmark's own name so that published checkpoints load unchanged). The head is always
    GAP -> flatten -> Linear unless a subclass overrides `head`.
    """

    classifier_name = "fc"
    cam_unavailable: str | None = None

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def bn_before_relu(self) -> list[nn.BatchNorm2d] | None:
        """Per stage, the BatchNorm feeding the ReLU that ends it (aligned with `preact_stages`); None when the
        model has no such BN for every stage."""
        return None

    def get_classifier(self) -> nn.Linear | None:
        module: nn.Module = self
        for part in self.classifier_name.split("."):
            module = getattr(module, part)
        return module if isinstance(module, nn.Linear) else None

    def head(self, pre_pool: torch.Tensor) -> torch.Tensor:
        # The head runs in fp32 even under bf16/fp16 autocast. Logits feed softmaxes at a temperature (KD,
        # DKD, DIST, CCM's teacher class) and cross-entropy; bf16 keeps 8 bits of mantissa, so a logit of 10
        # would be rounded by up to 0.03, an error that a soft target passes on to every sample. Pooling and
        # one Linear layer are a negligible share of the step, so fp32 here costs nothing measurable.
        with torch.autocast(pre_pool.device.type, enabled=False):
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(pre_pool.float(), 1), 1)
            return self.get_classifier()(pooled)

    def forward_features(self, x: torch.Tensor) -> Features:
        stages, pre_pool, *preact = self.body(x)
        return Features(self.head(pre_pool), stages, pre_pool, self.get_classifier(), preact[0] if preact else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)[1])


def require_cam(model: nn.Module, role: str, method: str) -> None:
    """Refuse, by name, a model whose head is not GAP -> Linear (its CAM would not be exact)."""
    reason = getattr(model, "cam_unavailable", None)
    if reason is None and model.get_classifier() is None:
        reason = "it exposes no final nn.Linear classifier"
    if reason:
        name = getattr(model, "arch_name", type(model).__name__)
        raise KDError(
            f"{method} needs an exact class activation map, but the {role} '{name}' cannot give one: "
            f"{reason}; choose a model whose head is global average pooling -> one Linear layer"
        )
