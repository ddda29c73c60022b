"""Metrics against independent references: scipy for ranks and Spearman, literal loops for TV,
hand-worked pointing-game cases."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata, spearmanr

import saliency_monitor.metrics.correlation as correlation
from saliency_monitor.metrics import (
    PointingGameResult,
    class_sensitivity,
    difficult_pairs,
    drift,
    map_correlation,
    max_min_targets,
    meta_correlation,
    pointing_game,
    pointing_hits,
    rank_correlation,
    rank_data,
    total_variation,
    voc_boxes_to_masks,
)


def scipy_spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning
        return np.array([spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a.numpy(), b.numpy())])


def tied_maps(*shape: int, seed: int = 0) -> torch.Tensor:
    """Selective-map-like values: ~half exact zeros, the rest on a coarse grid (more ties)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5).clamp_min(0).mul(20).round()


# --------------------------------------------------------------------------- ranks and Spearman


@pytest.mark.parametrize("shape", [(6, 40), (5, 7, 9), (3, 2, 6, 5)])
def test_rank_data_equals_scipy_rankdata_with_ties(shape: tuple[int, ...]) -> None:
    x = tied_maps(*shape)
    expected = rankdata(x.reshape(shape[0], -1).numpy(), axis=1).reshape(shape)
    ranks = rank_data(x)
    assert ranks.dtype == torch.float64 and ranks.shape == x.shape
    np.testing.assert_array_equal(ranks.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.int64, torch.uint8])
def test_rank_correlation_equals_scipy_with_ties(dtype: torch.dtype) -> None:
    a, b = tied_maps(8, 12, 12, seed=1).to(dtype), tied_maps(8, 12, 12, seed=2).to(dtype)
    b[:4] = b[:4] + a[:4]  # some clearly correlated pairs
    rho = rank_correlation(a, b)
    assert rho.shape == (8,)
    assert rho.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    np.testing.assert_allclose(rho.double().numpy(), scipy_spearman(a.double(), b.double()), rtol=0, atol=1e-6)


def test_rank_correlation_float64_is_exact_to_1e12_and_continuous_data() -> None:
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 300, generator=generator, dtype=torch.float64), tied_maps(5, 300)
    for x, y in [(a, b), (a, a.exp() + torch.randn(5, 300, generator=generator, dtype=torch.float64))]:
        np.testing.assert_allclose(rank_correlation(x, y).numpy(), scipy_spearman(x, y), rtol=0, atol=1e-12)


def test_rank_correlation_is_nan_for_constant_maps() -> None:
    a, b = tied_maps(4, 30), tied_maps(4, 30, seed=5)
    a[0] = 0.0  # an all-zero selective map
    b[1] = 3.5
    a[2], b[2] = 1.0, 1.0
    rho = rank_correlation(a, b)
    assert torch.isnan(rho[:3]).all() and torch.isfinite(rho[3])
    assert np.isnan(scipy_spearman(a, b)[:3]).all()


def test_rank_correlation_plus_minus_one() -> None:
    a = tied_maps(3, 50)
    np.testing.assert_array_equal(rank_correlation(a, a).numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rank_correlation(a, 2 * a + 7).numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rank_correlation(a, -a.exp()).numpy(), [-1.0, -1.0, -1.0])
    np.testing.assert_allclose(scipy_spearman(a, -a.exp()), [-1.0, -1.0, -1.0], atol=1e-15)  # scipy: -1 + 1e-16


def test_rank_correlation_is_invariant_to_strictly_monotone_transforms() -> None:
    a, b = tied_maps(6, 80, seed=7), tied_maps(6, 80, seed=8)
    base = rank_correlation(a, b)
    for fa, fb in [(torch.exp, lambda t: t**3), (lambda t: 5 * t - 2, torch.sigmoid), (torch.atan, torch.sqrt)]:
        torch.testing.assert_close(rank_correlation(fa(a), fb(b)), base, rtol=0, atol=0)
    torch.testing.assert_close(rank_correlation(-a, -b), base, rtol=0, atol=0)


