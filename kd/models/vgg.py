"""VGG with BatchNorm for CIFAR, fully-connected layers removed: vgg8, vgg11, vgg13, vgg16, vgg19.

Five conv blocks (64, 128, 256, 512, 512 channels) separated by 2x2 max-pools after blocks 0-2;
block3 and block4 both run at 4x4 for a 32x32 input; then GAP and one Linear (`classifier`).
Each block is a Sequential [conv, BN, ReLU, conv, BN, ReLU, ..., conv, BN] whose final ReLU is
applied outside it; that drop keeps the benchmark's key indices (blockN.0, .1, .3, .4, ...), so
its published checkpoints load unchanged. Convs keep their bias, as in the benchmark.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd.models.registry import MODELS
from kd.models.features import FeatureModel
from kd.models.init import benchmark_init

# Conv widths per block; vgg8 is the benchmark's shallow "S" configuration.
_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(cin: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])  # last ReLU is applied in body(), see module docstring


class VGG(FeatureModel):
    classifier_name = "classifier"

    def __init__(self, config: list[list[int]], num_classes: int = 100):
        super().__init__()
        cins = [3] + [widths[-1] for widths in config[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(cin, widths) for cin, widths in zip(cins, config)
        )
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        # The benchmark's initialisation: He normal (fan_out) convs with zero bias, identity BN,
        # Linear N(0, 0.01) with zero bias.
        benchmark_init(self, linear="normal")

    def body(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.block0(x))
        stages, preacts = [], []
        for block, pool in ((self.block1, True), (self.block2, True), (self.block3, True), (self.block4, False)):
            # Max-pool before blocks 1-3 only. The benchmark also pools before block4, but only when
            # the input is exactly 64 px high; we keep one architecture for every input size.
            pre = block(F.max_pool2d(x, 2) if pool else x)  # ends in a BN: the pre-ReLU map (OFD)
            x = F.relu(pre)
            stages.append(x)
            preacts.append(pre)
        return stages, x, preacts  # block4's ReLU output is what GAP consumes

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]


@MODELS.register("vgg8")
def vgg8(num_classes: int = 100) -> FeatureModel:
    return VGG(_CONFIGS["vgg8"], num_classes)


@MODELS.register("vgg11")
def vgg11(num_classes: int = 100) -> FeatureModel:
    return VGG(_CONFIGS["vgg11"], num_classes)


@MODELS.register("vgg13")
def vgg13(num_classes: int = 100) -> FeatureModel:
    return VGG(_CONFIGS["vgg13"], num_classes)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 100) -> FeatureModel:
    return VGG(_CONFIGS["vgg16"], num_classes)


@MODELS.register("vgg19")
def vgg19(num_classes: int = 100) -> FeatureModel:
    return VGG(_CONFIGS["vgg19"], num_classes)
