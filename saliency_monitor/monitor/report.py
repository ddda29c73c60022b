"""An evaluation's results as what a person reads: summary numbers, pictures and per-probe tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..metrics.maps import constant_maps
from .degenerate import left_out
from .evaluation import LABEL, MAX, METRICS, MIN, EvaluationPlan, SplitEvaluation, summarize
from .keys import COMBINED, GAP, MetricKey, column_name
from .probes import ProbeBatch
from .publish import Pictures
from .render import GridRow, saliency_grid


def summary_scalars(results: dict[str, SplitEvaluation]) -> dict[MetricKey, float]:
    """Per split the mean and standard error of every metric; the train − val meta-correlation gap.

    Degenerate layers (:mod:`.degenerate`) have no keys."""
    scalars: dict[MetricKey, float] = {}
    summaries = {split: summarize(result.logged_values) for split, result in results.items()}
    for split, summary in summaries.items():
        for key, (mean, stderr, _) in summary.items():
            scalars[key.on(split)] = mean
            scalars[key.on(split).error()] = stderr
    for split, result in results.items():
        if result.prediction_difference is not None:
            scalars[MetricKey(split, "prediction_difference")] = float(result.prediction_difference.mean())
    if "train" in summaries and "val" in summaries:
        for key, (train_mean, train_se, _) in summaries["train"].items():
            if key.metric == "meta_correlation" and key in summaries["val"]:
                val_mean, val_se, _ = summaries["val"][key]
                gap = MetricKey(None, GAP, key.method, key.layer)
                scalars[gap] = train_mean - val_mean
                scalars[gap.error()] = math.sqrt(train_se**2 + val_se**2)
    return scalars


def pictures(
    results: dict[str, SplitEvaluation], probes: dict[str, ProbeBatch], plan: EvaluationPlan,
    class_name: Callable[[int], str], num_images: int, colormap: str,
) -> Pictures:
    """Per split, one grid per method: for the first ``num_images`` probes, the image, each layer's
    map and the combined map of the label class, a plain row and (with meta) a meta row.

    A degenerate layer (:mod:`.degenerate`) has no column (a method with none left, no grid); a
    probe's map that is constant up to rounding is drawn blank (NaN), not as stretched noise."""
    if num_images == 0:
        return {}
    names = dict(zip(plan.layers, short_names(plan.layers)))
    out: Pictures = {}
    for split, result in results.items():
        shown = range(min(num_images, len(probes[split])))
        skip = left_out(result.degenerate, result.constant)
        grids = []
        for method in plan.methods:
            layers = [layer for layer in (*plan.layers, COMBINED) if (method.name, layer) not in skip]
            if not layers:
                continue
            rows = []
            for i in shown:
                label = int(result.targets[i, LABEL])
                caption = f"{class_name(label)} p={float(result.probabilities[i, label]):.2f}"
                image = probes[split].images[i]
                rows.append(GridRow(image, _panels(result.maps[method.name], layers, i), f"{caption} · plain"))
                if result.meta_maps is not None:
                    rows.append(GridRow(image, _panels(result.meta_maps[method.name], layers, i), f"{caption} · meta"))
            columns = [names.get(layer, layer) for layer in layers]
            grid = saliency_grid(rows, columns, colormap=colormap, title=f"{split} · {method} · label class")
            grids.append((grid, f"{split} {method}: image, layer maps, combined (plain and meta rows)"))
        if grids:
            out[split] = grids
    return out


def _panels(maps: dict[str, Tensor], layers: list[str], i: int) -> list[Tensor]:
    """Probe ``i``'s map at each layer; NaN (drawn blank) where it is constant up to rounding."""
    return [torch.where(constant_maps(maps[layer][i]), math.nan, maps[layer][i]) for layer in layers]


def probe_table(
    result: SplitEvaluation, identities: Sequence[int], plan: EvaluationPlan, class_name: Callable[[int], str],
    with_boxes: bool,
) -> tuple[list[str], list[list[object]]]:
    """One row per probe: identity, label and its score, max/min class, every metric of the combined map.

    The columns are the same at every evaluation (drift is NaN at the first): CSV tables append rows.
    """
    metrics = [m for m in METRICS if m != "pointing_game" or with_boxes]
    if plan.meta_lr is None:
        metrics = [m for m in metrics if not m.startswith("meta_")]
    keys = [
        MetricKey(None, metric, method.name, COMBINED) for method in plan.methods for metric in metrics
        if metric != "relevance_ssim" or method.refines is not None
    ]
    columns = ["probe", "identity", "label", "label_score", "max_class", "min_class", *map(column_name, keys)]
    rows = []
    for i in range(len(result.targets)):
        label, top, bottom = (int(c) for c in result.targets[i, [LABEL, MAX, MIN]])
        row: list[object] = [i, identities[i], class_name(label), float(result.probabilities[i, label]),
                             class_name(top), class_name(bottom)]
        row += [float(result.values[key][i]) if key in result.values else math.nan for key in keys]
        rows.append(row)
    return columns, rows


def short_names(layers: Sequence[str]) -> list[str]:
    """Layer names without their common dotted prefix (``model.layer1`` -> ``layer1``)."""
    parts = [name.split(".") for name in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]