def test_rank_correlation_negative_zero_ties_with_zero_and_nan_propagates() -> None:
    a = torch.tensor([[0.0, -0.0, 1.0, 2.0, 0.0], [1.0, 2.0, float("nan"), 3.0, 4.0]])
    b = torch.tensor([[3.0, 1.0, 2.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rho = rank_correlation(a, b)
    assert rho[0].item() == pytest.approx(spearmanr([0, 0, 1, 2, 0], [3, 1, 2, 5, 4]).statistic, abs=1e-7)
    assert torch.isnan(rho[1])


def test_rank_keys_order_negatives_infinities_and_nan_rows() -> None:
    values = torch.tensor([[-2.5, 3.0, -0.0, float("-inf"), 0.0, -1e-30, float("inf"), 1e-30, -2.5]])
    for dtype in (torch.float32, torch.float64, torch.float16):
        expected = rankdata(values.to(dtype).double().numpy(), axis=1)
        np.testing.assert_array_equal(rank_data(values.to(dtype)).numpy(), expected)
    with_nan = torch.tensor([[1.0, -float("nan"), 2.0], [3.0, 1.0, 2.0]])
    ranks = rank_data(with_nan)
    assert torch.isnan(ranks[0]).all() and ranks[1].tolist() == [3.0, 1.0, 2.0]
    assert torch.isnan(rank_correlation(with_nan, torch.rand(2, 3))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rank_correlation_on_cuda_equals_cpu() -> None:
    a, b = tied_maps(16, 30, 30, seed=21).float(), tied_maps(16, 30, 30, seed=22).float()
    b[0] = 1.0
    on_gpu = rank_correlation(a.cuda(), b.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), rank_correlation(a, b), equal_nan=True, rtol=0, atol=1e-7)


def test_rank_correlation_chunks_agree_with_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tied_maps(9, 7, 7, seed=11), tied_maps(9, 7, 7, seed=12)
    whole = rank_correlation(a, b)
    monkeypatch.setitem(correlation._CHUNK_ELEMENTS, "cpu", 100)  # 2 rows per chunk
    torch.testing.assert_close(rank_correlation(a, b), whole, rtol=0, atol=0)
    np.testing.assert_array_equal(rank_data(a).numpy(), rankdata(a.reshape(9, -1).numpy(), axis=1).reshape(9, 7, 7))


def test_rank_correlation_torch_sort_path_equals_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tied_maps(5, 9, 9, seed=31).float(), tied_maps(5, 9, 9, seed=32).float()
    fast = rank_correlation(a, b)
    monkeypatch.setattr(correlation, "_NUMPY", False)  # the accelerator path: torch.sort
    torch.testing.assert_close(rank_correlation(a, b), fast, rtol=0, atol=0)
    np.testing.assert_array_equal(rank_data(a).numpy(), rankdata(a.reshape(5, -1).numpy(), axis=1).reshape(5, 9, 9))


def test_rank_correlation_empty_batch_single_element_and_no_grad() -> None:
    assert rank_correlation(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).shape == (0,)
    assert torch.isnan(rank_correlation(torch.ones(2, 1), torch.ones(2, 1))).all()
    a = torch.rand(2, 9, requires_grad=True)
    assert not rank_correlation(a, torch.rand(2, 9)).requires_grad
    with torch.inference_mode():
        assert rank_correlation(torch.rand(2, 9), torch.rand(2, 9)).shape == (2,)


@pytest.mark.parametrize(
    ("a", "b", "error", "message"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), ValueError,
         "Expected `a` and `b` to have the same shape, but got (3, 4) and (3, 5)."),
        (torch.zeros(4), torch.zeros(4), ValueError,
         "Expected `a` of shape (N, ...) with at least 2 dimensions, but got shape (4,)."),
        (torch.zeros(2, 0), torch.zeros(2, 0), ValueError,
         "Expected `a` to hold at least one element per map, but got shape (2, 0)."),
        (np.zeros((2, 3)), torch.zeros(2, 3), TypeError, "Expected `a` to be a torch.Tensor, but got ndarray."),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.complex64), TypeError,
         "Expected `b` to be a real tensor, but got dtype torch.complex64."),
    ],
)
def test_rank_correlation_errors(a: object, b: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        rank_correlation(a, b)


# --------------------------------------------------------------------------- map correlations


def test_map_correlation_upsamples_bilinearly_then_ranks() -> None:
    generator = torch.Generator().manual_seed(4)
    a = torch.rand(2, 3, 7, 7, generator=generator)
    b = torch.rand(2, 3, 14, 14, generator=generator).sub(0.5).clamp_min(0)
    rho = map_correlation(a, b, size=28)
    assert rho.shape == (2, 3) and rho.dtype == torch.float32
    up_a = F.interpolate(a.flatten(0, 1)[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    up_b = F.interpolate(b.flatten(0, 1)[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(rho.flatten().numpy(), scipy_spearman(up_a, up_b), atol=1e-6)
    assert not torch.equal(map_correlation(a, a.clone(), size=None), rho)
    torch.testing.assert_close(map_correlation(a, a, size=(14, 20)), torch.ones(2, 3))


def test_class_sensitivity_meta_correlation_drift_are_map_correlation() -> None:
    generator = torch.Generator().manual_seed(6)
    a, b = torch.rand(3, 2, 5, 5, generator=generator), torch.rand(3, 2, 5, 5, generator=generator)
    expected = map_correlation(a, b, size=10)
    for fn in (class_sensitivity, meta_correlation, drift):
        torch.testing.assert_close(fn(a, b, 10), expected, rtol=0, atol=0)


def test_max_min_targets() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 0.0, 1.0]])
    assert max_min_targets(logits).tolist() == [[1, 2], [0, 1]]
    with pytest.raises(ValueError, match=re.escape("Expected `logits` of shape (B, C) with C >= 2, but got (2,).")):
        max_min_targets(torch.zeros(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"a": torch.zeros(2, 4, 4), "b": torch.zeros(3, 4, 4), "size": None},
         "Expected `a` and `b` to have the same leading dimensions, but got shapes (2, 4, 4) and (3, 4, 4)."),
        ({"a": torch.zeros(2, 4, 4), "b": torch.zeros(2, 4, 4), "size": 0},
         "Expected `size` to be None, a positive int or (h, w), but got 0."),
        ({"a": torch.zeros(4, 4), "b": torch.zeros(4, 4), "size": None},
         "Expected `a` to have at least 3 dimensions (..., h, w), but got shape (4, 4)."),
        ({"a": torch.zeros(2, 4, 4), "b": torch.zeros(2, 4, 5), "size": None},
         "Expected `a` and `b` to have the same shape, but got (2, 4, 4) and (2, 4, 5)."),
    ],
)
def test_map_correlation_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        map_correlation(**kwargs)


