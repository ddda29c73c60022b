"""Combining one method's maps across layers (Rebuffi et al., "There and Back Again", §4.2).

Each layer's map m_j is upsampled (bilinear) to a common size and min-max normalised to
[0, 1]; the layers get weights γ_j ≥ 0 normalised to Σ_j γ_j = 1, and the combined map is
Σ_j γ_j m_j (``"sum"``) or Π_j m_j^γ_j (``"product"``, best in the paper's supp. Table 6).

Weights, for J layers ordered shallow to deep (j = 1..J):

==================  ==============================================================
``uniform``         γ_j = 1/J
``linear``          γ_j ∝ j/J
``feature_spread``  γ_j ∝ :func:`feature_spread` of the layer's activations
``probe_accuracy``  γ_j ∝ :func:`probe_accuracy` of a linear probe on them
==================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .metrics import _describe, _normalize_size, minmax_normalize, resize_maps

__all__ = [
    "COMBINATIONS",
    "WEIGHTINGS",
    "combine_maps",
    "feature_spread",
    "layer_weights",
    "linear_weights",
    "minmax_normalize",
    "normalize_weights",
    "probe_accuracy",
    "probe_split",
    "uniform_weights",
]

WEIGHTINGS = ("uniform", "linear", "feature_spread", "probe_accuracy")
COMBINATIONS = ("sum", "product")


# --------------------------------------------------------------------------- weights


def normalize_weights(weights: Tensor | Sequence[float]) -> Tensor:
    """(J,) finite, non-negative weights with a positive sum -> float64 (J,) summing to 1."""
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"Expected `weights` to be a sequence of numbers, but got {weights!r}.") from error
    if w.ndim != 1 or len(w) == 0:
        raise ValueError(f"Expected `weights` to be a non-empty 1-D sequence, but got shape {tuple(w.shape)}.")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"Expected `weights` to be finite, >= 0 and not all 0, but got {w.tolist()}."
        )
    return w / w.sum()


def uniform_weights(num_layers: int) -> Tensor:
    """γ_j = 1/J."""
    return normalize_weights(torch.ones(_check_num_layers(num_layers), dtype=torch.float64))


def linear_weights(num_layers: int) -> Tensor:
    """γ_j = j/J for j = 1..J (shallowest first), normalised: 2j / (J(J+1))."""
    return normalize_weights(torch.arange(1, _check_num_layers(num_layers) + 1, dtype=torch.float64))


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
    **probe_kwargs: object,
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
    if scheme in ("uniform", "linear"):
        if num_layers is None:
            raise ValueError(f"Expected `num_layers` or `features` for scheme {scheme!r}, but got neither.")
        return uniform_weights(num_layers) if scheme == "uniform" else linear_weights(num_layers)
    if features is None or (scheme == "probe_accuracy" and labels is None):
        needs = "`features` and `labels`" if scheme == "probe_accuracy" else "`features`"
        raise ValueError(f"Expected {needs} for scheme {scheme!r}, but got None.")
    _check_num_layers(len(features))
    if scheme == "feature_spread":
        return normalize_weights(torch.stack([feature_spread(f) for f in features]))
    return normalize_weights(torch.stack([probe_accuracy(f, labels, **probe_kwargs) for f in features]))


def _check_num_layers(num_layers: object) -> int:
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"Expected `num_layers` to be a positive int, but got {num_layers!r}.")
    return num_layers


def _pool(features: Tensor, name: str) -> Tensor:
    if not isinstance(features, Tensor) or not features.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got {_describe(features)}.")
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
            f"{_describe(labels)}."
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
        raise ValueError(f"Expected `fit` to be a ({count},) bool tensor, but got {_describe(fit)}.")
    fit = fit.cpu()
    if fit.all() or not fit.any():
        raise ValueError(
            f"Expected the split to leave images in both the fit and the held-out part, but got "
            f"{int(fit.sum())} of {count} in the fit part (pass `fit`, or give a class 2+ images)."
        )
    return fit


# --------------------------------------------------------------------------- combination


def combine_maps(
    maps: Sequence[Tensor] | Mapping[str, Tensor],
    weights: Tensor | Sequence[float] | Mapping[str, float] | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    mode: str = "sum",
) -> Tensor:
    """Combine per-layer maps into one (§4.2).

    Every map is upsampled bilinearly (``align_corners=False``) to ``size``, min-max
    normalised per map (:func:`minmax_normalize`), and combined with the normalised
    weights γ: ``"sum"`` gives Σ_j γ_j m_j, ``"product"`` gives Π_j m_j^γ_j (0^0 = 1: a
    layer of weight 0 is ignored). Both stay in [0, 1].

    Args:
        maps: J tensors (..., h_j, w_j) with the same leading dims (e.g. ``maps[method]``
            of :func:`~saliency_monitor.compute_saliency`), shallowest first.
        weights: (J,) non-negative, normalised here (see :func:`layer_weights`); a mapping
            when ``maps`` is one (same keys); None = uniform.
        size: common (h, w) or int; None = the largest h and w among the maps.
        mode: ``"sum"`` or ``"product"``.

    Returns:
        (..., h, w) in the maps' promoted dtype.
    """
    names, tensors = _as_layer_list(maps)
    if mode not in COMBINATIONS:
        raise ValueError(f"Expected `mode` in {list(COMBINATIONS)}, but got {mode!r}.")
    if weights is None:
        gamma = uniform_weights(len(tensors))
    else:
        if isinstance(weights, Mapping):
            if names is None or set(weights) != set(names):
                raise ValueError(
                    f"Expected `weights` keyed by the layers {names}, but got keys {list(weights)}."
                )
            weights = [weights[name] for name in names]
        gamma = normalize_weights(weights)
        if len(gamma) != len(tensors):
            raise ValueError(f"Expected {len(tensors)} weights (one per layer), but got {len(gamma)}.")
    target = _normalize_size(size) or (max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors))
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    combined = None
    for g, m in zip(gamma.tolist(), tensors):
        m = minmax_normalize(resize_maps(m.to(dtype), target))
        term = g * m if mode == "sum" else m.pow(g)
        combined = term if combined is None else (combined + term if mode == "sum" else combined * term)
    return combined


def _as_layer_list(maps: object) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(maps, Mapping):
        names, tensors = list(maps), list(maps.values())
    elif isinstance(maps, Sequence) and not isinstance(maps, (str, bytes)):
        names, tensors = None, list(maps)
    else:
        raise TypeError(
            f"Expected `maps` to be a sequence or mapping of tensors (one per layer), but got {type(maps).__name__}."
        )
    if not tensors:
        raise ValueError("Expected `maps` to hold at least one layer's maps, but got none.")
    for i, t in enumerate(tensors):
        label = names[i] if names else i
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise TypeError(
                f"Expected maps[{label!r}] to be a floating-point (..., h, w) tensor, but got {_describe(t)}."
            )
        if t.shape[:-2] != tensors[0].shape[:-2] or t.device != tensors[0].device:
            raise ValueError(
                f"Expected every layer's maps to share leading dims and device, but maps[{label!r}] has "
                f"shape {tuple(t.shape)} on {t.device} and the first {tuple(tensors[0].shape)} on {tensors[0].device}."
            )
    return names, [t.detach() for t in tensors]

