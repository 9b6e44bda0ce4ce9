"""A frozen model with its BatchNorm layers folded into the convolutions before them, for faster inference.

In eval mode a BatchNorm2d is a per-channel affine map, so a Conv2d followed by one computes the same function
as a single Conv2d with scaled weights and a bias: one kernel instead of two passes over the activations,
which on a CPU are a large share of a thin network's forward (resnet56's 3x3 convolutions have 16 to 64
channels). The teacher never trains, so its passes can use such a copy; the original keeps its BatchNorm
layers for whatever reads them (OFD's margins, checkpoints, evaluation).

Which BatchNorm follows which convolution is read from the order the modules are registered in, a convention
that every model here follows but that is not the data flow itself, so the copy is checked: on a probe batch
it must reproduce the original's logits, stage maps, pre-pool map and pre-ReLU maps, or it is not used.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

TOLERANCE = 1e-3  # of each tensor's largest magnitude: float32 rounding over 56 layers stays far below it


def fold_batchnorm(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[nn.Module, int] | None:
    """(an eval-mode copy of `model` with every Conv2d -> BatchNorm2d pair folded, how many were folded), or None
    when the copy does not reproduce the model on a probe batch (or nothing could be folded)."""
    folded = copy.deepcopy(model).eval()
    count = 0
    for parent in folded.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                count += 1
    if count == 0 or not reproduces(model, folded, input_size):
        return None
    return folded.requires_grad_(False), count


def reproduces(model: nn.Module, folded: nn.Module, input_size: tuple[int, int, int]) -> bool:
    """Whether both give the same features (float32, eval mode) on a probe batch drawn from a generator of its own
    (the global random state, which training reads, is left untouched)."""
    device = next(model.parameters()).device
    probe = torch.randn(4, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a, b = model.forward_features(probe), folded.forward_features(probe)
    finally:
        model.train(was_training)
    pairs = [(a.logits, b.logits), *zip(a.stages, b.stages, strict=True)]
    if a.pre_pool is not None:
        pairs.append((a.pre_pool, b.pre_pool))
    if a.preact_stages is not None:
        pairs += list(zip(a.preact_stages, b.preact_stages, strict=True))
    return all(x.shape == y.shape and (x.float() - y.float()).abs().max() <= TOLERANCE * (x.float().abs().max() + 1e-6)
               for x, y in pairs)
