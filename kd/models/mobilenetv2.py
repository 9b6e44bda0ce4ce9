"""MobileNetV2 at width 0.5 with expansion 6, the CIFAR benchmark's "mobile_half" student.

Inverted residual blocks (1x1 expand -> 3x3 depthwise -> 1x1 linear projection) after a stride-2
3x3 stem; compared with ImageNet MobileNetV2 the second stage keeps stride 1, so a 32x32 input
ends at 2x2. Plain ReLU (not ReLU6) throughout, and the 1280-channel last conv is not scaled by
the width. Keys follow the benchmark (conv1.N, blocks.S.B.conv.N, conv2.N, classifier.0) so its
published checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.init import benchmark_init

# (expansion, channels at width 1, blocks, stride of the first block); expansion None -> T.
_STAGES = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
# The benchmark's feature list reads after these stage indices (its f1..f4).
_TAPS = (1, 2, 4, 6)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        # One flat Sequential (indices 0..7) because the checkpoint keys are conv.0, conv.1, conv.3, ...
        # The expansion conv is kept even when expansion == 1, as the benchmark does.
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, cout, 1, relu=False),  # linear bottleneck: no ReLU on the projection
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(FeatureModel):
    classifier_name = "classifier.0"

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(*_conv_bn(3, cin, 3, stride=2))
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            cout = int(c * width)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion))
                cin = cout
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width) if width > 1.0 else 1280  # never narrower than 1280
        self.conv2 = nn.Sequential(*_conv_bn(cin, last, 1))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        # The benchmark's initialisation: He normal (fan_out) convs, identity BN, Linear N(0, 0.01).
        benchmark_init(self, linear="normal")

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = self.conv1(x)
        stages = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _TAPS:
                stages.append(x)
        # Linear bottlenecks: no ReLU ends a stage, so each stage map is its own pre-ReLU map (OFD's student
        # side). There is no ReLU, hence no margin: bn_before_relu() stays None and OFD refuses it as teacher.
        return stages, self.conv2(x), list(stages)  # GAP consumes the 1280-channel map, not the last stage


@MODELS.register("MobileNetV2")
def mobilenetv2(num_classes: int = 100) -> FeatureModel:
    return MobileNetV2(6, 0.5, num_classes)
