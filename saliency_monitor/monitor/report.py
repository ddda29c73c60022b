"""An evaluation's results as what a person reads: summary numbers, pictures and per-probe tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..metrics import mean_stderr, rank_correlation, rank_data
from ..metrics.maps import constant_maps
from .degenerate import left_out
from .evaluation import METRICS, EvaluationPlan, SplitEvaluation, summarize
from .keys import COMBINED, GAP, LOSS, LOSS_AGREEMENT, LOSS_GAP, MetricKey, column_name, short_names
from .probe_metrics import LABEL, MAX, MIN
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
    scalars.update(loss_scalars(results))
    return scalars


def loss_scalars(results: dict[str, SplitEvaluation]) -> dict[MetricKey, float]:
    """Beside the meta-correlation gap, what the loss alone says: per split the probes' mean
    label-class loss (and its standard error), the val − train loss gap, and per method the
    Spearman ρ across the split's probes between the loss and 1 − meta correlation of the
    combined map (near 1: the map's fragility follows the loss; lower: saliency adds to it)."""
    scalars: dict[MetricKey, float] = {}
    losses = {split: mean_stderr(result.losses) for split, result in results.items()}
    for split, (mean, stderr, _) in losses.items():
        scalars[MetricKey(split, LOSS)] = mean
        scalars[MetricKey(split, LOSS).error()] = stderr
    if "train" in losses and "val" in losses:
        (train_mean, train_se, _), (val_mean, val_se, _) = losses["train"], losses["val"]
        scalars[MetricKey(None, LOSS_GAP)] = val_mean - train_mean
        scalars[MetricKey(None, LOSS_GAP).error()] = math.sqrt(train_se**2 + val_se**2)
    for split, result in results.items():
        for key, meta_correlation in result.logged_values.items():
            if key.metric == "meta_correlation" and key.layer == COMBINED:
                rho, _ = loss_agreement(result.losses, meta_correlation)
                scalars[MetricKey(split, LOSS_AGREEMENT, key.method, COMBINED)] = rho
    return scalars


def loss_agreement(losses: Tensor, meta_correlation: Tensor) -> tuple[float, Tensor]:
    """(ρ, residuals) over the probes where both are finite: ρ = Spearman(loss, 1 − meta
    correlation); a probe's residual = (rank of 1 − meta correlation − rank of loss) / (n − 1)
    in [−1, 1], positive where the explanation is more fragile than the loss ranks it (NaN
    elsewhere, and ρ NaN below 3 probes)."""
    fragility = 1 - meta_correlation.double()
    both = losses.isfinite() & fragility.isfinite()
    residuals = torch.full_like(fragility, math.nan)
    count = int(both.sum())
    if count < 3:
        return math.nan, residuals
    pair = torch.stack([losses.double()[both], fragility[both]])
    rho = float(rank_correlation(pair[:1], pair[1:]))
    ranks = rank_data(pair)
    residuals[both] = (ranks[1] - ranks[0]) / (count - 1)
    return rho, residuals


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
    """One row per probe: identity, label, its score and loss, max/min class, every metric of the
    combined map, and per method the rank residual of 1 − meta correlation against the loss
    (:func:`loss_agreement`: sort by it to find the probes whose explanation is fragile beyond
    what their loss says).

    The columns are the same at every evaluation (drift is NaN at the first): CSV tables append rows.
    """
    metrics = [m for m in METRICS if m != "pointing_game" or with_boxes]
    if plan.meta_lr is None:
        metrics = [m for m in metrics if not m.startswith("meta_")]
    keys = [
        MetricKey(None, metric, method.name, COMBINED) for method in plan.methods for metric in metrics
        if metric != "relevance_ssim" or method.refines is not None
    ]
    residuals = {
        key.method: loss_agreement(result.losses, result.values[key])[1]
        for key in keys if key.metric == "meta_correlation" and key in result.values
    }
    columns = ["probe", "identity", "label", "label_score", "label_loss", "max_class", "min_class",
               *map(column_name, keys), *(f"rank_residual/{method}" for method in residuals)]
    rows = []
    for i in range(len(result.targets)):
        label, top, bottom = (int(c) for c in result.targets[i, [LABEL, MAX, MIN]])
        row: list[object] = [i, identities[i], class_name(label), float(result.probabilities[i, label]),
                             float(result.losses[i]), class_name(top), class_name(bottom)]
        row += [float(result.values[key][i]) if key in result.values else math.nan for key in keys]
        row += [float(residual[i]) for residual in residuals.values()]
        rows.append(row)
    return columns, rows
