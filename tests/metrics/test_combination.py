"""Layer weights without data and the layer combination (§4.2) against literal formulas."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from saliency_monitor.metrics import (
    combine_maps,
    fixed_weights,
    linear_weights,
    minmax_normalize,
    normalize_weights,
    uniform_weights,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- weights


def test_uniform_and_linear_weights() -> None:
    torch.testing.assert_close(uniform_weights(4), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(linear_weights(4), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 10)
    torch.testing.assert_close(linear_weights(1), torch.ones(1, dtype=torch.float64))


def test_fixed_weights_are_the_uniform_and_linear_schemes() -> None:
    torch.testing.assert_close(fixed_weights("uniform", 3), uniform_weights(3))
    torch.testing.assert_close(fixed_weights("linear", 3), linear_weights(3))
    with pytest.raises(ValueError, match=re.escape("Expected `scheme` in ['uniform', 'linear'], but got 'spread'.")):
        fixed_weights("spread", 3)
    with pytest.raises(ValueError, match=re.escape("Expected `num_layers` to be a positive int, but got 0.")):
        fixed_weights("uniform", 0)


def test_normalize_weights_sums_to_one() -> None:
    w = normalize_weights([2.0, 0.0, 6.0])
    assert w.dtype == torch.float64 and w.tolist() == [0.25, 0.0, 0.75]
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(normalize_weights(torch.tensor([0.3, 0.9])).sum(), one)


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([1.0, -0.5], ValueError, "Expected `weights` to be finite, >= 0 and not all 0, but got [1.0, -0.5]."),
        ([0.0, 0.0], ValueError, "Expected `weights` to be finite, >= 0 and not all 0, but got [0.0, 0.0]."),
        ([1.0, float("nan")], ValueError, "Expected `weights` to be finite, >= 0 and not all 0, but got [1.0, nan]."),
        ([], ValueError, "Expected `weights` to be a non-empty 1-D sequence, but got shape (0,)."),
        ([[1.0], [2.0]], ValueError, "Expected `weights` to be a non-empty 1-D sequence, but got shape (2, 1)."),
        (["a"], TypeError, "Expected `weights` to be a sequence of numbers, but got ['a']."),
    ],
)
def test_normalize_weights_errors(weights: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        normalize_weights(weights)


# --------------------------------------------------------------------------- combination


def test_minmax_normalize_per_map() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = minmax_normalize(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map -> 0, no NaN
    assert minmax_normalize(torch.tensor([[1.0, float("nan")]])).isnan().all()  # NaN is not hidden


def literal_normalised(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(m.flatten(0, 1)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    up = up.view(*m.shape[:2], *size)
    out = torch.empty_like(up)
    for b in range(up.shape[0]):
        for t in range(up.shape[1]):
            x = up[b, t]
            out[b, t] = (x - x.min()) / (x.max() - x.min())
    return out


def test_combine_maps_sum_and_product_formulas() -> None:
    maps = [torch.rand(2, 3, s, s, generator=gen(s)) for s in (4, 8, 16)]
    gamma = [0.2, 0.3, 0.5]
    normed = [literal_normalised(m, (16, 16)) for m in maps]
    expected_sum = sum(g * n for g, n in zip(gamma, normed))
    expected_product = normed[0] ** 0.2 * normed[1] ** 0.3 * normed[2] ** 0.5
    torch.testing.assert_close(combine_maps(maps, gamma), expected_sum)
    torch.testing.assert_close(combine_maps(maps, [2, 3, 5], mode="product"), expected_product)  # weights normalised
    torch.testing.assert_close(combine_maps(maps), sum(normed) / 3)  # uniform by default
    out = combine_maps(maps, gamma, size=(10, 12), mode="product")
    assert out.shape == (2, 3, 10, 12) and out.min() >= 0 and out.max() <= 1


def test_combine_maps_mapping_and_zero_weight_in_product() -> None:
    a = torch.rand(1, 1, 5, 5, generator=gen(1))
    b = torch.zeros(1, 1, 5, 5)  # normalises to 0 everywhere
    maps = {"layer3": a, "layer4": b}
    torch.testing.assert_close(combine_maps(maps, {"layer4": 0.0, "layer3": 1.0}, mode="product"), minmax_normalize(a))
    assert combine_maps(maps, [1.0, 1.0], mode="product").abs().max() == 0
    message = "Expected `weights` keyed by the layers ['layer3', 'layer4'], but got keys ['layer3']."
    with pytest.raises(ValueError, match=re.escape(message)):
        combine_maps(maps, {"layer3": 1.0})


@pytest.mark.parametrize(
    ("maps", "kwargs", "error", "message"),
    [
        ([torch.zeros(2, 4, 4), torch.zeros(3, 4, 4)], {}, ValueError,
         "Expected every layer's maps to share leading dims and device, but maps[1] has shape (3, 4, 4) "
         "on cpu and the first (2, 4, 4) on cpu."),
        ([torch.zeros(2, 4, 4)], {"weights": [1.0, 2.0]}, ValueError, "Expected 1 weights (one per layer), but got 2."),
        ([torch.zeros(2, 4, 4)], {"mode": "max"}, ValueError, "Expected `mode` in ['sum', 'product'], but got 'max'."),
        ([], {}, ValueError, "Expected `maps` to hold at least one layer's maps, but got none."),
        (torch.zeros(2, 4, 4), {}, TypeError,
         "Expected `maps` to be a sequence or mapping of tensors (one per layer), but got Tensor."),
        ([torch.zeros(2, 4, 4, dtype=torch.long)], {}, TypeError,
         "Expected maps[0] to be a floating-point (..., h, w) tensor, "
         "but got a torch.int64 tensor of shape (2, 4, 4)."),
    ],
)
def test_combine_maps_errors(maps: object, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        combine_maps(maps, **kwargs)
