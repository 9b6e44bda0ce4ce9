"""CIFAR ResNets with basic blocks: resnet8 ... resnet110 and the 4x-wide resnet8x4 / resnet32x4.

The layout is the 6n+2 CIFAR design (3x3 stem at full resolution, three groups of n blocks at
32x32, 16x16 and 8x8 for a 32x32 input). Attribute names (conv1, bn1, layer1..3, downsample, fc)
are the benchmark's own, so published CIFAR-100 teacher checkpoints load with strict=True.
"""
from __future__ import annotations

import torch
from torch import nn

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.init import benchmark_init


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (post-activation)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        # Projection shortcut only where the shape changes (stride or width); "downsample" is the
        # checkpoint key. The x4 nets need one even in layer1 (stem 32 -> 64 channels).
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """bn2(...) + shortcut: the block's output before its final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.preact(x))  # in place: nothing else holds the sum


class CifarResNet(FeatureModel):
    classifier_name = "fc"

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"basic-block CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        groups = []
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = groups
        self.fc = nn.Linear(widths[3], num_classes)
        # The benchmark's initialisation (He normal, fan_out; BN as identity), kept so that
        # training from scratch reproduces its teachers; Linear keeps PyTorch's default.
        benchmark_init(self)

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = self.relu(self.bn1(self.conv1(x)))
        stages, preacts = [], []
        for layer in (self.layer1, self.layer2, self.layer3):
            *blocks, last = layer
            for block in blocks:
                x = block(x)
            # The group's last ReLU runs out of place, so the sum it reads survives as the pre-ReLU map
            # (OFD); the block's own in-place ReLU would overwrite it.
            pre = last.preact(x)
            x = torch.relu(pre)
            stages.append(x)  # post-ReLU group output, as the benchmark's feature list has it
            preacts.append(pre)
        return stages, x, preacts

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3)]


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" variants: 4x the channels of layer1..3, 2x the stem


@MODELS.register("resnet8")
def resnet8(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(8, _THIN, num_classes)


@MODELS.register("resnet14")
def resnet14(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(14, _THIN, num_classes)


@MODELS.register("resnet20")
def resnet20(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(20, _THIN, num_classes)


@MODELS.register("resnet32")
def resnet32(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(32, _THIN, num_classes)


@MODELS.register("resnet44")
def resnet44(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(44, _THIN, num_classes)


@MODELS.register("resnet56")
def resnet56(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(56, _THIN, num_classes)


@MODELS.register("resnet110")
def resnet110(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(110, _THIN, num_classes)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(8, _WIDE, num_classes)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes: int = 100) -> FeatureModel:
    return CifarResNet(32, _WIDE, num_classes)
