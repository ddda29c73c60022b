"""Structural similarity of maps (SSIM, Wang et al. 2004), the measure "Beyond Saliency" uses
between a relevance map and its Salient Relevance map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import minmax_normalize

_SSIM_WINDOW, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03


def structural_similarity(a: Tensor, b: Tensor, *, normalize: bool = True) -> Tensor:
    """Per-map SSIM (Wang et al. 2004) of ``a[n]`` and ``b[n]``, as "Beyond saliency" compares maps.

    SSIM(x, y) = mean over window positions of
    ((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2)),
    with μ, σ², σxy the local means, variances and covariance (population, not sample)
    under an 11×11 Gaussian window of σ = 1.5, C1 = (0.01 L)², C2 = (0.03 L)², data range
    L = 1. The mean runs over the positions where the whole window lies inside the map (the
    (h − 10)×(w − 10) "valid" region of Wang et al.'s reference code): equal to
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``. Hand-written rather than torchmetrics'
    ``structural_similarity_index_measure``: since Lightning-AI/torchmetrics#2721 (2024) its
    mean also covers the border positions, whose windows read a reflect-padded map, while
    earlier versions averaged the valid region, so its number depends on the version installed.

    Args:
        a, b: (N, h, w) or (N, 1, h, w) real floating-point maps of the same shape, on the
            same device, with h, w >= 11 (the window; smaller maps are an error, not a
            shrunk window, which would be a different measure: upsample them first).
        normalize: min-max normalise each map to [0, 1] first (a constant map becomes all
            zeros), so SSIM ignores each map's offset and scale. With ``False`` the maps are
            used as given and must lie in [0, 1].

    Returns:
        (N,) float64 on the maps' device, in [−1, 1]; 1 for identical maps. A map holding a
        NaN gives NaN. Not differentiable: inputs are detached.
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"Expected `normalize` to be a bool, but got {normalize!r}.")
    x, y = _ssim_operand(a, "a"), _ssim_operand(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"Expected `a` and `b` to have the same shape, but got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"Expected `a` and `b` on the same device, but got {a.device} and {b.device}.")
    if min(x.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"Expected maps of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels (the SSIM window), but got "
            f"shape {tuple(a.shape)}."
        )
    if normalize:
        x, y = minmax_normalize(x), minmax_normalize(y)
    else:
        _check_unit_range(x, "a")
        _check_unit_range(y, "b")
    c1, c2 = (_SSIM_K1 * 1.0) ** 2, (_SSIM_K2 * 1.0) ** 2
    stats = _gaussian_window_mean(torch.cat([x, y, x * x, y * y, x * y]))
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)


def _ssim_operand(maps: object, name: str) -> Tensor:
    """(N, h, w) or (N, 1, h, w) floating maps -> detached float64 (N, 1, h, w)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(maps).__name__}.")
    if not maps.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {maps.dtype}.")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"Expected `{name}` of shape (N, h, w) or (N, 1, h, w), but got shape {tuple(maps.shape)}.")
    return maps.detach().double()


def _check_unit_range(x: Tensor, name: str) -> None:
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"Expected `{name}` in [0, 1] with `normalize=False`, but got values in "
            f"[{float(x.min())}, {float(x.max())}]."
        )


def _gaussian_window_mean(x: Tensor) -> Tensor:
    """Weighted means of (M, 1, h, w) under the normalised 11×11 Gaussian, 'valid' positions only."""
    radius = _SSIM_WINDOW // 2
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    weights = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    weights = weights / weights.sum()
    return F.conv2d(F.conv2d(x, weights.view(1, 1, -1, 1)), weights.view(1, 1, 1, -1))
