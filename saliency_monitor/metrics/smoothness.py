"""Map noise: total variation as in Smooth Deep Saliency (arXiv 2404.02282)."""

from __future__ import annotations

import torch
from torch import Tensor

from .maps import check_maps


def total_variation(maps: Tensor) -> Tensor:
    """Map noise as in Smooth Deep Saliency: TV of per-channel standardised maps.

    For each channel z = (m − mean(m)) / max(mean|m − mean(m)|, 1e-6) (means over H, W),
    then TV = Σ_c Σ_{h,w} |z[h+1, w] − z[h, w]| + |z[h, w+1] − z[h, w]| (anisotropic L1),
    divided by C·H·W. The standardisation makes TV blind to the map's offset and scale.

    Args:
        maps: (N, C, H, W), or (N, H, W) for C = 1. Engine maps (B, T, h, w) give each
            image's mean over its T targets; pass ``maps.flatten(0, 1)[:, None]`` for one
            value per target.

    Returns:
        (N,) in the maps' dtype (float32 for half precision); 0 for a constant map.
    """
    maps = check_maps(maps, "maps")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4:
        raise ValueError(
            f"Expected `maps` of shape (N, C, H, W) or (N, H, W), but got shape {tuple(maps.shape)}."
        )
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    centered = maps - maps.mean(dim=(-2, -1), keepdim=True)
    z = centered / centered.abs().mean(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    tv = (z[..., 1:, :] - z[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    tv = tv + (z[..., :, 1:] - z[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    return tv / (maps.shape[1] * maps.shape[2] * maps.shape[3])
