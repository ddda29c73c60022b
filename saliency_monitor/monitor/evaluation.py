"""One evaluation of a probe set: the per-probe numbers the monitor logs.

For every probe image the maps of three classes are computed, plain and (optionally) meta,
with every method at every layer and combined across layers (§4.2):

- the *label* class (multilabel: the true class with the highest score),
- the *max*- and *min*-predicted classes.

From them, per probe (paper sections in brackets):

=========================  =============================================================
class_sensitivity          ρ(map of max class, map of min class) (§4.3; near 0 is good)
meta_class_sensitivity     the same with meta maps (§4.4, Fig. 7)
meta_correlation           ρ(label map, its meta map) (supp. D; lower on unseen images)
drift                      ρ(label map now, label map at the previous evaluation)
drift_from_start           ρ(label map now, label map at the fit's first evaluation:
                           the baseline, e.g. the pretrained model when fine-tuning)
total_variation            noise of the label map (Smooth Deep Saliency's TV)
pointing_game              1 if the label map's maximum hits the class region (supp. A)
relevance_ssim             methods that refine another's maps (Salient Relevance): SSIM of
                           the label class's source map and refined map (Beyond Saliency)
=========================  =============================================================

Both drifts have no key at the evaluation that sets their reference (the fit's first):
``drift_from_start`` there would be 1 by definition, a point that tells nothing and squeezes the
chart's scale, so its curve starts at the first real comparison (where it equals ``drift``).

ρ is Spearman's rank correlation of maps upsampled bilinearly to the image size. A map
constant up to float rounding has no ρ, TV or maximum: the metrics that read it are NaN, it is
left out of its combined map, and a layer constant for every probe is *degenerate*
(:mod:`.degenerate`). No Lightning, no logging: a model, probes and a plan in, tensors out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NewType

import torch
from torch import Tensor, nn

from ..engine.compute import SaliencyMaps, SaliencyOptions, map_each, saliency_maps
from ..engine.methods import Method, with_sources
from ..engine.model_io import model_logits
from ..engine.smoothing import smoothing
from ..engine.task import class_losses, class_probabilities
from ..metrics import (
    fixed_weights,
    mean_stderr,
)
from .degenerate import Flags, combine_informative, constant_flags, degenerate_layers, left_out
from .keys import COMBINED, MetricKey
from .probe_metrics import LABEL, Unusable, per_probe_values
from .probes import ProbeBatch, label_max_min_targets, probe_chunks

METRICS = (
    "class_sensitivity",
    "meta_class_sensitivity",
    "meta_correlation",
    "drift",
    "drift_from_start",
    "total_variation",
    "pointing_game",
    "relevance_ssim",
)
LabelMaps = NewType("LabelMaps", dict[str, dict[str, Tensor]])
"""``maps[method][layer]`` -> (N, h, w) float32 on the CPU: the label class only, one map per
probe; ``layer`` includes ``"combined"``. (The engine's ``SaliencyMaps`` are (B, T, h, w).)"""


@dataclass(frozen=True)
class EvaluationPlan:
    """What every evaluation of a fit computes, settled once at fit start."""

    saliency: SaliencyOptions
    """The plain maps' options: resolved layers and task, no meta step; its methods are the
    logged ones plus the methods they refine (computed for their metrics, not logged)."""
    methods: tuple[Method, ...]
    """The logged methods."""
    meta_lr: float | None = None
    """None: no meta maps (the meta metrics are left out)."""
    combine_weights: str = "uniform"
    combine_mode: str = "sum"
    pointing_tolerance: float = 15.0
    batch_size: int = 16
    """Probes per engine call (bounds memory)."""

    @classmethod
    def of(
        cls, saliency: SaliencyOptions, *, meta_lr: float | None = None, combine_weights: str = "uniform",
        combine_mode: str = "sum", pointing_tolerance: float = 15.0, batch_size: int = 16,
    ) -> EvaluationPlan:
        """The plan for checked engine options whose layers and task are resolved."""
        computed = replace(saliency, methods=with_sources(saliency.methods), meta_lr=None)
        return cls(computed, saliency.methods, meta_lr, combine_weights, combine_mode, pointing_tolerance, batch_size)

    @property
    def layers(self) -> tuple[str, ...]:
        assert self.saliency.layers is not None, "a plan's layers are resolved at fit start"
        return self.saliency.layers

    @property
    def task(self) -> str:
        return self.saliency.task


@dataclass(frozen=True)
class DriftReference:
    """What drift compares against: the label maps and classes of an earlier evaluation."""

    maps: LabelMaps
    targets: Tensor
    """(N, 3) int64 targets of that evaluation (column 0: the label class)."""


@dataclass(frozen=True)
class SplitEvaluation:
    values: dict[MetricKey, Tensor]
    """(N,) float64 per probe for each (metric, method, layer) (keys without a split); NaN where
    undefined, e.g. where the metric reads a constant map (:mod:`.degenerate`)."""
    maps: LabelMaps
    """Plain maps of the label class."""
    meta_maps: LabelMaps | None
    """Meta maps of the label class (None without meta)."""
    targets: Tensor
    """(N, 3) int64: label, max- and min-predicted class."""
    probabilities: Tensor
    """(N, C) float32: softmax (multiclass) or sigmoid (multilabel) of the logits."""
    losses: Tensor
    """(N,) float64: each probe's label-class loss, the meta step's own loss (softmax CE or BCE
    toward 1, eval mode; :func:`~saliency_monitor.engine.task.class_losses`)."""
    nonfinite: dict[str, int] = field(default_factory=dict)
    """``f"{plain|meta}/{method}/{layer}"`` -> probes whose maps held inf/NaN (a meta step too
    large for the model overflows float32): their maps are NaN and their metrics NaN."""
    prediction_difference: Tensor | None = None
    """(N,) with ``smooth="forward"``: mean over classes of |p_smoothed − p| per probe."""
    constant: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """``constant[method][layer]`` (N,) bool, every layer but ``"combined"``: the probe's plain maps
    are constant (up to float rounding) for all three targets. Per probe, so that a gather of
    shards keeps it exact; :attr:`degenerate` derives from it."""

    @property
    def reference(self) -> DriftReference:
        return DriftReference(self.maps, self.targets)

    @property
    def degenerate(self) -> dict[str, dict[str, str]]:
        """``{method: {layer: "1×1" | "constant"}}``: the layers whose plain maps are constant for
        every probe and target. ``values`` holds their keys, all NaN (every rank of a gather has
        the same keys); :attr:`logged_values` leaves them out."""
        return degenerate_layers(self.constant, self.maps)

    @property
    def logged_values(self) -> dict[MetricKey, Tensor]:
        """``values`` without the keys of degenerate layers, nor of a combined map none of whose
        layers is left (no empty charts)."""
        skip = left_out(self.degenerate, self.constant)
        return {key: value for key, value in self.values.items() if (key.method, key.layer) not in skip}


@dataclass
class _Chunks:
    """The engine's outputs for consecutive chunks of probes, concatenated at the end."""

    plain: list[SaliencyMaps] = field(default_factory=list)
    meta: list[SaliencyMaps] = field(default_factory=list)
    targets: list[Tensor] = field(default_factory=list)
    probabilities: list[Tensor] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    differences: list[Tensor] = field(default_factory=list)


def evaluate_probes(
    model: nn.Module,
    probes: ProbeBatch,
    plan: EvaluationPlan,
    previous: DriftReference | None = None,
    progress: Callable[[int], None] | None = None,
    start: DriftReference | None = None,
) -> SplitEvaluation:
    """Maps and per-probe metrics of ``probes`` (see the module docstring).

    The model runs in eval mode and comes back untouched (``compute_saliency``'s
    guarantees). ``previous`` (the last evaluation of the same probes) gives ``drift``,
    ``start`` (their fit-start evaluation, :func:`start_reference`) ``drift_from_start``;
    without one, its metric has no key. A probe whose label class differs from the
    reference's (multilabel), or whose reference map is constant or non-finite, gets NaN.
    ``progress`` is called with the number of probes done after each chunk of ``plan.batch_size``.
    """
    size = (probes.images.shape[-2], probes.images.shape[-1])
    chunks = _compute_chunks(model, probes, plan, progress)
    targets = torch.cat(chunks.targets)
    plain, plain_bad = _blank_nonfinite(_cat(chunks.plain))
    plain_constant = constant_flags(plain)
    plain = _with_combined(plain, plain_constant, plan, size)
    meta, meta_bad = _blank_nonfinite(_cat(chunks.meta)) if chunks.meta else (None, {})
    meta_constant = constant_flags(meta) if meta is not None else {}
    meta = _with_combined(meta, meta_constant, plan, size) if meta is not None else None
    masks = _label_masks(probes, targets, chunks.probabilities[0].shape[1])
    references = {metric: ref for metric, ref in (("drift", previous), ("drift_from_start", start)) if ref is not None}
    # a probe whose maps overflowed or are constant has no value, whatever the metric made of them
    unusable = Unusable({"plain": plain_bad, "meta": meta_bad}, {"plain": plain_constant, "meta": meta_constant})
    values = per_probe_values(plain, meta, targets, masks, references, plan, size, unusable)
    logged = {m.name for m in plan.methods}  # the methods computed only for a refinement's metric go
    # everything above ran on the model's device; the results come to the host once, here
    nonfinite = {
        f"{kind}/{method}/{layer}": int(bad.sum())
        for kind, table in (("plain", plain_bad), ("meta", meta_bad))
        for method, per_layer in map_each(table, Tensor.cpu).items() if method in logged
        for layer, bad in per_layer.items()
        if layer != COMBINED and bad.any()
    }
    return SplitEvaluation(
        values={key: value for key, value in values.items() if key.method in logged},
        maps=_label_only(plain, logged),
        meta_maps=_label_only(meta, logged) if meta is not None else None,
        targets=targets.cpu(),
        probabilities=torch.cat(chunks.probabilities).cpu(),
        losses=torch.cat(chunks.losses).cpu(),
        nonfinite=nonfinite,
        prediction_difference=torch.cat(chunks.differences).double().cpu() if chunks.differences else None,
        constant={
            method: {layer: flags.all(1).cpu() for layer, flags in per_layer.items() if layer != COMBINED}
            for method, per_layer in plain_constant.items() if method in logged
        },
    )


def _compute_chunks(
    model: nn.Module, probes: ProbeBatch, plan: EvaluationPlan, progress: Callable[[int], None] | None
) -> _Chunks:
    """Targets, probabilities, plain and meta maps of every chunk of ``plan.batch_size`` probes."""
    options = plan.saliency
    meta_options = None if plan.meta_lr is None else replace(options, meta_lr=plan.meta_lr)
    chunks = _Chunks()
    for chunk, images in probe_chunks(model, probes, plan.batch_size):
        logits = model_logits(model, images, options.output_to_logits)
        targets, probabilities = label_max_min_targets(logits, chunk, plan.task)
        chunks.losses.append(class_losses(logits, targets[:, LABEL], plan.task).double())
        if options.smooth == "forward":  # it changes the model's predictions: measure by how much
            with smoothing(model, "forward"):
                smoothed = model_logits(model, images, options.output_to_logits)
            chunks.differences.append((class_probabilities(smoothed, plan.task) - probabilities).abs().mean(1))
        chunks.plain.append(_float(saliency_maps(model, images, targets, options)))
        if meta_options is not None:
            chunks.meta.append(_float(saliency_maps(model, images, targets, meta_options)))
        chunks.targets.append(targets)
        chunks.probabilities.append(probabilities)
        if progress is not None:
            progress(len(chunk))
    return chunks


def summarize(values: dict[MetricKey, Tensor]) -> dict[MetricKey, tuple[float, float, int]]:
    """(mean, standard error, count) over the probes of each key, NaN probes left out."""
    return {key: mean_stderr(per_probe) for key, per_probe in values.items()}


# --------------------------------------------------------------------------- helpers


def _float(maps: SaliencyMaps) -> SaliencyMaps:
    return map_each(maps, lambda t: t.float())


def _cat(parts: Sequence[SaliencyMaps]) -> SaliencyMaps:
    return {m: {layer: torch.cat([p[m][layer] for p in parts]) for layer in parts[0][m]} for m in parts[0]}


def _blank_nonfinite(maps: SaliencyMaps) -> tuple[SaliencyMaps, dict[str, dict[str, Tensor]]]:
    """Maps (N, T, h, w) with every probe that has a non-finite value set to NaN, and the
    (N,) bool of those probes per method and layer (``"combined"``: any layer)."""
    bad = map_each(maps, lambda t: ~t.isfinite().flatten(1).all(1))
    blanked = {
        m: {layer: torch.where(bad[m][layer][:, None, None, None], math.nan, t) for layer, t in per_layer.items()}
        for m, per_layer in maps.items()
    }
    for per_layer in bad.values():
        per_layer[COMBINED] = torch.stack(list(per_layer.values())).any(0)
    return blanked, bad


def _with_combined(maps: SaliencyMaps, constant: Flags, plan: EvaluationPlan, size: tuple[int, int]) -> SaliencyMaps:
    """Adds ``maps[method]["combined"]`` (N, T, H, W) at the image size, of each probe's and target's
    non-constant layers (NaN where none is left)."""
    weights = fixed_weights(plan.combine_weights, len(plan.layers)).tolist()
    mode = plan.combine_mode
    return {
        method: {**per_layer, COMBINED: combine_informative(per_layer, constant[method], weights, size, mode)}
        for method, per_layer in maps.items()
    }


def _label_only(maps: SaliencyMaps, methods: set[str]) -> LabelMaps:
    """The label class's maps of ``methods``, on the CPU."""
    kept = {method: per_layer for method, per_layer in maps.items() if method in methods}
    return LabelMaps(map_each(kept, lambda t: t[:, LABEL].contiguous().cpu()))


def _label_masks(probes: ProbeBatch, targets: Tensor, num_classes: int) -> Tensor | None:
    """(N, H, W) bool region of each probe's label class, or None if the probes carry none."""
    masks = probes.class_masks(num_classes)
    if masks is None:
        return None
    return masks.to(targets.device)[torch.arange(len(targets), device=targets.device), targets[:, LABEL]]


def start_reference(start: DriftReference | None, now: DriftReference) -> DriftReference:
    """What ``drift_from_start`` compares against after an evaluation ``now``: ``start`` (the fit's
    first evaluation), with the (method, layer) maps it lacks taken from ``now`` (a method or layer
    first monitored since a resume starts there). A taken map whose label class differs from
    ``start``'s (multilabel) is NaN, so that probe's value stays NaN: one label class per reference."""
    if start is None or start.targets.shape != now.targets.shape:
        return now
    same = (start.targets[:, LABEL] == now.targets[:, LABEL])[:, None, None]
    maps = {method: dict(per_layer) for method, per_layer in start.maps.items()}
    for method, per_layer in now.maps.items():
        kept = maps.setdefault(method, {})
        for layer, taken in per_layer.items():
            if layer not in kept:
                kept[layer] = torch.where(same, taken, math.nan)
    return DriftReference(LabelMaps(maps), start.targets)
