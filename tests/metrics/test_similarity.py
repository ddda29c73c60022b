"""structural_similarity against scikit-image's SSIM with Wang et al.'s settings."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity as skimage_ssim
from torch import Tensor

from saliency_monitor.metrics import structural_similarity


def skimage_reference(a: Tensor, b: Tensor, normalize: bool = True) -> Tensor:
    """skimage's SSIM per map: Gaussian window σ = 1.5 (radius 5, i.e. 11×11), population
    covariance, data range 1. skimage filters the whole map (reflect mode) and then averages
    only the positions at least 5 pixels from the border, whose windows never read the
    padding: the same "valid" region structural_similarity averages, so no cropping is needed."""
    out = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        if normalize:
            x, y = _min_max(x), _min_max(y)
        out.append(skimage_ssim(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1))
    return torch.tensor(out, dtype=torch.float64)


def _min_max(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)


def smooth(n: int, height: int, width: int, seed: int) -> Tensor:
    """Structured maps: upsampled coarse noise (blobs), like saliency maps."""
    torch.manual_seed(seed)
    coarse = torch.rand(n, 1, height // 6 + 1, width // 6 + 1, dtype=torch.float64)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def test_matches_skimage_on_random_maps_after_min_max_normalisation() -> None:
    torch.manual_seed(0)
    a = 5 * torch.randn(4, 23, 31, dtype=torch.float64) - 2
    b = a + 3 * torch.randn_like(a)
    got = structural_similarity(a, b)
    assert got.dtype == torch.float64 and got.shape == (4,)
    torch.testing.assert_close(got, skimage_reference(a, b), rtol=0, atol=1e-12)


def test_matches_skimage_on_structured_maps_as_given() -> None:
    a = smooth(3, 40, 32, seed=1)
    b = (0.7 * a + 0.3 * smooth(3, 40, 32, seed=2)).clamp(0, 1)
    b[1] = 1 - a[1]  # anti-correlated: negative SSIM
    got = structural_similarity(a, b, normalize=False)
    torch.testing.assert_close(got, skimage_reference(a, b, normalize=False), rtol=0, atol=1e-12)
    assert got[1] < 0 < got[0]


def test_float32_maps_and_the_channel_dimension() -> None:
    a, b = smooth(2, 16, 16, seed=3), smooth(2, 16, 16, seed=4)
    want = skimage_reference(a, b)
    torch.testing.assert_close(structural_similarity(a.float(), b.float()), want, rtol=0, atol=1e-6)
    with_channel = structural_similarity(a[:, None], b[:, None])
    torch.testing.assert_close(with_channel, structural_similarity(a, b), rtol=0, atol=0)


def test_identical_maps_give_one_and_normalisation_ignores_offset_and_scale() -> None:
    a = smooth(3, 20, 20, seed=5)
    a[2] = 0.25  # constant: normalised to zeros, still identical to itself
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(structural_similarity(a, a), ones, rtol=0, atol=1e-12)
    torch.testing.assert_close(structural_similarity(a, a, normalize=False), ones, rtol=0, atol=1e-12)
    b = smooth(3, 20, 20, seed=6)
    rescaled = structural_similarity(10 * a - 4, b / 3)
    torch.testing.assert_close(rescaled, structural_similarity(a, b), rtol=0, atol=1e-12)


def test_nan_propagates_and_empty_batch() -> None:
    a = smooth(2, 12, 12, seed=7)
    b = a.clone()
    b[1, 3, 3] = float("nan")
    got = structural_similarity(a, b)
    assert got[0] == pytest.approx(1.0) and got[1].isnan()
    assert structural_similarity(torch.zeros(0, 11, 11), torch.zeros(0, 11, 11)).shape == (0,)


GOOD = torch.zeros(2, 12, 12)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "error", "message"),
    [
        ([0.0], GOOD, {}, TypeError, "Expected `a` to be a torch.Tensor, but got list."),
        (GOOD, GOOD.long(), {}, TypeError, "Expected `b` to be a floating-point tensor, but got dtype torch.int64."),
        (GOOD, GOOD, {"normalize": 1}, TypeError, "Expected `normalize` to be a bool, but got 1."),
        (torch.zeros(12, 12), GOOD, {}, ValueError,
         "Expected `a` of shape (N, h, w) or (N, 1, h, w), but got shape (12, 12)."),
        (GOOD, torch.zeros(2, 3, 12, 12), {}, ValueError,
         "Expected `b` of shape (N, h, w) or (N, 1, h, w), but got shape (2, 3, 12, 12)."),
        (GOOD, torch.zeros(2, 12, 13), {}, ValueError,
         "Expected `a` and `b` to have the same shape, but got (2, 12, 12) and (2, 12, 13)."),
        (GOOD, GOOD[:, None], {}, ValueError,
         "Expected `a` and `b` to have the same shape, but got (2, 12, 12) and (2, 1, 12, 12)."),
        (torch.zeros(2, 10, 40), torch.zeros(2, 10, 40), {}, ValueError,
         "Expected maps of at least 11x11 pixels (the SSIM window), but got shape (2, 10, 40)."),
        (GOOD - 0.5, GOOD, {"normalize": False}, ValueError,
         "Expected `a` in [0, 1] with `normalize=False`, but got values in [-0.5, -0.5]."),
        (GOOD, GOOD + 2, {"normalize": False}, ValueError,
         "Expected `b` in [0, 1] with `normalize=False`, but got values in [2.0, 2.0]."),
    ],
)
def test_errors(a: object, b: object, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        structural_similarity(a, b, **kwargs)  # type: ignore[arg-type]
