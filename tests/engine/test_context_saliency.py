"""Context-aware saliency (Goferman et al. 2010): the batched torch version against a literal
per-patch reference, its properties, and its argument errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from saliency_monitor.engine.context_saliency import context_aware_saliency

SMALL = {"size": 24, "patch_size": 5, "k": 8, "scales": (1.0, 0.5), "query_scales": (1.0, 0.5, 0.25)}
"""Small settings: 100 patches and 117 candidates at scale 1; at scale 0.5 the query factor
0.25 leaves a 3x3 image, smaller than a patch, and is skipped."""


# --------------------------------------------------------------------------- literal reference


def _round(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, *shape): the one torch call the reference shares with the library."""
    if x.shape[-2:] == shape:
        return x
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=shrink)[0].numpy()


def _grid_patches(image: np.ndarray, factor: float, frame: tuple[int, int], patch_size: int) -> list:
    """[(key, vectorised patch, centre in the frame image / its larger side)] on the 50% grid."""
    _, height, width = image.shape
    stride, half = patch_size // 2, (patch_size - 1) / 2
    out = []
    for top in range(0, height - patch_size + 1, stride):
        for left in range(0, width - patch_size + 1, stride):
            centre_y = (top + half + 0.5) * frame[0] / height - 0.5
            centre_x = (left + half + 0.5) * frame[1] / width - 0.5
            vector = image[:, top : top + patch_size, left : left + patch_size].ravel()
            out.append(((factor, top, left), vector, np.array([centre_y, centre_x]) / max(frame)))
    return out


def _scale_reference(image: np.ndarray, patch_size: int, k: int, c: float, query_scales: tuple) -> np.ndarray:
    """Eq. 1-3 at one scale, one patch and one candidate at a time: (C, h, w) -> (nh, nw)."""
    channels, height, width = image.shape
    stride = patch_size // 2
    patches = _grid_patches(image, 1.0, (height, width), patch_size)
    candidates = []
    for factor in query_scales:
        shape = (_round(height * factor), _round(width * factor))
        if min(shape) >= patch_size:
            candidates += _grid_patches(_resize(image, shape), factor, (height, width), patch_size)
    values = []
    for key, p, p_centre in patches:
        distances = []
        for q_key, q, q_centre in candidates:
            if q_key == key:  # the patch itself
                continue
            d_colour = np.linalg.norm(p - q) / math.sqrt(channels * patch_size**2)
            d_position = np.linalg.norm(p_centre - q_centre)
            distances.append(d_colour / (1 + c * d_position))
        distances.sort()
        nearest = distances[: min(k, len(distances))]
        values.append(1 - math.exp(-sum(nearest) / len(nearest)))
    rows = len(range(0, height - patch_size + 1, stride))
    return np.array(values).reshape(rows, -1)


def _reference_one(image: np.ndarray, size: int, patch_size: int, k: int, c: float, scales: tuple,
                   query_scales: tuple, focus_threshold: float, center_sigma: float | None) -> np.ndarray:
    channels, height, width = image.shape
    h, w = _round(height * size / max(height, width)), _round(width * size / max(height, width))
    x = _resize(image, (h, w)).copy()
    for ch in range(channels):
        low, high = x[ch].min(), x[ch].max()
        x[ch] = (x[ch] - low) / (high - low) if high > low else 0.0
    layers = []
    for r in scales:
        grid = _scale_reference(_resize(x, (_round(h * r), _round(w * r))), patch_size, k, c, query_scales)
        layers.append(_resize(grid[None], (h, w))[0])
    mean = np.mean(layers, axis=0)
    foci = [(i, j) for i in range(h) for j in range(w) if mean[i, j] >= focus_threshold * mean.max()]
    d_foci = np.array([[min(math.hypot(i - fi, j - fj) for fi, fj in foci) for j in range(w)] for i in range(h)])
    if d_foci.max() > 0:
        d_foci /= d_foci.max()
    saliency = mean * (1 - d_foci)
    if center_sigma is not None:
        for i in range(h):
            for j in range(w):
                dy, dx = (i - (h - 1) / 2) / max(h, w), (j - (w - 1) / 2) / max(h, w)
                saliency[i, j] *= math.exp(-(dy**2 + dx**2) / (2 * center_sigma**2))
    return saliency / saliency.max() if saliency.max() > 0 else saliency


