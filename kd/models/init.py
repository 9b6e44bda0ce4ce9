"""The benchmark's weight initialisation, shared by the zoo models (kept so that training from scratch
reproduces its teachers)."""
from __future__ import annotations

from torch import nn


def benchmark_init(model: nn.Module, linear: str = "default") -> None:
    """He normal (fan_out) convs with zero bias, identity BatchNorm; the final Linear as the benchmark's model
    family has it: "default" (PyTorch's own), "zero_bias", or "normal" (N(0, 0.01) weights, zero bias)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
