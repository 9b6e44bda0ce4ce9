"""ResNet50, CIFAR variant: the ImageNet bottleneck stack (3-4-6-3) behind a 3x3 stride-1 stem.

There is no 7x7 stride-2 stem and no max-pool, so a 32x32 input keeps full resolution in layer1
and ends at 4x4 in layer4. Keys follow the benchmark (conv1/bn1, layerN.i.convK/bnK, `shortcut`
for projections, `linear` for the classifier) so its published checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.init import benchmark_init


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand x4, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        # An empty Sequential is the identity and adds no keys; a projection is used only where
        # the shape changes (the first block of every group, layer1 included: 64 -> 256).
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """bn3(...) + shortcut: the block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preact(x))


class BottleneckResNet(FeatureModel):
    classifier_name = "linear"

    def __init__(self, blocks_per_group: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        groups = []
        for planes, n, stride in zip((64, 128, 256, 512), blocks_per_group, (1, 2, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                cin = planes * Bottleneck.expansion
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = groups
        self.linear = nn.Linear(cin, num_classes)
        # The benchmark's initialisation: He normal (fan_out) convs, identity BN, default Linear.
        benchmark_init(self)

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = [], []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            *blocks, last = layer
            for block in blocks:
                x = block(x)
            pre = last.preact(x)  # kept as the stage's pre-ReLU map (OFD); the ReLU is out of place
            x = F.relu(pre)
            stages.append(x)
            preacts.append(pre)
        return stages, x, preacts

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]


@MODELS.register("ResNet50")
def ResNet50(num_classes: int = 100) -> FeatureModel:  # noqa: N802 - the benchmark's spelling
    return BottleneckResNet((3, 4, 6, 3), num_classes)
