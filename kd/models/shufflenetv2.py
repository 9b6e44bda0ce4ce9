"""ShuffleNet V2 1.0x (116-232-464 channels, 1024 head; 4-8-4 units), the benchmark's "ShuffleV2".

CIFAR version: a 1x1 stem with no pooling, so a 32x32 input ends at 4x4. Each stage is one
down-sampling unit (two stride-2 branches, concatenated) followed by basic units that split the
channels in half, pass the first half through and transform the second, then concatenate and
shuffle. A last 1x1 conv+BN+ReLU to 1024 channels precedes pooling. Keys follow the benchmark
(conv1..conv5/bn1..bn5 inside units, conv2/bn2 head, linear) so its published checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.shufflenetv1 import channel_shuffle


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=cin if depthwise else 1, bias=False)


class BasicUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = _conv(c, c, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = _conv(c, c, 3, depthwise=True), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = _conv(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, x2 = x.chunk(2, dim=1)  # first half passes through unchanged
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))  # no ReLU after the depthwise conv
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class DownUnit(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        # left branch: depthwise stride 2 -> 1x1
        self.conv1, self.bn1 = _conv(cin, cin, 3, 2, depthwise=True), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = _conv(cin, mid, 1), nn.BatchNorm2d(mid)
        # right branch: 1x1 -> depthwise stride 2 -> 1x1
        self.conv3, self.bn3 = _conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = _conv(mid, mid, 3, 2, depthwise=True), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = _conv(mid, mid, 1), nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureModel):
    classifier_name = "linear"

    def __init__(self, widths=(116, 232, 464), head: int = 1024, depths=(3, 7, 3), num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for cout, n in zip(widths, depths):  # n basic units after the down unit
            layers.append(nn.Sequential(DownUnit(cin, cout), *[BasicUnit(cout) for _ in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(cin, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)
        # PyTorch's default initialisation, as the benchmark uses for this net.

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            stages.append(x)
        return stages, F.relu(self.bn2(self.conv2(x)))  # GAP consumes the 1024-channel map


@MODELS.register("ShuffleV2")
def shufflev2(num_classes: int = 100) -> FeatureModel:
    return ShuffleNetV2(num_classes=num_classes)
