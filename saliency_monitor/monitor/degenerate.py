"""Maps that say nothing, found and left out: no silent nonsense maps.

A layer whose map is 1×1, or constant by construction (``gradient`` or ``bias:*`` after a
global average pool: every location gets the same gradient), yields float rounding that a
min-max normalisation stretches to [0, 1], then class-sensitivity and TV numbers of noise. A
map is *constant* when it varies by less than float rounding (:func:`~saliency_monitor.metrics.maps.constant_maps`):

- one probe's constant map gets NaN for every metric that reads it and is left out of that
  probe's (and target's) combined map, the other layers' weights renormalised;
- a (method, layer) whose plain maps are constant for every probe and target is *degenerate*:
  its keys are not logged, its panels not drawn, and the monitor warns once
  (:func:`degenerate_message`). The paper's own code skips such layers too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..engine.compute import SaliencyMaps
from ..engine.methods import LINEAR_AND_SELECTIVE
from ..metrics import combine_maps
from ..metrics.maps import constant_maps
from .keys import COMBINED

Flags = dict[str, dict[str, Tensor]]
"""``flags[method][layer]`` -> bool per probe (and target) that the map is constant."""
ONE_BY_ONE, CONSTANT = "1×1", "constant"
"""Why a layer is degenerate: its map is one number, or the same number at every location."""


def constant_flags(maps: SaliencyMaps) -> Flags:
    """(N, T) bool per method and layer: the map is constant; ``"combined"``: every layer's is."""
    flags = {m: {layer: constant_maps(t) for layer, t in per_layer.items()} for m, per_layer in maps.items()}
    for per_layer in flags.values():
        per_layer[COMBINED] = torch.stack(list(per_layer.values())).all(0)
    return flags


def combine_informative(
    per_layer: dict[str, Tensor], constant: dict[str, Tensor], weights: Sequence[float], size: tuple[int, int],
    mode: str,
) -> Tensor:
    """(N, T, H, W) combined map of each probe and target from its layers whose map is not constant.

    ``per_layer`` (N, T, h, w) and ``constant`` (N, T) per layer, ``weights`` one per layer in
    the same order: :func:`~saliency_monitor.metrics.combine_maps` of the kept layers with
    their weights (renormalised there to sum 1). NaN where every layer's map is constant.
    """
    names = [name for name in per_layer if name != COMBINED]
    keep = torch.stack([~constant[name] for name in names], dim=-1)  # (N, T, J)
    first = per_layer[names[0]]
    out = first.new_full((*first.shape[:-2], *size), math.nan)
    for pattern in keep.flatten(0, -2).unique(dim=0):  # usually one: every layer kept
        if not pattern.any():
            continue
        rows = (keep == pattern).all(-1)
        chosen = pattern.nonzero().flatten().tolist()
        out[rows] = combine_maps(
            [per_layer[names[j]][rows] for j in chosen], [weights[j] for j in chosen], size=size, mode=mode
        ).to(out.dtype)
    return out


def degenerate_layers(
    constant: dict[str, dict[str, Tensor]], maps: dict[str, dict[str, Tensor]]
) -> dict[str, dict[str, str]]:
    """``{method: {layer: why}}`` (why: :data:`ONE_BY_ONE` or :data:`CONSTANT`) of the layers whose
    ``constant`` (N,) holds for every probe; ``maps[method][layer]`` (N, h, w) gives the reason."""
    found: dict[str, dict[str, str]] = {}
    for method, per_layer in constant.items():
        layers = {
            layer: ONE_BY_ONE if tuple(maps[method][layer].shape[-2:]) == (1, 1) else CONSTANT
            for layer, flags in per_layer.items()
            if layer != COMBINED and len(flags) > 0 and bool(flags.all())
        }
        if layers:
            found[method] = layers
    return found


def left_out(degenerate: dict[str, dict[str, str]], layers: dict[str, dict[str, Tensor]]) -> set[tuple[str, str]]:
    """(method, layer) pairs nothing is logged for: the degenerate layers, and ``"combined"`` of a
    method all of whose ``layers`` (``{method: {layer: ...}}``) are degenerate."""
    pairs = {(method, layer) for method, per_layer in degenerate.items() for layer in per_layer}
    for method, per_layer in degenerate.items():
        if all(layer in per_layer for layer in layers.get(method, {}) if layer != COMBINED):
            pairs.add((method, COMBINED))
    return pairs


def degenerate_message(degenerate: dict[str, dict[str, str]], split: str, step: int) -> str:
    """The warning naming every degenerate (method, layer), why, and what to pass instead."""
    why = {
        ONE_BY_ONE: "its map is 1×1, one number per image: pick a layer with a spatial map (an earlier one)",
        CONSTANT: "its map is the same at every location, up to float rounding, for every probe (e.g. after a "
                  "global average pool every location gets the same gradient): pick an earlier layer, or a method "
                  f"that multiplies by the activation there (e.g. {', '.join(LINEAR_AND_SELECTIVE)})",
    }
    lines = [
        f"  - {method} at {layer!r}: {why[reason]}"
        for method, per_layer in degenerate.items() for layer, reason in per_layer.items()
    ]
    return (
        f"SaliencyMonitor: at step {step} some {split} maps carry no spatial information; they are left out of "
        "every metric, of their method's combined map and of the pictures (no keys are logged for them):\n"
        + "\n".join(lines)
    )
