"""Wide ResNets WRN-d-k for CIFAR: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks (BN-ReLU-conv, twice) in three groups of (d-4)/6 blocks with 16k, 32k, 64k
channels, then one final BN+ReLU before pooling. Keys follow the benchmark (blockN.layer.i,
convShortcut, the final `bn1`, `fc`) so its published checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.init import benchmark_init


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.convShortcut = None  # noqa: N815 - checkpoint key
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_bn1(x, self.bn1(x))

    def after_bn1(self, x: torch.Tensor, bn1_x: torch.Tensor) -> torch.Tensor:
        """The block, given bn1(x): WideResNet.body computes bn1 itself where its output is a pre-ReLU map."""
        pre = F.relu(bn1_x)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # Where the width changes, the projection reads the *pre-activated* input (BN1+ReLU of x),
        # as in the reference WRN; an identity shortcut carries the raw x.
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return out + shortcut


class BlockGroup(nn.Module):
    """A group of blocks; the extra `.layer` level exists only to match the checkpoint keys."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureModel):
    classifier_name = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, w[0], 3, padding=1, bias=False)
        self.block1 = BlockGroup(n, w[0], w[1], 1)
        self.block2 = BlockGroup(n, w[1], w[2], 2)
        self.block3 = BlockGroup(n, w[2], w[3], 2)
        self.bn1 = nn.BatchNorm2d(w[3])  # pre-activation nets need one last BN+ReLU before the head
        self.fc = nn.Linear(w[3], num_classes)
        # The benchmark's initialisation: He normal (fan_out) convs, identity BN, zero Linear bias.
        benchmark_init(self, linear="zero_bias")

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = self.conv1(x)
        stages, preacts = [], []
        for group in (self.block1, self.block2, self.block3):
            first, *rest = group.layer
            bn1_x = first.bn1(x)
            if stages:
                # A stage ends without a ReLU; the first ReLU after it acts on the next group's first BN, so
                # that BN's output is the stage's pre-ReLU map (OFD), as in the reference WRN.
                preacts.append(bn1_x)
            x = first.after_bn1(x, bn1_x)
            for block in rest:
                x = block(x)
            stages.append(x)  # group output before any BN+ReLU, as the benchmark exposes it
        last = self.bn1(x)
        preacts.append(last)  # the last stage's: the final BN before the head's ReLU
        return stages, F.relu(last), preacts  # GAP consumes the activated map, not the last stage

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


@MODELS.register("wrn_16_1")
def wrn_16_1(num_classes: int = 100) -> FeatureModel:
    return WideResNet(16, 1, num_classes)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes: int = 100) -> FeatureModel:
    return WideResNet(16, 2, num_classes)


@MODELS.register("wrn_40_1")
def wrn_40_1(num_classes: int = 100) -> FeatureModel:
    return WideResNet(40, 1, num_classes)


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes: int = 100) -> FeatureModel:
    return WideResNet(40, 2, num_classes)
