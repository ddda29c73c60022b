"""Combining one method's maps across layers (Rebuffi et al., "There and Back Again", §4.2).

Each layer's map m_j is upsampled (bilinear) to a common size and min-max normalised to
[0, 1]; the layers get weights γ_j ≥ 0 normalised to Σ_j γ_j = 1, and the combined map is
Σ_j γ_j m_j (``"sum"``) or Π_j m_j^γ_j (``"product"``, best in the paper's supp. Table 6).

Weights that need nothing but the number of layers J (ordered shallow to deep, j = 1..J):
``uniform`` γ_j = 1/J and ``linear`` γ_j ∝ j/J. The data-driven weightings of §4.2 (feature
spread, linear-probe accuracy) are research tools: :mod:`saliency_monitor.analysis.layer_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._checks import check_int, describe, normalize_size
from .maps import minmax_normalize, resize_maps

FIXED_WEIGHTINGS = ("uniform", "linear")
"""Layer weightings that need no data: usable by the monitor at every evaluation."""
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


def fixed_weights(scheme: str, num_layers: int) -> Tensor:
    """γ (J,) float64 of a :data:`FIXED_WEIGHTINGS` scheme."""
    if scheme not in FIXED_WEIGHTINGS:
        raise ValueError(f"Expected `scheme` in {list(FIXED_WEIGHTINGS)}, but got {scheme!r}.")
    return uniform_weights(num_layers) if scheme == "uniform" else linear_weights(num_layers)


def _check_num_layers(num_layers: object) -> int:
    return check_int(num_layers, "num_layers", minimum=1)


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
    target = normalize_size(size) or (max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors))
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    terms = []
    for g, m in zip(gamma.tolist(), tensors):
        normalised = minmax_normalize(resize_maps(m.to(dtype), target))
        terms.append(g * normalised if mode == "sum" else normalised.pow(g))
    combined = terms[0]
    for term in terms[1:]:
        combined = combined + term if mode == "sum" else combined * term
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
                f"Expected maps[{label!r}] to be a floating-point (..., h, w) tensor, but got {describe(t)}."
            )
        if t.shape[:-2] != tensors[0].shape[:-2] or t.device != tensors[0].device:
            raise ValueError(
                f"Expected every layer's maps to share leading dims and device, but maps[{label!r}] has "
                f"shape {tuple(t.shape)} on {t.device} and the first {tuple(tensors[0].shape)} on {tensors[0].device}."
            )
    return names, [t.detach() for t in tensors]
