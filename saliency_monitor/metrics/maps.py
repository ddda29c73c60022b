"""Maps as tensors (..., h, w): resizing, min-max normalising, checking. Every metric and the
layer combination compare maps at a common size through these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_maps(maps: object, name: str, min_dim: int = 3) -> Tensor:
    """A floating-point tensor of at least ``min_dim`` dimensions (..., h, w), detached."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(maps).__name__}.")
    if not maps.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {maps.dtype}.")
    if maps.ndim < min_dim:
        raise ValueError(
            f"Expected `{name}` to have at least {min_dim} dimensions (..., h, w), but got "
            f"shape {tuple(maps.shape)}."
        )
    return maps.detach()


CONSTANT_TOLERANCE = 512
"""How far a map may vary and still count as constant, in float32 epsilons (≈ 6.1e-5) of its
largest magnitude. A map that is constant by construction (a 1×1 map; ``gradient`` or ``bias:*``
after a global average pool, where every location gets the same gradient) varies only by the
rounding of its sum over K channels, which grows like √K·eps: measured ≤ 9 eps (``bias:sum`` at
7×7 maps, K from 64 to 2048, ResNet-18/50 contiguous and channels-last). Genuine maps span ≥ 10%
of their maximum in every net measured (≥ 1e6 eps). 512 eps keeps a margin of > 50× above the
rounding and > 1000× below a real map."""


def constant_maps(maps: Tensor, tolerance: float = CONSTANT_TOLERANCE) -> Tensor:
    """(..., h, w) -> (...) bool: the map is constant up to float rounding.

    max − min <= ``tolerance`` · eps · max|m|, eps that of float32 (or of the maps' dtype when
    coarser). A 1×1 map and an all-zero map are constant; a map holding inf or NaN is not
    (it is non-finite, not constant).
    """
    flat = check_maps(maps, "maps", min_dim=2).flatten(-2)
    eps = max(torch.finfo(flat.dtype).eps, torch.finfo(torch.float32).eps)
    span = flat.amax(dim=-1) - flat.amin(dim=-1)
    return (span <= tolerance * eps * flat.abs().amax(dim=-1)) & flat.isfinite().all(dim=-1)


def minmax_normalize(maps: Tensor) -> Tensor:
    """(m − min) / (max − min) over the last two dims of (..., h, w); a constant map -> 0 (a map
    holding NaN stays NaN)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span == 0, 0, (maps - low) / torch.where(span == 0, 1, span))


def resize_maps(maps: Tensor, size: tuple[int, int], *, antialias: bool = False) -> Tensor:
    """Bilinear (align_corners=False) resize of the last two dims of (..., h, w); with
    ``antialias``, antialiased when it shrinks either side."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    shrink = antialias and (size[0] < maps.shape[-2] or size[1] < maps.shape[-1])
    resized = F.interpolate(flat.to(dtype), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return resized.view(*maps.shape[:-2], *size)