# --------------------------------------------------------------------------- total variation


def literal_total_variation(maps: torch.Tensor) -> list[float]:
    n, c, h, w = maps.shape
    out = []
    for i in range(n):
        tv = 0.0
        for k in range(c):
            m = maps[i, k].tolist()
            mean = sum(sum(row) for row in m) / (h * w)
            scale = max(sum(abs(v - mean) for row in m for v in row) / (h * w), 1e-6)
            z = [[(v - mean) / scale for v in row] for row in m]
            for y in range(h):
                for x in range(w):
                    if y + 1 < h:
                        tv += abs(z[y + 1][x] - z[y][x])
                    if x + 1 < w:
                        tv += abs(z[y][x + 1] - z[y][x])
        out.append(tv / (c * h * w))
    return out


def test_total_variation_equals_literal_loop() -> None:
    maps = tied_maps(3, 2, 5, 6, seed=13) + torch.rand(3, 2, 5, 6, dtype=torch.float64)
    maps[2, 1] = 4.0  # a constant channel contributes 0
    tv = total_variation(maps)
    assert tv.shape == (3,) and tv.dtype == torch.float64
    np.testing.assert_allclose(tv.numpy(), literal_total_variation(maps), rtol=1e-12)
    np.testing.assert_allclose(total_variation(maps.float()).numpy(), literal_total_variation(maps), rtol=1e-5)


def test_total_variation_scale_offset_invariance_and_3d_input() -> None:
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    torch.testing.assert_close(total_variation(7 * maps + 3), total_variation(maps))
    torch.testing.assert_close(total_variation(maps), total_variation(maps[:, None]))
    checker = (torch.arange(8)[:, None] + torch.arange(8)).remainder(2).double()[None]
    assert total_variation(checker).item() == pytest.approx(2 * 2 * 8 * 7 / 64)  # |z| = 1, jumps of 2
    assert total_variation(torch.zeros(1, 3, 3)).item() == 0.0


