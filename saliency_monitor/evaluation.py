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
total_variation            noise of the label map (Smooth Deep Saliency's TV)
pointing_game              1 if the label map's maximum hits the class region (supp. A)
relevance_ssim             ``salient_relevance`` only: SSIM(LRP map, SR map) of the label
                           class (Beyond Saliency's quantitative measure)
=========================  =============================================================

ρ is Spearman's rank correlation of maps upsampled bilinearly to the image size. Pure
math: no Lightning, no logging.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .combine import COMBINATIONS, combine_maps, layer_weights
from .layers import eval_mode
from .smooth import smoothing
from .meta import TASKS
from .metrics import (
    class_sensitivity, drift, map_correlation, pointing_hits, resize_maps, structural_similarity, total_variation,
)
from .probes import ProbeBatch
from .saliency import DEFAULT_CONTEXT_SIZE, SaliencyMaps, compute_saliency

METRICS = (
    "class_sensitivity",
    "meta_class_sensitivity",
    "meta_correlation",
    "drift",
    "total_variation",
    "pointing_game",
    "relevance_ssim",
)
COMBINED = "combined"
"""The layer name of the layer-combined map."""
LAYER_WEIGHTINGS = ("uniform", "linear")
"""Layer weightings usable without extra data (see :func:`saliency_monitor.combine.layer_weights`)."""
LABEL, MAX, MIN = 0, 1, 2
"""Target columns: the label class, the max- and the min-predicted class."""

MapsByLayer = dict[str, dict[str, Tensor]]
"""``maps[method][layer]`` -> (N, h, w) float32 on the CPU; layer includes ``"combined"``."""


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute; validated by the caller (the monitor's ``__init__``/``setup``)."""

    layers: tuple[str, ...]
    methods: tuple[str, ...]
    task: str
    meta_lr: float | None
    """None: no meta maps (the meta metrics are left out)."""
    meta_params: str = "all"
    combine_weights: str = "uniform"
    combine_mode: str = "sum"
    pointing_tolerance: float = 15.0
    batch_size: int = 16
    """Probes per ``compute_saliency`` call (memory bound)."""
    output_to_logits: Callable[[object], Tensor] | None = None
    """Maps the model's output to (B, C) logits when it is not that tensor itself."""
    smooth: str | None = None
    """Checkerboard smoothing during the saliency passes (:mod:`saliency_monitor.smooth`)."""
    lrp_composite: object = "epsilon_plus_flat"
    """LRP rules of the relevance methods (:mod:`saliency_monitor.relevance`)."""
    context_size: int = DEFAULT_CONTEXT_SIZE
    """Long edge of ``salient_relevance``'s context-aware detection."""

    @property
    def computed_methods(self) -> tuple[str, ...]:
        """``methods``, plus ``lrp`` when ``salient_relevance`` needs it for its SSIM."""
        if "salient_relevance" in self.methods and "lrp" not in self.methods:
            return (*self.methods, "lrp")
        return self.methods


@dataclass(frozen=True)
class DriftReference:
    """What drift compares against: the label maps and classes of an earlier evaluation."""

    maps: MapsByLayer
    targets: Tensor
    """(N, 3) int64 targets of that evaluation (column 0: the label class)."""


@dataclass(frozen=True)
class SplitEvaluation:
    values: dict[str, Tensor]
    """``f"{metric}/{method}/{layer}"`` -> (N,) float64 per probe; NaN where undefined."""
    maps: MapsByLayer
    """Plain maps of the label class."""
    meta_maps: MapsByLayer | None
    """Meta maps of the label class (None without meta)."""
    targets: Tensor
    """(N, 3) int64: label, max- and min-predicted class."""
    probabilities: Tensor
    """(N, C) float32: softmax (multiclass) or sigmoid (multilabel) of the logits."""
    nonfinite: dict[str, int] = field(default_factory=dict)
    """``f"{plain|meta}/{method}/{layer}"`` -> probes whose maps held inf/NaN (a meta step too
    large for the model overflows float32): their maps are NaN and their metrics NaN."""
    prediction_difference: Tensor | None = None
    """(N,) with ``smooth="forward"``: mean over classes of |p_smoothed − p| per probe."""

    @property
    def reference(self) -> DriftReference:
        return DriftReference(self.maps, self.targets)


def evaluate_probes(
    model: nn.Module,
    probes: ProbeBatch,
    settings: EvaluationSettings,
    previous: DriftReference | None = None,
    progress: Callable[[int], None] | None = None,
) -> SplitEvaluation:
    """Maps and per-probe metrics of ``probes`` (see the module docstring).

    The model runs in eval mode and comes back untouched (``compute_saliency``'s
    guarantees). ``previous`` (the last evaluation of the same probes) gives ``drift``;
    a probe whose label class changed since then (multilabel) gets NaN drift. ``progress``
    is called with the number of probes done after each chunk of ``settings.batch_size``.
    """
    size = tuple(probes.images.shape[-2:])
    plain_parts: list[SaliencyMaps] = []
    meta_parts: list[SaliencyMaps] = []
    target_parts: list[Tensor] = []
    probability_parts: list[Tensor] = []
    difference_parts: list[Tensor] = []
    for chunk, images in probe_chunks(model, probes, settings.batch_size):
        logits = model_logits(model, images, settings.output_to_logits)
        targets, probabilities = label_max_min_targets(logits, chunk, settings.task)
        common = dict(layers=list(settings.layers), methods=list(settings.computed_methods),
                      output_to_logits=settings.output_to_logits, smooth=settings.smooth,
                      lrp_composite=settings.lrp_composite, context_size=settings.context_size)
        if settings.smooth == "forward":  # it changes the model's predictions: measure by how much
            with smoothing(model, "forward"):
                smoothed = model_logits(model, images, settings.output_to_logits)
            difference_parts.append((class_probabilities(smoothed, settings.task) - probabilities).abs().mean(1).cpu())
        plain_parts.append(_to_cpu(compute_saliency(model, images, targets, **common)))
        if settings.meta_lr is not None:
            meta_parts.append(_to_cpu(compute_saliency(
                model, images, targets, **common, meta_lr=settings.meta_lr, task=settings.task,
                meta_params=settings.meta_params,
            )))
        target_parts.append(targets.cpu())
        probability_parts.append(probabilities.cpu())
        if progress is not None:
            progress(len(chunk))
    targets = torch.cat(target_parts)
    plain, plain_bad = _blank_nonfinite(_cat(plain_parts))
    plain = _with_combined(plain, settings, size)
    meta, meta_bad = _blank_nonfinite(_cat(meta_parts)) if meta_parts else (None, {})
    meta = _with_combined(meta, settings, size) if meta is not None else None
    masks = _label_masks(probes, targets, probability_parts[0].shape[1])

    values: dict[str, Tensor] = {}
    for method, per_layer in plain.items():
        for layer, maps in per_layer.items():
            key = f"{method}/{layer}"
            values[f"class_sensitivity/{key}"] = class_sensitivity(maps[:, MAX], maps[:, MIN], size)
            if meta is not None:
                meta_maps = meta[method][layer]
                values[f"meta_class_sensitivity/{key}"] = class_sensitivity(meta_maps[:, MAX], meta_maps[:, MIN], size)
                values[f"meta_correlation/{key}"] = map_correlation(maps[:, LABEL], meta_maps[:, LABEL], size)
            if previous is not None:
                values[f"drift/{key}"] = _drift(maps[:, LABEL], targets, previous, method, layer, size)
            values[f"total_variation/{key}"] = total_variation(maps[:, LABEL])
            if masks is not None:
                hits = pointing_hits(maps[:, LABEL], masks, settings.pointing_tolerance).double()
                values[f"pointing_game/{key}"] = torch.where(masks.flatten(1).any(1), hits, math.nan)
    if "salient_relevance" in plain:
        for layer, detected in plain["salient_relevance"].items():
            values[f"relevance_ssim/salient_relevance/{layer}"] = structural_similarity(
                resize_maps(plain["lrp"][layer][:, LABEL], size), resize_maps(detected[:, LABEL], size)
            )
    for key in values:  # a probe whose maps overflowed has no value, whatever the metric made of them
        metric, method, layer = key.split("/", 2)
        bad = plain_bad[method][layer] | (meta_bad[method][layer] if metric.startswith("meta_") else False)
        values[key] = torch.where(bad, math.nan, values[key].double())
    if settings.computed_methods != settings.methods:  # lrp was only computed for the SSIM
        plain, plain_bad = _without(plain, "lrp"), _without(plain_bad, "lrp")
        meta, meta_bad = (_without(meta, "lrp") if meta is not None else None), _without(meta_bad, "lrp")
        values = {key: value for key, value in values.items() if key.split("/")[1] != "lrp"}
    nonfinite = {
        f"{kind}/{method}/{layer}": int(bad.sum())
        for kind, table in (("plain", plain_bad), ("meta", meta_bad))
        for method, per_layer in table.items()
        for layer, bad in per_layer.items()
        if layer != COMBINED and bad.any()
    }
    return SplitEvaluation(
        values={k: v.double() for k, v in values.items()},
        maps=_label_only(plain),
        meta_maps=_label_only(meta) if meta is not None else None,
        targets=targets,
        probabilities=torch.cat(probability_parts),
        nonfinite=nonfinite,
        prediction_difference=torch.cat(difference_parts).double() if difference_parts else None,
    )


def summarize(values: Mapping[str, Tensor]) -> dict[str, tuple[float, float, int]]:
    """(mean, standard error, count) over the probes of each key, NaN probes left out.

    The standard error is the sample standard deviation / √count (NaN for count < 2).
    """
    return {key: mean_stderr(per_probe) for key, per_probe in values.items()}


def mean_stderr(values: Tensor) -> tuple[float, float, int]:
    """(mean, standard error = sample std / √count, count) over the non-NaN entries (NaN when undefined)."""
    finite = values[~values.isnan()].double()
    count = finite.numel()
    mean = float(finite.mean()) if count else math.nan
    stderr = float(finite.std() / math.sqrt(count)) if count > 1 else math.nan
    return mean, stderr, count


# --------------------------------------------------------------------------- helpers


def probe_chunks(model: nn.Module, probes: ProbeBatch, batch_size: int) -> Iterator[tuple[ProbeBatch, Tensor]]:
    """Consecutive chunks of ``batch_size`` probes, each with its images on the model's device and
    floating dtype (CPU float32 for a model without parameters)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    for start in range(0, len(probes), batch_size):
        chunk = probes.select(range(start, min(start + batch_size, len(probes))))
        yield chunk, chunk.images.to(device=device, dtype=dtype)


def model_logits(
    model: nn.Module, images: Tensor, output_to_logits: Callable[[object], Tensor] | None = None
) -> Tensor:
    """(B, C) float32 logits of an eval-mode, no-grad forward; a clear error for any other output."""
    with torch.no_grad(), eval_mode(model):
        logits = model(images)
        if output_to_logits is not None:
            logits = output_to_logits(logits)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != images.shape[0] or logits.shape[1] < 2:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        hint = "" if output_to_logits is not None else " (pass `output_to_logits=` to pick the logits from the output)"
        raise ValueError(
            f"Expected the model to map (B, C_in, H, W) images to (B, C) class logits with C >= 2, but got {got} "
            f"for B={images.shape[0]}{hint}."
        )
    return logits.float()


def label_max_min_targets(logits: Tensor, probes: ProbeBatch, task: str) -> tuple[Tensor, Tensor]:
    """(B, 3) [label, max, min] targets and the class probabilities."""
    num_classes = logits.shape[1]
    labels = probes.label_matrix(num_classes).to(logits.device).bool()
    probabilities = class_probabilities(logits, task)
    label = torch.where(labels, logits, -math.inf).argmax(dim=1)
    return torch.stack([label, logits.argmax(dim=1), logits.argmin(dim=1)], dim=1), probabilities


def class_probabilities(logits: Tensor, task: str) -> Tensor:
    """Softmax (``"multiclass"``) or sigmoid (``"multilabel"``) of (N, C) logits, in float32."""
    logits = logits.float()
    return logits.softmax(dim=-1) if task == "multiclass" else logits.sigmoid()


def _to_cpu(maps: SaliencyMaps) -> SaliencyMaps:
    return {m: {l: t.float().cpu() for l, t in per_layer.items()} for m, per_layer in maps.items()}


def _cat(parts: Sequence[SaliencyMaps]) -> SaliencyMaps:
    return {m: {l: torch.cat([p[m][l] for p in parts]) for l in parts[0][m]} for m in parts[0]}


def _blank_nonfinite(maps: SaliencyMaps) -> tuple[SaliencyMaps, dict[str, dict[str, Tensor]]]:
    """Maps (N, T, h, w) with every probe that has a non-finite value set to NaN, and the
    (N,) bool of those probes per method and layer (``"combined"``: any layer)."""
    bad = {m: {l: ~t.isfinite().flatten(1).all(1) for l, t in per_layer.items()} for m, per_layer in maps.items()}
    for method, per_layer in bad.items():
        per_layer[COMBINED] = torch.stack(list(per_layer.values())).any(0)
    blanked = {
        m: {l: torch.where(bad[m][l][:, None, None, None], math.nan, t) for l, t in per_layer.items()}
        for m, per_layer in maps.items()
    }
    return blanked, bad


def _with_combined(maps: SaliencyMaps, settings: EvaluationSettings, size: tuple[int, int]) -> SaliencyMaps:
    """Adds ``maps[method]["combined"]`` (N, T, H, W) at the image size."""
    weights = layer_weights(settings.combine_weights, num_layers=len(settings.layers))
    return {
        method: {**per_layer, COMBINED: combine_maps(per_layer, weights.tolist(), size=size, mode=settings.combine_mode)}
        for method, per_layer in maps.items()
    }


def _without(table: dict, method: str) -> dict:
    return {key: value for key, value in table.items() if key != method}


def _label_only(maps: SaliencyMaps) -> MapsByLayer:
    return {m: {l: t[:, LABEL].contiguous() for l, t in per_layer.items()} for m, per_layer in maps.items()}


def _label_masks(probes: ProbeBatch, targets: Tensor, num_classes: int) -> Tensor | None:
    """(N, H, W) bool region of each probe's label class, or None if the probes carry none."""
    masks = probes.class_masks(num_classes)
    if masks is None:
        return None
    return masks[torch.arange(len(targets)), targets[:, LABEL]]


def _drift(
    maps: Tensor, targets: Tensor, previous: DriftReference, method: str, layer: str, size: tuple[int, int]
) -> Tensor:
    before = previous.maps.get(method, {}).get(layer)
    if before is None or before.shape != maps.shape:
        return torch.full((maps.shape[0],), math.nan, dtype=torch.float64)
    same_class = previous.targets[:, LABEL] == targets[:, LABEL]
    return torch.where(same_class, drift(maps, before, size).double(), math.nan)


def check_settings(settings: EvaluationSettings) -> None:
    """Errors for settings that cannot be checked without a model (the rest: compute_saliency)."""
    if settings.task not in TASKS:
        raise ValueError(f"Expected `task` to be one of {list(TASKS)}, but got {settings.task!r}.")
    if settings.combine_weights not in LAYER_WEIGHTINGS:
        raise ValueError(
            f"Expected `combine_weights` to be one of {list(LAYER_WEIGHTINGS)}, but got {settings.combine_weights!r}."
        )
    if settings.combine_mode not in COMBINATIONS:
        raise ValueError(f"Expected `combine_mode` to be one of {list(COMBINATIONS)}, but got {settings.combine_mode!r}.")
