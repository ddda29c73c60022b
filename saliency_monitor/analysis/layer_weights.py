"""Data-driven layer weights (Rebuffi et al., "There and Back Again", §4.2): research tools.

==================  ==============================================================
``uniform``         γ_j = 1/J
``linear``          γ_j ∝ j/J
``feature_spread``  γ_j ∝ :func:`feature_spread` of the layer's activations
``probe_accuracy``  γ_j ∝ :func:`probe_accuracy` of a linear probe on them
==================  ==============================================================

The monitor uses only the first two (:mod:`saliency_monitor.metrics.combination`); the others
need labelled features and serve the reproduction harness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int, describe
from ..metrics.combination import FIXED_WEIGHTINGS, fixed_weights, normalize_weights

WEIGHTINGS = (*FIXED_WEIGHTINGS, "feature_spread", "probe_accuracy")


def feature_spread(features: Tensor) -> Tensor:
    """§4.2 feature spread of one layer: how much images' mean features differ.

    x̄^i = spatial *mean* of image i's activation (K,) (the paper writes a sum; the mean
    keeps layers of different resolution comparable), x̄^μ = mean_i x̄^i, and

        γ = (1/M) Σ_i (1/K) Σ_k |x̄^i_k − x̄^μ_k|

    (L1 over channels, averaged over channels so layers of different width compare). The
    paper's x̄^μ = mean_i |x̄^i| is the same for non-negative (post-ReLU) features.

    Args:
        features: (M, K, H, W) activations of M >= 2 images (sampled across classes), or
            (M, K) already pooled.

    Returns:
        Scalar float64 tensor, >= 0.
    """
    pooled = _pool(features, "features")
    return (pooled - pooled.mean(dim=0)).abs().mean()


def probe_split(labels: Tensor, seed: int = 0) -> Tensor:
    """Default fit/held-out split for :func:`probe_accuracy`: (M,) bool, True = fit.

    Multiclass labels (M,): stratified: within each class, images in a seeded random order
    alternate fit, held-out, fit, ... (a class with one image is fit only). Multilabel
    labels (M, C): a seeded random half, the larger half (⌈M/2⌉) fitting.
    """
    labels = torch.as_tensor(labels).cpu()
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=generator)
    if labels.ndim == 2:
        fit = torch.zeros(len(labels), dtype=torch.bool)
        fit[perm[: math.ceil(len(labels) / 2)]] = True
        return fit
    order = perm[torch.argsort(labels[perm], stable=True)]
    grouped = labels[order]
    position_in_class = torch.arange(len(grouped)) - torch.searchsorted(grouped, grouped)
    fit = torch.empty(len(labels), dtype=torch.bool)
    fit[order] = position_in_class % 2 == 0
    return fit


def probe_accuracy(
    features: Tensor,
    labels: Tensor,
    *,
    fit: Tensor | None = None,
    num_classes: int | None = None,
    l2: float = 1e-2,
    seed: int = 0,
) -> Tensor:
    """§4.2 classification accuracy of a linear probe on one layer's features, held out.

    Procedure (exact and deterministic; the seed only picks the split):

    1. Pool: spatial mean of each image's activation -> (M, K).
    2. Split: ``fit`` (M,) bool, True = fit split, False = held out; default
       :func:`probe_split` (``seed``). Both parts must be non-empty.
    3. Standardise each feature with the fit split's mean and std (std < 1e-6 -> 1).
    4. Fit a ridge (least-squares) linear classifier on the fit split, on CPU in float64:
       targets Y are one-hot (multiclass) or the multi-hot labels (multilabel), and
       (W, b) = argmin (1/M_fit) ‖X W + b − Y‖² + l2 ‖W‖², solved in closed form
       (bias unpenalised; b = mean of Y since X is centred). One optimum, no iterations.
    5. Score the held-out images with z = X W + b: multiclass: accuracy of argmax z (ties
       -> lowest class); multilabel: per-class binary accuracy [z_c > 1/2] == y_c, averaged
       over held-out images and classes (the paper's δ, class by class).

    Args:
        features: (M, K, H, W) or pooled (M, K).
        labels: (M,) class indices (multiclass) or (M, C) multi-hot 0/1 (multilabel).
        fit: optional explicit split.
        num_classes: multiclass C (default: max label + 1).
        l2: ridge penalty, > 0 (features are standardised, so it is scale free).
        seed: seed of the default split.

    Returns:
        Scalar float64 tensor in [0, 1].
    """
    x = _pool(features, "features").cpu()
    labels, multilabel, classes = _check_labels(labels, len(x), num_classes)
    fit = _check_fit(probe_split(labels, seed) if fit is None else fit, len(x))
    if not isinstance(l2, (int, float)) or isinstance(l2, bool) or not l2 > 0:
        raise ValueError(f"Expected `l2` to be a number > 0, but got {l2!r}.")

    mean, std = x[fit].mean(dim=0), x[fit].std(dim=0, unbiased=False)
    x = (x - mean) / torch.where(std < 1e-6, torch.ones_like(std), std)
    y = labels if multilabel else torch.nn.functional.one_hot(labels, classes).double()
    x_fit, y_fit = x[fit], y[fit]
    bias = y_fit.mean(dim=0)
    ridge = len(x_fit) * l2
    if x.shape[1] <= len(x_fit):  # primal: (XᵀX + λI) W = Xᵀ(Y − b)
        gram = x_fit.T @ x_fit + ridge * torch.eye(x.shape[1], dtype=torch.float64)
        weight = torch.linalg.solve(gram, x_fit.T @ (y_fit - bias))
    else:  # dual: W = Xᵀ (XXᵀ + λI)⁻¹ (Y − b)
        gram = x_fit @ x_fit.T + ridge * torch.eye(len(x_fit), dtype=torch.float64)
        weight = x_fit.T @ torch.linalg.solve(gram, y_fit - bias)
    scores = x[~fit] @ weight + bias
    if multilabel:
        return ((scores > 0.5).double() == labels[~fit]).double().mean()
    return (scores.argmax(dim=1) == labels[~fit]).double().mean()


def layer_weights(
    scheme: str,
    *,
    num_layers: int | None = None,
    features: Sequence[Tensor] | None = None,
    labels: Tensor | None = None,
    **probe_kwargs: Any,
) -> Tensor:
    """Normalised layer weights γ (J,) float64 by one of :data:`WEIGHTINGS`.

    ``uniform`` and ``linear`` need ``num_layers`` (or ``features``, one tensor per layer,
    shallowest first); ``feature_spread`` needs ``features``; ``probe_accuracy`` needs
    ``features`` and ``labels`` (``probe_kwargs`` go to :func:`probe_accuracy`).
    """
    if scheme not in WEIGHTINGS:
        raise ValueError(f"Expected `scheme` in {list(WEIGHTINGS)}, but got {scheme!r}.")
    if features is not None:
        if isinstance(features, Tensor) or not isinstance(features, Sequence):
            raise TypeError(
                f"Expected `features` to be a sequence of tensors (one per layer), but got {type(features).__name__}."
            )
        if num_layers is not None and num_layers != len(features):
            raise ValueError(
                f"Expected `num_layers` to match len(features)={len(features)}, but got {num_layers!r}."
            )
        num_layers = len(features)
    if probe_kwargs and scheme != "probe_accuracy":
        raise TypeError(f"Unexpected arguments {sorted(probe_kwargs)} for scheme {scheme!r}.")
    if scheme in FIXED_WEIGHTINGS:
        if num_layers is None:
            raise ValueError(f"Expected `num_layers` or `features` for scheme {scheme!r}, but got neither.")
        return fixed_weights(scheme, num_layers)
    if scheme == "feature_spread" and features is not None:
        check_int(len(features), "num_layers", minimum=1)
        return normalize_weights(torch.stack([feature_spread(f) for f in features]))
    if scheme == "probe_accuracy" and features is not None and labels is not None:
        check_int(len(features), "num_layers", minimum=1)
        return normalize_weights(torch.stack([probe_accuracy(f, labels, **probe_kwargs) for f in features]))
    needs = "`features` and `labels`" if scheme == "probe_accuracy" else "`features`"
    raise ValueError(f"Expected {needs} for scheme {scheme!r}, but got None.")


def _pool(features: Tensor, name: str) -> Tensor:
    if not isinstance(features, Tensor) or not features.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got {describe(features)}.")
    if features.ndim not in (2, 4) or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(
            f"Expected `{name}` of shape (M, K, H, W) or (M, K) with M >= 2 images, but got "
            f"shape {tuple(features.shape)}."
        )
    features = features.detach().double()
    return features.mean(dim=(2, 3)) if features.ndim == 4 else features


def _check_labels(labels: object, count: int, num_classes: int | None) -> tuple[Tensor, bool, int]:
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim == 2 and labels.shape[0] == count:
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError("Expected multilabel `labels` (M, C) to hold only 0 and 1, but got other values.")
        return labels.double(), True, labels.shape[1]
    if labels.ndim != 1 or labels.shape[0] != count or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"Expected `labels` to be (M,) class indices or (M, C) multi-hot with M={count}, but got "
            f"{describe(labels)}."
        )
    labels = labels.long()
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"Expected `labels` in [0, {classes}), but got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    return labels, False, classes


def _check_fit(fit: object, count: int) -> Tensor:
    if not isinstance(fit, Tensor) or fit.dtype != torch.bool or fit.shape != (count,):
        raise ValueError(f"Expected `fit` to be a ({count},) bool tensor, but got {describe(fit)}.")
    fit = fit.cpu()
    if fit.all() or not fit.any():
        raise ValueError(
            f"Expected the split to leave images in both the fit and the held-out part, but got "
            f"{int(fit.sum())} of {count} in the fit part (pass `fit`, or give a class 2+ images)."
        )
    return fit


# --------------------------------------------------------------------------- combination