# --------------------------------------------------------------------------- pointing game


def point_map(height: int, width: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(height, width)
    m[y, x] = 1.0
    return m


@pytest.mark.parametrize(
    ("point", "hit"),
    [
        ((20, 20), True),  # on the mask
        ((20, 34), True),  # 14 px right of the mask's right column: inside the tolerance
        ((20, 35), False),  # exactly 15 px: TorchRay's strict inequality, a miss
        ((20, 36), False),
        ((29, 31), True),  # (dy, dx) = (9, 11): 81 + 121 = 202 < 225
        ((29, 32), False),  # (9, 12): 81 + 144 = 225, not < 225
        ((6, 20), True),  # 14 px above the top row
        ((5, 20), False),
    ],
)
def test_pointing_hits_tolerance_border(point: tuple[int, int], hit: bool) -> None:
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 20, 15:21] = True  # a 1-pixel-high box, columns 15..20
    assert pointing_hits(point_map(64, 64, *point)[None], mask).tolist() == [hit]


def test_pointing_hits_tolerance_zero_ties_and_empty_mask() -> None:
    mask = torch.zeros(3, 10, 10, dtype=torch.bool)
    mask[:, 4, 4] = True
    maps = torch.stack([point_map(10, 10, 4, 4), point_map(10, 10, 4, 5), torch.zeros(10, 10)])
    assert pointing_hits(maps, mask, tolerance=0).tolist() == [True, False, False]
    assert pointing_hits(maps, mask, tolerance=1).tolist() == [True, False, False]
    assert pointing_hits(maps, mask, tolerance=1.5).tolist() == [True, True, False]
    corner = torch.zeros(1, 10, 10, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert pointing_hits(torch.zeros(1, 10, 10), corner, tolerance=1).tolist() == [True]  # constant -> (0, 0)
    tied = torch.zeros(1, 10, 10)
    tied[0, 2, 8], tied[0, 7, 1] = 1.0, 1.0  # two maxima: the first in row-major order, (2, 8)
    at = torch.zeros(2, 10, 10, dtype=torch.bool)
    at[0, 2, 8], at[1, 7, 1] = True, True
    assert pointing_hits(tied.expand(2, 10, 10), at, tolerance=1).tolist() == [True, False]
    assert pointing_hits(maps, torch.zeros(3, 10, 10, dtype=torch.bool)).tolist() == [False] * 3


def test_pointing_hits_upsamples_map_to_mask_size() -> None:
    low = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])  # max in the bottom-right cell
    # bilinear x4 (align_corners=False): the 2x2 bottom-right block ties at 1 -> first is (6, 6)
    up = F.interpolate(low[:, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    assert divmod(int(up.argmax()), 8) == (6, 6)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 6, 6] = True
    assert pointing_hits(low, mask, tolerance=0).tolist() == [True]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 7, 7] = True
    assert pointing_hits(low, mask, tolerance=1).tolist() == [False]


