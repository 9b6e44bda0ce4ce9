"""timm: and torchvision: models behind the feature interface.

`create_adapter("timm:resnet50", 100, pretrained)` wraps the library's own model as `adapter.model`, so its
state dict is the library's with a "model." prefix (a plain one loads too). `forward` is the model's own
forward; `forward_features` gets stages, pre_pool and logits from one pass through the network.

A model is CAM-exact only where we know its head is global average pooling -> one Linear: for timm this is
checked numerically on the model itself, for torchvision it holds for the families laid out below, and
every other model sets `cam_unavailable` (it still serves logits-only distillers).
"""
from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

from kd.errors import KDError
from kd.models.features import FeatureModel, Features


def create_adapter(name: str, num_classes: int, pretrained: bool) -> FeatureModel:
    library, _, arch = name.partition(":")
    if library == "timm":
        return TimmAdapter(_build_timm(arch, num_classes, pretrained), arch)
    return TorchvisionAdapter(_build_torchvision(arch, num_classes, pretrained))


class _Adapter(FeatureModel):
    """Common part: `self.model` is the wrapped library model."""

    classifier_name: str | None = None

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_classifier(self) -> nn.Linear | None:
        # A Linear that does not sit behind GAP would give a wrong CAM, so a non-exact head exposes none.
        if self.cam_unavailable or self.classifier_name is None:
            return None
        return super().get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Accept the library's own checkpoint (no "model." prefix) as well as ours.
        if state_dict and not any(k.startswith("model.") for k in state_dict):
            state_dict = {"model." + k: v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ---------------------------------------------------------------- timm

def _build_timm(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise KDError(f"unknown timm model '{arch}'{hint}; list the valid names with timm.list_models()")
    return _load(lambda: timm.create_model(arch, pretrained=pretrained, num_classes=num_classes),
                 f"timm:{arch}", pretrained)


class TimmAdapter(_Adapter):
    def __init__(self, model: nn.Module, arch: str):
        super().__init__(model)
        if _timm_head_is_gap_linear(model):
            self.classifier_name = "model." + _module_path(model, model.get_classifier())
        else:
            self.cam_unavailable = (f"timm's {arch} head is not global average pooling -> one Linear layer "
                                    f"(checked numerically)")
        # One map per resolution: the deepest feature_info entry at each reduction. Stride-2 entries are
        # stem-level in every ImageNet network (resnet's act1, efficientnet's blocks.0), so they are skipped.
        deepest: dict[int, int] = {}
        for i, info in enumerate(getattr(model, "feature_info", None) or []):
            if info["reduction"] >= 4:
                deepest[info["reduction"]] = i
        self.stage_indices = [deepest[r] for r in sorted(deepest)]

    def forward_features(self, x: torch.Tensor) -> Features:
        if self.stage_indices and hasattr(self.model, "forward_intermediates"):
            # timm returns forward_features' output together with the intermediates, from one pass.
            final, stages = self.model.forward_intermediates(x, indices=self.stage_indices)
        else:
            final, stages = self.model.forward_features(x), []
        pre_pool = final if final.ndim == 4 else None  # token models (ViT) have no map to pool
        return Features(self.model.forward_head(final), list(stages), pre_pool, self.get_classifier())


@torch.no_grad()
def _timm_head_is_gap_linear(model: nn.Module) -> bool:
    """True iff forward_head(f) == classifier(f.mean((2, 3))) on a random pre-pool-shaped f, in eval mode."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        return False
    # A private generator, so building a model does not shift the global random stream.
    f = torch.randn(2, model.num_features, 3, 3, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        out = model.forward_head(f)
        return out.shape == (2, classifier.out_features) and torch.allclose(
            out, classifier(f.mean((2, 3))), rtol=1e-4, atol=1e-5)
    except Exception:  # the head does not even take an NCHW map (NHWC or token models)
        return False
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- torchvision

def _build_torchvision(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise KDError(f"unknown torchvision classification model '{arch}'{hint}; list the valid names with "
                      f"torchvision.models.list_models(module=torchvision.models)")
    # Without this, their training-mode forward returns a namedtuple with auxiliary logits, not logits.
    extra = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    model = _load(lambda: torchvision.models.get_model(arch, weights="DEFAULT", **extra),
                  f"torchvision:{arch}", True)
    # torchvision refuses num_classes != the weights' classes, so, like timm, replace the final Linear.
    path, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if last.out_features != num_classes:
        model.set_submodule(path, nn.Linear(last.in_features, num_classes))
    return model


def _torchvision_layout(m: nn.Module):
    """(stem, blocks, tail, head, classifier): submodule paths of a family whose head is GAP -> Linear.

    The stem runs first; each block's output is a candidate stage (the deepest one at each resolution is
    kept); the tail turns the last block's output into pre_pool ("F.relu" is the function); head is what
    the model's own forward applies to the pooled vector (Dropout included), classifier its final Linear.
    None for any other family.
    """
    import torchvision.models as tv

    children = lambda path: [f"{path}.{n}" for n, _ in m.get_submodule(path).named_children()]  # noqa: E731
    if isinstance(m, tv.ResNet):  # resnet*, resnext*, wide_resnet*
        return (["conv1", "bn1", "relu", "maxpool"], ["layer1", "layer2", "layer3", "layer4"], [], "fc", "fc")
    # features[0:2] run at stride 2 (the stem); features[-1] is the 1x1 head conv.
    if isinstance(m, (tv.MobileNetV2, tv.EfficientNet)):
        f = children("features")
        return f[:2], f[2:-1], f[-1:], "classifier", "classifier.1"
    if isinstance(m, tv.DenseNet):  # its forward applies a ReLU after features
        f = children("features")
        return f[:4], f[4:], ["F.relu"], "classifier", "classifier"
    if isinstance(m, tv.ShuffleNetV2):
        return ["conv1", "maxpool"], ["stage2", "stage3", "stage4"], ["conv5"], "fc", "fc"
    if isinstance(m, tv.RegNet):
        return ["stem"], children("trunk_output"), [], "fc", "fc"
    return None


class TorchvisionAdapter(_Adapter):
    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.layout = _torchvision_layout(model)
        if self.layout is None:
            self.cam_unavailable = (f"torchvision's {type(model).__name__} head is not known to be "
                                    f"global average pooling -> one Linear layer")
        else:
            self.classifier_name = "model." + self.layout[4]

    def _run(self, paths: list[str], x: torch.Tensor) -> torch.Tensor:
        for path in paths:
            x = F.relu(x) if path == "F.relu" else self.model.get_submodule(path)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> Features:
        if self.layout is None:  # logits only: no stage or pre-pool map is known for this family
            return Features(self.model(x), [], None, None)
        stem, blocks, tail, head, _ = self.layout
        x = self._run(stem, x)
        stages: list[torch.Tensor] = []
        for path in blocks:
            x = self._run([path], x)
            if stages and stages[-1].shape[-2:] == x.shape[-2:]:
                stages[-1] = x  # same resolution: keep only the deepest
            else:
                stages.append(x)
        pre_pool = self._run(tail, x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(pre_pool, 1), 1)
        return Features(self.model.get_submodule(head)(pooled), stages, pre_pool, self.get_classifier())


# ---------------------------------------------------------------- shared

def _module_path(model: nn.Module, target: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is target)


def _load(build, name: str, pretrained: bool) -> nn.Module:
    """Build; with pretrained weights, a failed download (no internet, no cache) becomes one KDError line."""
    if not pretrained:
        return build()
    try:
        return build()
    except Exception as e:  # urllib, huggingface_hub and httpx each raise their own types
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise KDError(
            f"could not download or load the pretrained weights of {name} ({type(e).__name__}: {detail}); "
            f"set pretrained: false, or put the weights in the torch hub cache ($TORCH_HOME/hub/checkpoints) "
            f"or the Hugging Face cache ($HF_HOME) first"
        ) from e