def reference(maps: Tensor, *, size: int, patch_size: int, k: int, c: float = 3.0, scales: tuple = (1.0,),
              query_scales: tuple = (1.0,), focus_threshold: float = 0.8, center_sigma: float | None = None) -> Tensor:
    """Literal context-aware saliency in float64, one image at a time."""
    images = maps.double().numpy()
    args = (size, patch_size, k, c, scales, query_scales, focus_threshold, center_sigma)
    return torch.from_numpy(np.stack([_reference_one(image, *args) for image in images]))


def blob(batch: int = 1, height: int = 32, width: int = 32, noise: float = 0.05, seed: int = 0) -> Tensor:
    """A bright rectangle on a dark background, plus a little noise."""
    torch.manual_seed(seed)
    x = noise * torch.rand(batch, 1, height, width, dtype=torch.float64)
    x[:, :, height // 3 : height // 3 + height // 4, width // 2 : width // 2 + width // 4] += 1
    return x


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ((2, 1, 20, 28), SMALL),  # upsampled, landscape
        ((1, 3, 40, 30), SMALL),  # shrunk (antialiased), portrait, three planes
        ((1, 1, 7, 7), {**SMALL, "c": 0.0, "focus_threshold": 0.5, "center_sigma": 0.4}),
        ((1, 1, 16, 16), {**SMALL, "size": 16, "patch_size": 3, "k": 200, "query_scales": (0.5, 1.0)}),
        ((1, 1, 24, 24), {**SMALL, "query_scales": (0.5,)}),  # no factor 1: nothing to exclude
    ],
)
def test_matches_the_literal_reference_on_random_maps(shape: tuple, settings: dict) -> None:
    torch.manual_seed(sum(shape))
    maps = torch.randn(shape, dtype=torch.float64)
    want = reference(maps, **settings)
    got = context_aware_saliency(maps, **settings)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(context_aware_saliency(maps.float(), **settings).double(), want, rtol=0, atol=1e-5)