def test_voc_boxes_to_masks_one_based_inclusive_union() -> None:
    masks = voc_boxes_to_masks([[1, 1, 2, 3], [4, 1, 4, 1], [2, 2, 3, 3]], [0, 0, 2], num_classes=4, image_size=(4, 5))
    expected0 = torch.tensor(
        [[1, 1, 0, 1, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool
    )
    assert masks.shape == (4, 4, 5) and masks.dtype == torch.bool
    assert torch.equal(masks[0], expected0)
    assert not masks[1].any() and not masks[3].any()
    assert masks[2].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert not voc_boxes_to_masks(torch.zeros(0, 4), [], 2, (3, 3)).any()
    with pytest.raises(ValueError, match=re.escape("Expected `labels` in [0, 4), but got values in [0, 4].")):
        voc_boxes_to_masks([[1, 1, 2, 2], [1, 1, 2, 2]], [0, 4], 4, (4, 4))
    with pytest.raises(ValueError, match=re.escape("Expected `boxes` of shape (K, 4), but got shape (1, 3).")):
        voc_boxes_to_masks([[1, 1, 2]], [0], 4, (4, 4))
    message = "Expected `image_size` to be a positive int or (H, W), but got None."
    with pytest.raises(ValueError, match=re.escape(message)):
        voc_boxes_to_masks([[1, 1, 2, 2]], [0], 4, None)


def make_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 40x40 images, 3 classes: image 0 holds a small class 0 and a large class 1,
    image 1 holds only a small class 0; class 2 has no boxes anywhere."""
    masks = torch.stack([
        voc_boxes_to_masks([[1, 1, 10, 10], [11, 1, 40, 40]], [0, 1], 3, (40, 40)),
        voc_boxes_to_masks([[31, 31, 40, 40]], [0], 3, (40, 40)),
    ])
    return masks, torch.tensor([[0, 1, 2], [0, 1, 2]])


def test_pointing_game_hand_worked() -> None:
    masks, targets = make_scene()
    maps = torch.zeros(2, 3, 20, 20)
    maps[0, 0, 2, 2] = 1  # -> about (4, 4) at 40x40: on class 0's box, hit
    maps[0, 1, 1, 1] = 1  # -> about (2, 2): 8 px left of class 1's box (x >= 10): hit
    maps[0, 2, 10, 10] = 1  # class 2 absent from image 0: not evaluated
    maps[1, 0, 1, 1] = 1  # -> about (2, 2): far from (30..39, 30..39): miss
    maps[1, 1, 5, 5] = 1  # class 1 absent from image 1: not evaluated
    result = pointing_game(maps, targets, masks, tolerance=15)
    assert result.hits.tolist() == [1, 1, 0] and result.misses.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(result.class_accuracy.numpy(), [0.5, 1.0, np.nan])
    assert result.accuracy.item() == pytest.approx(0.75)  # mean over evaluated classes only
    strict = pointing_game(maps, targets, masks, tolerance=5)
    assert strict.hits.tolist() == [1, 0, 0] and strict.misses.tolist() == [1, 1, 0]


def test_pointing_game_difficult_subset() -> None:
    masks, targets = make_scene()
    # class 0 in image 0: 100/1600 px < 25% and class 1 present -> difficult;
    # class 1 in image 0: 75% of the image -> not; class 0 in image 1: alone -> not.
    assert difficult_pairs(targets, masks).tolist() == [[True, False, False], [False, False, False]]
    maps = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = pointing_game(maps, targets, masks, difficult=True)
    assert (result.hits + result.misses).tolist() == [1, 0, 0]


def test_pointing_game_result_adds_and_handles_no_evaluation() -> None:
    first = PointingGameResult(torch.tensor([1, 0]), torch.tensor([1, 0]))
    second = PointingGameResult(torch.tensor([2, 0]), torch.tensor([0, 0]))
    total = first + second
    assert total.hits.tolist() == [3, 0] and total.misses.tolist() == [1, 0]
    assert total.accuracy.item() == pytest.approx(0.75)
    assert math.isnan(PointingGameResult(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)).accuracy)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"targets": torch.tensor([[0, 3]])}, ValueError, "Expected `targets` in [0, 3), but got values in [0, 3]."),
        ({"targets": torch.tensor([[0.0, 1.0]])}, TypeError,
         "Expected `targets` to be an integer tensor of class indices, "
         "but got a torch.float32 tensor of shape (1, 2)."),
        ({"masks": torch.zeros(1, 3, 8, 8)}, ValueError,
         "Expected `masks` to be a (B, C, H, W) bool tensor, but got a torch.float32 tensor of shape (1, 3, 8, 8)."),
        ({"maps": torch.zeros(1, 3, 4, 4)}, ValueError,
         "Expected `maps` of shape (B, T, h, w) with (B, T)=(1, 2), but got shape (1, 3, 4, 4)."),
        ({"tolerance": -1}, ValueError, "Expected `tolerance` to be a number >= 0, but got -1."),
    ],
)
def test_pointing_game_errors(kwargs: dict, error: type, message: str) -> None:
    args = {"maps": torch.zeros(1, 2, 4, 4), "targets": torch.tensor([[0, 1]]),
            "masks": torch.ones(1, 3, 8, 8, dtype=torch.bool)} | kwargs
    with pytest.raises(error, match=re.escape(message)):
        pointing_game(**args)
