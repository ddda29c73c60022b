"""Choosing the meta-saliency step for a monitored run.

The meta/non-meta correlation separates train from val images only when the step moves the
maps measurably, and the step that does depends on the model, the loss and the data (in
``benchmarks/meta_lr_study.py`` a ResNet-18 of width 64 needed twice the step of width 32
for the same drop; the filer of issue 5 saw no gap at all at the paper's 0.002 on another
ResNet-18). ``"calibrate"`` (the monitor's default) therefore picks the step once, at fit
start, on the training probes, and holds it fixed so later evaluations stay comparable:

    lr* = the step at which the mean meta correlation of the first method's combined
    label-class map over the training probes equals ``CALIBRATION_TARGET`` (0.95),

found by a geometric search (decades 1e-4 … 1e-1, then bisection in log space), clamped to
[1e-4, 0.1]; a step at which any method's map overflows float32 counts as too large.
Why 0.95 (study: 3 overfitting runs, 16 + 16 probes, 8 steps 5e-4 … 0.1): every step gave
|gap| below 1.5 standard errors before training; once the model memorised its training set
the gap stood at 2.4–4.3 standard errors for every step ≥ 0.002, levelling
off above ~0.005; target 0.95 picked 0.005–0.01, inside that plateau, while 0.9 and 0.8 ran
to the grid's edge (0.05–0.1), where meta-saliency pushes linear_approx's class sensitivity
from −0.3 to +0.5 (the paper's Fig. 7 effect is best at small steps, 0.001–0.002).

``"optimizer"`` uses the first optimizer's learning rate ("what one training step would do
to this map"); it is only meaningful for plain SGD (Adam's lr is on another scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from ..engine.compute import SaliencyMaps, saliency_maps
from ..engine.model_io import model_logits
from ..metrics import combine_maps, fixed_weights, map_correlation
from .evaluation import EvaluationPlan
from .probes import ProbeBatch, label_max_min_targets, probe_chunks

CALIBRATION_TARGET = 0.95
"""Mean train-probe meta correlation the calibrated step produces at fit start."""
CALIBRATION_PROBES = 16
"""Training probes the calibration uses (its cost: about 7 label-class meta passes over them,
once per fit; fewer probes make the chosen step noisy)."""
_DECADES = (1e-4, 1e-3, 1e-2, 1e-1)
_BISECTIONS = 3


def calibrate_meta_lr(
    model: nn.Module,
    probes: ProbeBatch,
    plan: EvaluationPlan,
    target: float = CALIBRATION_TARGET,
    num_probes: int = CALIBRATION_PROBES,
) -> float:
    """The meta step whose mean meta correlation on ``probes`` is ``target`` (see module doc).

    ``plan``: the monitor's plan (layers, methods, task, combination; its meta step is ignored).
    The correlation is assumed to fall as the step grows (it does, up to noise); the result is
    clamped to [1e-4, 0.1].
    """
    chosen = probes.select(range(min(num_probes, len(probes))))
    _, images = next(probe_chunks(model, chosen, len(chosen)))
    options = plan.saliency
    logits = model_logits(model, images, options.output_to_logits)
    labels = label_max_min_targets(logits, chosen, plan.task)[0][:, :1]
    first = plan.methods[0]
    weights = fixed_weights(plan.combine_weights, len(plan.layers)).tolist()
    size = (images.shape[-2], images.shape[-1])

    def combined(maps: SaliencyMaps) -> torch.Tensor:
        return combine_maps(maps[first.name], weights, size=size, mode=plan.combine_mode)[:, 0]

    plain = combined(saliency_maps(model, images, labels, replace(options, methods=(first,))))

    def correlation(lr: float) -> float:
        """Mean ρ over the probes; −inf when any method's map overflows (the step is too large)."""
        maps = saliency_maps(model, images, labels, replace(options, meta_lr=lr))
        if not all(t.isfinite().all() for per_layer in maps.values() for t in per_layer.values()):
            return -math.inf
        values = map_correlation(plain, combined(maps), None)
        finite = values[~values.isnan()]  # NaN: a constant map
        return float(finite.mean()) if len(finite) else -math.inf

    return _search(correlation, target)


def _search(correlation: Callable[[float], float], target: float) -> float:
    """The step at which ``correlation`` crosses ``target``: decades, then log-space bisection."""
    low, high = None, None  # low: correlation at or above target; high: below
    for lr in _DECADES:
        if correlation(lr) >= target:
            low = lr
        else:
            high = lr
            break
    if high is None:
        return _DECADES[-1]
    if low is None:
        return _DECADES[0]
    for _ in range(_BISECTIONS):
        middle = math.sqrt(low * high)
        if correlation(middle) >= target:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)