def test_matches_the_literal_reference_on_a_blob() -> None:
    maps = blob(height=32, width=32)
    settings = {**SMALL, "size": 32}
    want = reference(maps, **settings)
    torch.testing.assert_close(context_aware_saliency(maps, **settings).double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(context_aware_saliency(maps.float(), **settings).double(), want, rtol=0, atol=1e-5)


def test_nearly_flat_regions_stay_accurate_in_float32() -> None:
    """A bright, nearly flat background (a 1e-3 ramp at 0.9 of the range) with two spots.

    Its patches are near-duplicates; the mean/zero-mean split of the distances keeps their
    float32 error at ~1e-6 (the plain ‖p‖² + ‖q‖² − 2p·q expansion is off by ~3e-4 here).
    """
    ramp = torch.arange(24, dtype=torch.float64) / 48
    maps = (0.9 + 1e-3 * (ramp[:, None] + ramp[None, :]))[None, None].clone()
    maps[0, 0, 5:9, 14:18] = 1.0
    maps[0, 0, 16, 6] = 0.0
    want = reference(maps, **SMALL)
    torch.testing.assert_close(context_aware_saliency(maps.float(), **SMALL).double(), want, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- properties


def test_output_is_in_unit_range_with_max_one_and_has_the_working_shape() -> None:
    torch.manual_seed(0)
    out = context_aware_saliency(torch.rand(3, 1, 30, 45), size=48)
    assert out.shape == (3, 32, 48) and out.dtype == torch.float32
    assert out.min() >= 0
    torch.testing.assert_close(out.flatten(1).amax(dim=1), torch.ones(3), rtol=0, atol=0)


def test_a_single_blob_is_the_most_salient_region() -> None:
    maps = blob(height=40, width=40, noise=0.02)
    out = context_aware_saliency(maps, size=40)[0]
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[13:23, 20:30] = True
    window_means = F.avg_pool2d(out[None, None], 10, stride=1)[0, 0]  # every 10x10 window
    top, left = divmod(int(window_means.argmax()), window_means.shape[1])
    assert abs(top - 13) <= 3 and abs(left - 20) <= 3  # the best window sits on the blob
    assert out[inside].mean() > 3 * out[~inside].mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invariant_to_positive_affine_rescaling_of_each_plane(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    maps = torch.rand(2, 3, 24, 24, dtype=dtype)
    scale = torch.tensor([0.5, 3.0, 100.0], dtype=dtype)[None, :, None, None]
    shift = torch.tensor([[-4.0, 0.0, 7.0], [1.0, 2.0, -3.0]], dtype=dtype)[:, :, None, None]
    torch.testing.assert_close(
        context_aware_saliency(maps * scale + shift, **SMALL), context_aware_saliency(maps, **SMALL), rtol=0, atol=1e-5
    )


def test_permuting_the_batch_permutes_the_output() -> None:
    torch.manual_seed(2)
    maps = torch.rand(4, 1, 24, 24)
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        context_aware_saliency(maps[order], **SMALL), context_aware_saliency(maps, **SMALL)[order], rtol=0, atol=1e-6
    )


def test_center_prior_multiplies_by_a_gaussian_and_lowers_the_corners() -> None:
    torch.manual_seed(4)
    maps = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    plain = context_aware_saliency(maps, **SMALL).double()
    prior = context_aware_saliency(maps, **SMALL, center_sigma=0.2).double()
    coords = (torch.arange(24, dtype=torch.float64) - 11.5) / 24
    gaussian = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 0.2**2))
    weighted = plain * gaussian
    torch.testing.assert_close(prior, weighted / weighted.max(), rtol=0, atol=1e-6)
    corners = (slice(0, 4), slice(-4, None))
    ratio = [m[0, 10:14, 10:14].mean() / torch.stack([m[0, r, s].mean() for r in corners for s in corners]).mean()
             for m in (plain, prior)]
    assert ratio[1] > 10 * ratio[0]


def test_constant_maps_give_zeros_and_an_empty_batch_gives_an_empty_result() -> None:
    out = context_aware_saliency(torch.full((2, 1, 24, 24), 3.0), **SMALL)
    assert torch.equal(out, torch.zeros(2, 24, 24))
    assert context_aware_saliency(torch.zeros(0, 1, 12, 24), **SMALL).shape == (0, 12, 24)


def test_no_gradient_and_the_input_is_untouched() -> None:
    torch.manual_seed(5)
    maps = torch.rand(1, 1, 24, 24, requires_grad=True)
    before = maps.detach().clone()
    out = context_aware_saliency(maps, **SMALL)
    assert not out.requires_grad and torch.equal(maps.detach(), before) and maps.grad is None
    half = context_aware_saliency(maps.detach().bfloat16(), **SMALL)
    assert half.dtype == torch.float32 and half.shape == (1, 24, 24)


# --------------------------------------------------------------------------- errors


GOOD = torch.zeros(1, 1, 24, 24)


