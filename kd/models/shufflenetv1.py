"""ShuffleNet V1 (g=3; 240-480-960 channels; 4-8-4 blocks), the CIFAR benchmark's "ShuffleV1".

CIFAR version: a 1x1 stem with no pooling, every stage starts with a stride-2 block, so a 32x32
input ends at 4x4. Blocks are grouped 1x1 -> channel shuffle -> 3x3 depthwise -> grouped 1x1; a
stride-2 block concatenates an average-pooled shortcut (hence its branch outputs out - in
channels), a stride-1 block adds it. As in the benchmark there is a ReLU after the depthwise conv
too, and the very first block's first 1x1 is ungrouped (24 stem channels). Keys follow the
benchmark (conv1, bn1, layerN.i.convK/bnK, linear) so its published checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd.models.registry import MODELS
from kd.models.features import FeatureModel


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups so the next grouped conv sees all of them."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool):
        super().__init__()
        self.stride = stride
        branch = cout - cin if stride == 2 else cout  # stride 2: the shortcut fills the rest
        mid = branch // 4
        self.g1 = 1 if first else groups  # too few stem channels to group the first 1x1
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output before its final ReLU."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        return out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preact(x))


class ShuffleNetV1(FeatureModel):
    classifier_name = "linear"

    def __init__(self, widths=(240, 480, 960), depths=(4, 8, 4), groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for stage, (cout, n) in enumerate(zip(widths, depths)):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups, first=stage == 0 and i == 0))
                cin = cout
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(cin, num_classes)
        # PyTorch's default initialisation, as the benchmark uses for this net.

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = [], []
        for layer in (self.layer1, self.layer2, self.layer3):
            *units, last = layer
            for unit in units:
                x = unit(x)
            pre = last.preact(x)  # kept as the stage's pre-ReLU map (OFD's student side)
            x = F.relu(pre)
            stages.append(x)
            preacts.append(pre)
        # No bn_before_relu() (so no OFD margins): the benchmark's OFD refuses ShuffleNets as teachers, and
        # kd follows it rather than guess which BN should stand for the sum of branch and shortcut.
        return stages, x, preacts


@MODELS.register("ShuffleV1")
def shufflev1(num_classes: int = 100) -> FeatureModel:
    return ShuffleNetV1(num_classes=num_classes)
