"""Every metric of every method's maps at every layer, per probe, in a few calls per method.

A method's maps at all its layers and the combined map are upsampled once to the image size
(bilinear, ``align_corners=False``, as :func:`~saliency_monitor.metrics.map_correlation` does)
and stacked, so each rank-correlation metric (class sensitivity, meta correlation, both drifts)
is one :func:`~saliency_monitor.metrics.rank_correlation` over (layers × probes) rows, and the
pointing game one call: the values of per-layer calls (rows are independent), with a fixed
number of operator calls per method instead of a series per layer (on a GPU, launches).
Total variation reads each map at its own resolution, one call per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..metrics import pointing_hits, rank_correlation, resize_maps, structural_similarity, total_variation
from ..metrics.maps import constant_maps
from .keys import MetricKey

if TYPE_CHECKING:  # evaluation imports this module
    from .evaluation import DriftReference, EvaluationPlan

LABEL, MAX, MIN = 0, 1, 2
"""Target columns: the label class, the max- and the min-predicted class."""
READS: dict[str, tuple[tuple[str, int], ...]] = {
    "class_sensitivity": (("plain", MAX), ("plain", MIN)),
    "meta_class_sensitivity": (("meta", MAX), ("meta", MIN)),
    "meta_correlation": (("plain", LABEL), ("meta", LABEL)),
    "drift": (("plain", LABEL),),  # and the previous map: :func:`_drift`
    "drift_from_start": (("plain", LABEL),),  # and the fit-start map: :func:`_drift`
    "total_variation": (("plain", LABEL),),
    "pointing_game": (("plain", LABEL),),
    "relevance_ssim": (("plain", LABEL),),  # and its source's
}
"""The maps (plain or meta, target column) each metric reads: a constant one makes it NaN."""
Table = Mapping[str, Mapping[str, Mapping[str, Tensor]]]
"""``table[kind][method][layer]``, kind ``"plain"`` or ``"meta"``."""


@dataclass(frozen=True)
class Unusable:
    """The maps that give no value: ``bad`` (N,) a probe's map holds inf/NaN, ``constant`` (N, T)
    a target's map is constant (:mod:`.degenerate`)."""

    bad: Table
    constant: Table

    def mask(self, metric: str, method: str, layers: Sequence[str], source: str | None = None) -> Tensor:
        """(L, N) bool: the probes whose ``metric`` at each layer reads an unusable map
        (:data:`READS`; ``source``: the method a refinement's SSIM compares with)."""
        kinds = ("plain", "meta") if metric.startswith("meta_") else ("plain",)
        reads = [*READS[metric], *((("plain", LABEL, source),) if source else ())]
        masks = [torch.stack([self.bad[kind][method][layer] for layer in layers]) for kind in kinds]
        for kind, column, *other in reads:
            by = other[0] if other else method
            masks.append(torch.stack([self.constant[kind][by][layer][:, column] for layer in layers]))
        return torch.stack(masks).any(0)


def per_probe_values(
    plain: Mapping[str, Mapping[str, Tensor]], meta: Mapping[str, Mapping[str, Tensor]] | None, targets: Tensor,
    masks: Tensor | None, references: Mapping[str, DriftReference], plan: EvaluationPlan, size: tuple[int, int],
    unusable: Unusable,
) -> dict[MetricKey, Tensor]:
    """(N,) float64 on the CPU per probe for every metric of every method's maps (N, T, h, w) at every
    layer, NaN where it reads an ``unusable`` map; ``references``: the earlier label maps each drift
    metric compares against."""
    values: dict[MetricKey, Tensor] = {}
    for method, per_layer in plain.items():
        layers = list(per_layer)
        maps = _at_size(per_layer, layers, size)  # (L, N, T, H, W)
        found = {"class_sensitivity": _rho(maps[:, :, MAX], maps[:, :, MIN])}
        if meta is not None:
            meta_maps = _at_size(meta[method], layers, size)
            found["meta_class_sensitivity"] = _rho(meta_maps[:, :, MAX], meta_maps[:, :, MIN])
            found["meta_correlation"] = _rho(maps[:, :, LABEL], meta_maps[:, :, LABEL])
        for metric, reference in references.items():
            native = [per_layer[layer].shape[:1] + per_layer[layer].shape[2:] for layer in layers]
            found[metric] = _drift(maps[:, :, LABEL], native, targets, reference.maps.get(method, {}), layers,
                                   reference.targets, size)
        found["total_variation"] = torch.stack([total_variation(per_layer[layer][:, LABEL]) for layer in layers])
        if masks is not None:
            count = len(layers)
            hits = pointing_hits(maps[:, :, LABEL].flatten(0, 1), masks.repeat(count, 1, 1), plan.pointing_tolerance)
            found["pointing_game"] = torch.where(masks.flatten(1).any(1), hits.view(count, -1).double(), math.nan)
        for metric, rows in found.items():  # to the host once per method and metric
            usable = torch.where(unusable.mask(metric, method, layers), math.nan, rows.double()).cpu()
            values.update({MetricKey(None, metric, method, layer): row for layer, row in zip(layers, usable.unbind())})
    for refining in plan.methods:
        if refining.refines is not None:  # how much the refinement reshaped its source's maps
            layers = list(plain[refining.name])
            similarity = torch.stack([structural_similarity(
                resize_maps(plain[refining.refines][layer][:, LABEL], size),
                resize_maps(plain[refining.name][layer][:, LABEL], size)) for layer in layers])
            mask = unusable.mask("relevance_ssim", refining.name, layers, source=refining.refines)
            usable = torch.where(mask, math.nan, similarity.double()).cpu()
            values.update({MetricKey(None, "relevance_ssim", refining.name, layer): row
                           for layer, row in zip(layers, usable.unbind())})
    return values


def _at_size(per_layer: Mapping[str, Tensor], layers: Sequence[str], size: tuple[int, int]) -> Tensor:
    """(L, N, T, H, W): each layer's (N, T, h, w) maps upsampled to ``size``, stacked."""
    return torch.stack([resize_maps(per_layer[layer], size) for layer in layers])


def _rho(a: Tensor, b: Tensor) -> Tensor:
    """(L, N) Spearman ρ of matching (L, N, H, W) maps."""
    return rank_correlation(a.flatten(0, 1), b.flatten(0, 1)).view(a.shape[:2])


def _drift(
    now: Tensor, native: Sequence[torch.Size], targets: Tensor, before: Mapping[str, Tensor], layers: Sequence[str],
    before_targets: Tensor, size: tuple[int, int],
) -> Tensor:
    """(L, N) ρ(label map now, the reference's map ``before[layer]``), both at ``size``; NaN where the
    reference has no such map (or one of another shape than ``native``), another label class, or a
    constant or non-finite map. ``now`` (L, N, H, W) at ``size``; references live on the CPU."""
    out = torch.full(now.shape[:2], math.nan, dtype=torch.float64, device=now.device)
    rows = [i for i, layer in enumerate(layers) if layer in before and before[layer].shape == native[i]]
    if not rows:
        return out
    earlier = [before[layers[i]].to(now.device) for i in rows]
    usable = torch.stack([~constant_maps(maps) & maps.flatten(1).isfinite().all(1) for maps in earlier])
    same_class = before_targets[:, LABEL].to(targets.device) == targets[:, LABEL]
    rho = _rho(now[rows], torch.stack([resize_maps(maps, size) for maps in earlier]))
    out[rows] = torch.where(same_class & usable, rho.double(), math.nan)
    return out