@pytest.mark.parametrize(
    ("maps", "kwargs", "error", "message"),
    [
        ([[0.0]], {}, TypeError, "Expected `maps` to be a torch.Tensor, but got list."),
        (torch.zeros(1, 1, 8, 8, dtype=torch.int64), {}, TypeError,
         "Expected `maps` to be a floating-point tensor, but got dtype torch.int64."),
        (torch.zeros(1, 8, 8), {}, ValueError,
         "Expected `maps` of shape (B, C, H, W) with C, H, W >= 1, but got shape (1, 8, 8)."),
        (torch.zeros(1, 0, 8, 8), {}, ValueError,
         "Expected `maps` of shape (B, C, H, W) with C, H, W >= 1, but got shape (1, 0, 8, 8)."),
        (GOOD.clone().index_fill_(2, torch.tensor([3, 4]), float("nan")), {}, ValueError,
         "Expected `maps` to hold only finite values, but got 48 NaN or infinite value(s)."),
        (GOOD, {"size": 0}, ValueError, "Expected `size` to be a positive int, but got 0."),
        (GOOD, {"size": 24.0}, ValueError, "Expected `size` to be a positive int, but got 24.0."),
        (GOOD, {"patch_size": 4}, ValueError, "Expected `patch_size` to be an odd int >= 3, but got 4."),
        (GOOD, {"patch_size": 1}, ValueError, "Expected `patch_size` to be an odd int >= 3, but got 1."),
        (GOOD, {"k": 0}, ValueError, "Expected `k` to be a positive int, but got 0."),
        (GOOD, {"k": True}, ValueError, "Expected `k` to be a positive int, but got True."),
        (GOOD, {"c": -1.0}, ValueError, "Expected `c` to be a finite number >= 0, but got -1.0."),
        (GOOD, {"c": math.inf}, ValueError, "Expected `c` to be a finite number >= 0, but got inf."),
        (GOOD, {"scales": ()}, ValueError,
         "Expected `scales` to be a non-empty sequence of distinct numbers in (0, 1], but got ()."),
        (GOOD, {"scales": (1.0, 1.5)}, ValueError,
         "Expected `scales` to be a non-empty sequence of distinct numbers in (0, 1], but got (1.0, 1.5)."),
        (GOOD, {"scales": (1.0, 1)}, ValueError,
         "Expected `scales` to be a non-empty sequence of distinct numbers in (0, 1], but got (1.0, 1)."),
        (GOOD, {"query_scales": (0.0,)}, ValueError,
         "Expected `query_scales` to be a non-empty sequence of distinct numbers in (0, 1], but got (0.0,)."),
        (GOOD, {"query_scales": 1.0}, ValueError,
         "Expected `query_scales` to be a non-empty sequence of distinct numbers in (0, 1], but got 1.0."),
        (GOOD, {"focus_threshold": 0}, ValueError, "Expected `focus_threshold` to be a number in (0, 1], but got 0."),
        (GOOD, {"focus_threshold": 1.5}, ValueError,
         "Expected `focus_threshold` to be a number in (0, 1], but got 1.5."),
        (GOOD, {"center_sigma": 0.0}, ValueError,
         "Expected `center_sigma` to be None or a number > 0, but got 0.0."),
        (GOOD, {"center_sigma": "wide"}, ValueError,
         "Expected `center_sigma` to be None or a number > 0, but got 'wide'."),
        (GOOD, {"size": 20, "scales": (1.0, 0.3)}, ValueError,
         "Expected every scale to leave an image of at least 7x7 pixels, but scale 0.3 of the 20x20 working "
         "image is 6x6: increase `size` (got 20) or the smallest of `scales`."),
        (torch.zeros(1, 1, 2, 24), {"size": 24, "patch_size": 3}, ValueError,
         "Expected every scale to leave an image of at least 3x3 pixels, but scale 1.0 of the 2x24 working "
         "image is 2x24: increase `size` (got 24) or the smallest of `scales`."),
        (torch.zeros(1, 1, 5, 5), {"size": 5, "patch_size": 5, "scales": (1.0,)}, ValueError,
         "Expected at least one candidate patch besides each patch itself, but the 5x5 image at this scale "
         "holds a single 5x5 patch and no query scale adds one: increase `size`."),
    ],
)
def test_errors(maps: object, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        context_aware_saliency(maps, **kwargs)  # type: ignore[arg-type]
