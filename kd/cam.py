"""Class activation maps, class-agnostic activation maps, their normalisations, resizing and scores.

F is the pre-pool map (B, K, H, W): the exact tensor global average pooling consumes, so that
logits = W @ mean_hw(F) + b. Then (Zhou et al. 2016; Wang et al. 2021)
    CAM_c  = sum_k W[c, k] F_k     the map whose spatial mean is class c's logit (minus bias)
    CAAM   = sum_k F_k             the class-agnostic activation map
Everything here computes in float32, whatever precision the network ran in.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Normalisation = Literal["minmax", "l2", "softmax"]
Resize = Literal["pool", "upsample"]


def cam(pre_pool: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM of one class per sample: (B, K, H, W), (C, K), (B,) -> (B, H, W)."""
    return torch.einsum("bkhw,bk->bhw", pre_pool.float(), weight.float()[classes])


def caam(pre_pool: torch.Tensor) -> torch.Tensor:
    """Class-agnostic activation map: (B, K, H, W) -> (B, H, W)."""
    return pre_pool.float().sum(1)


def normalise(maps: torch.Tensor, kind: Normalisation = "minmax", eps: float = 1e-6) -> torch.Tensor:
    """Per-sample normalisation over H x W, so that maps of different scale become comparable.

    minmax:  (m - min) / (max - min + eps), in [0, 1]; a constant map gives zeros
    l2:      m / (||m||_2 + eps), unit norm
    softmax: softmax over all H*W positions, sums to 1
    minmax and l2 are invariant to a positive rescaling of the map (up to eps); softmax is not, by design
    (a sharper map gives a peakier distribution).
    """
    flat = maps.flatten(1)
    if kind == "minmax":
        low = flat.min(1, keepdim=True).values
        high = flat.max(1, keepdim=True).values
        out = (flat - low) / (high - low + eps)
    elif kind == "l2":
        out = flat / (flat.norm(dim=1, keepdim=True) + eps)
    elif kind == "softmax":
        out = flat.softmax(1)
    else:
        raise ValueError(f"unknown normalisation '{kind}'")
    return out.view_as(maps)


def to_common_size(a: torch.Tensor, b: torch.Tensor, mode: Resize = "pool") -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two (B, H, W) maps to one size: average-pool the larger to the smaller, or upsample
    (bilinear) the smaller to the larger. Equal sizes pass through untouched."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    area = lambda m: m.shape[-1] * m.shape[-2]  # noqa: E731
    small, large = (a, b) if area(a) < area(b) else (b, a)
    if mode == "pool":
        large = F.adaptive_avg_pool2d(large[:, None], small.shape[-2:])[:, 0]
    else:
        small = F.interpolate(small[:, None], size=large.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (small, large) if area(a) < area(b) else (large, small)


def l1_map_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two normalised maps of the same size."""
    return (a - b).abs().mean()


def box_scores(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Localisation scores of (B, h, w) maps against (B, 4) pixel boxes (x0, y0, x1, y1; x1, y1 exclusive).

    energy: share of the map's positive mass that falls inside the box (after bilinear upsampling to the
    image size); pointing: 1 where the map's maximum lies inside the box. Both per sample.
    """
    up = F.interpolate(maps.float()[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    h, w = image_size
    rows = torch.arange(h, device=up.device)[None, :, None]
    cols = torch.arange(w, device=up.device)[None, None, :]
    boxes = boxes.to(up.device)
    inside = ((cols >= boxes[:, 0, None, None]) & (cols < boxes[:, 2, None, None]) &
              (rows >= boxes[:, 1, None, None]) & (rows < boxes[:, 3, None, None]))
    positive = up.clamp_min(0)
    energy = (positive * inside).flatten(1).sum(1) / positive.flatten(1).sum(1).clamp_min(1e-12)
    peak = up.flatten(1).argmax(1)
    pointing = inside.flatten(1).gather(1, peak[:, None])[:, 0].float()
    return energy, pointing
