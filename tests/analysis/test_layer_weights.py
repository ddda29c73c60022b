"""Data-driven layer weights (§4.2): feature spread and linear-probe accuracy against literal
formulas and an independent ridge classifier; the ``layer_weights`` dispatcher."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from saliency_monitor.analysis.layer_weights import (
    feature_spread,
    layer_weights,
    probe_accuracy,
    probe_split,
)
from saliency_monitor.metrics import linear_weights, normalize_weights, uniform_weights


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_feature_spread_equals_literal_formula() -> None:
    x = torch.rand(5, 3, 4, 6, generator=gen(0), dtype=torch.float64)
    means = [[x[i, k].mean().item() for k in range(3)] for i in range(5)]
    centre = [sum(means[i][k] for i in range(5)) / 5 for k in range(3)]
    literal = sum(abs(means[i][k] - centre[k]) for i in range(5) for k in range(3)) / (5 * 3)
    assert feature_spread(x).item() == pytest.approx(literal, rel=1e-12)
    # spatial mean: repeating the map spatially (another resolution) changes nothing
    assert feature_spread(x.repeat(1, 1, 2, 3)).item() == pytest.approx(literal, rel=1e-12)
    assert feature_spread(x.mean(dim=(2, 3))).item() == pytest.approx(literal, rel=1e-12)
    assert feature_spread(x[:1].expand(4, 3, 4, 6)).item() == 0.0  # identical images: no spread


def clustered(m: int, k: int, classes: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(m) % classes
    centres = torch.randn(classes, k, generator=gen(seed), dtype=torch.float64) * 3
    return centres[labels] + noise * torch.randn(m, k, generator=gen(seed + 1), dtype=torch.float64), labels


def reference_probe_scores(x: torch.Tensor, y: torch.Tensor, fit: torch.Tensor, l2: float) -> torch.Tensor:
    """Ridge fit as an augmented least-squares problem [X 1; √λ I 0] w = [Y; 0] (lstsq)."""
    mean, std = x[fit].mean(0), x[fit].std(0, unbiased=False)
    z = (x - mean) / std
    ones = torch.ones(len(z), 1, dtype=torch.float64)
    k = z.shape[1]
    design = torch.cat([
        torch.cat([z[fit], ones[fit]], dim=1),
        torch.cat([(int(fit.sum()) * l2) ** 0.5 * torch.eye(k, dtype=torch.float64),
                   torch.zeros(k, 1, dtype=torch.float64)], dim=1),
    ])
    target = torch.cat([y[fit], torch.zeros(k, y.shape[1], dtype=torch.float64)])
    w = torch.linalg.lstsq(design, target).solution
    return torch.cat([z, ones], dim=1)[~fit] @ w


@pytest.mark.parametrize(("k", "noise"), [(6, 4.0), (40, 8.0)])  # primal (K <= M_fit), dual (K > M_fit)
def test_probe_accuracy_equals_reference_ridge_classifier(k: int, noise: float) -> None:
    x, labels = clustered(24, k, 3, noise=noise, seed=k)
    fit = probe_split(labels, seed=1)
    scores = reference_probe_scores(x, F.one_hot(labels, 3).double(), fit, l2=0.05)
    expected = (scores.argmax(1) == labels[~fit]).double().mean()
    assert 0 < expected < 1  # a case where the exact optimum matters
    assert probe_accuracy(x, labels, l2=0.05, seed=1).item() == pytest.approx(expected.item())
    assert probe_accuracy(x, labels, fit=fit, l2=0.05).item() == pytest.approx(expected.item())


def test_probe_accuracy_multilabel_equals_reference() -> None:
    x = torch.randn(30, 5, generator=gen(3), dtype=torch.float64)
    y = torch.stack([x[:, 0] > 0, x[:, 1] + 0.5 * x[:, 2] > 0.3, torch.rand(30, generator=gen(4)) > 0.7], 1).double()
    fit = probe_split(y, seed=0)
    assert int(fit.sum()) == 15
    expected = ((reference_probe_scores(x, y, fit, 1e-2) > 0.5).double() == y[~fit]).double().mean()
    assert probe_accuracy(x[:, :, None, None].expand(30, 5, 2, 2), y.long()).item() == pytest.approx(expected.item())


def test_probe_accuracy_is_scored_on_held_out_images() -> None:
    separable, labels = clustered(40, 16, 4, noise=0.1, seed=5)
    assert probe_accuracy(separable[:, :, None, None], labels).item() == 1.0
    # 40 images, 500 random features: the probe memorises the fit split, held out is chance
    noise = torch.randn(40, 500, generator=gen(6))
    held_out = probe_accuracy(noise, labels, l2=1e-6)
    everything = torch.ones(40, dtype=torch.bool)
    assert held_out.item() < 0.6
    assert probe_accuracy(noise, labels, l2=1e-6) == held_out  # deterministic
    message = "Expected the split to leave images in both the fit and the held-out part, but got"
    with pytest.raises(ValueError, match=re.escape(f"{message} 40 of 40 in the fit part")):
        probe_accuracy(noise, labels, fit=everything)
    with pytest.raises(ValueError, match=re.escape(f"{message} 3 of 3 in the fit part")):
        probe_accuracy(noise[:3], torch.tensor([0, 1, 2]))  # singleton classes all go to fit


def test_probe_accuracy_works_under_inference_mode() -> None:
    x, labels = clustered(20, 4, 2, noise=0.1, seed=7)
    with torch.inference_mode():
        assert probe_accuracy(x.float(), labels).item() == 1.0


def test_probe_split_is_stratified_and_seeded() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    fit = probe_split(labels, seed=0)
    assert [int(fit[labels == c].sum()) for c in range(4)] == [2, 1, 2, 1]  # ceil(n_c / 2); singletons fit
    assert torch.equal(probe_split(labels, seed=0), fit)
    assert any(not torch.equal(probe_split(labels, seed=s), fit) for s in range(1, 5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": torch.zeros(1, 3)},
         "Expected `features` of shape (M, K, H, W) or (M, K) with M >= 2 images, but got shape (1, 3)."),
        ({"labels": torch.tensor([0, 1, 0])},
         "Expected `labels` to be (M,) class indices or (M, C) multi-hot with M=4"),
        ({"labels": torch.tensor([[0, 2], [1, 0], [0, 1], [1, 1]])},
         "Expected multilabel `labels` (M, C) to hold only 0 and 1"),
        ({"labels": torch.tensor([0, 1, 2, 1]), "num_classes": 2},
         "Expected `labels` in [0, 2), but got values in [0, 2]."),
        ({"l2": 0.0}, "Expected `l2` to be a number > 0, but got 0.0."),
    ],
)
def test_probe_accuracy_errors(kwargs: dict, message: str) -> None:
    args = {"features": torch.randn(4, 3), "labels": torch.tensor([0, 1, 0, 1])} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        probe_accuracy(**args)


def test_layer_weights_schemes() -> None:
    shallow, labels = clustered(24, 8, 3, noise=6.0, seed=8)
    deep, _ = clustered(24, 8, 3, noise=0.1, seed=9)
    features = [shallow[:, :, None, None], deep[:, :, None, None]]
    torch.testing.assert_close(layer_weights("uniform", num_layers=3), uniform_weights(3))
    torch.testing.assert_close(layer_weights("linear", features=features), linear_weights(2))
    spread = layer_weights("feature_spread", features=features)
    torch.testing.assert_close(spread, normalize_weights([feature_spread(f) for f in features]))
    accuracy = layer_weights("probe_accuracy", features=features, labels=labels, l2=0.1)
    expected = normalize_weights([probe_accuracy(f, labels, l2=0.1) for f in features])
    torch.testing.assert_close(accuracy, expected)
    assert accuracy[1] > accuracy[0] and accuracy.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("depth",), {"num_layers": 2}, ValueError,
         "Expected `scheme` in ['uniform', 'linear', 'feature_spread', 'probe_accuracy'], but got 'depth'."),
        (("linear",), {}, ValueError, "Expected `num_layers` or `features` for scheme 'linear', but got neither."),
        (("probe_accuracy",), {"features": [torch.zeros(2, 3)]}, ValueError,
         "Expected `features` and `labels` for scheme 'probe_accuracy', but got None."),
        (("uniform",), {"num_layers": 0}, ValueError, "Expected `num_layers` to be a positive int, but got 0."),
        (("uniform",), {"num_layers": 3, "features": [torch.zeros(2, 3)]}, ValueError,
         "Expected `num_layers` to match len(features)=1, but got 3."),
        (("uniform",), {"num_layers": 2, "l2": 1.0}, TypeError, "Unexpected arguments ['l2'] for scheme 'uniform'."),
    ],
)
def test_layer_weights_errors(args: tuple, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        layer_weights(*args, **kwargs)

