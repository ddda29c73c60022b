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
[1e-4, 0.1]; a step at which any method's map overflows float32 counts as too large. Why 0.95 (study: 3 overfitting runs, 16 + 16 probes, 8 steps 5e-4 … 0.1):
every step gave |gap| below 1.5 standard errors before training; once the model memorised
its training set the gap stood at 2.4–4.3 standard errors for every step ≥ 0.002, levelling
off above ~0.005; target 0.95 picked 0.005–0.01, inside that plateau, while 0.9 and 0.8 ran
to the grid's edge (0.05–0.1), where meta-saliency pushes linear_approx's class sensitivity
from −0.3 to +0.5 (the paper's Fig. 7 effect is best at small steps, 0.001–0.002).

``"optimizer"`` uses the first optimizer's learning rate ("what one training step would do
to this map"); it is only meaningful for plain SGD (Adam's lr is on another scale).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .combine import combine_maps, layer_weights
from .evaluation import EvaluationSettings, label_max_min_targets, model_logits
from .metrics import map_correlation
from .probes import ProbeBatch
from .saliency import compute_saliency

META_LR_RULES = ("calibrate", "optimizer")
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
    settings: EvaluationSettings,
    target: float = CALIBRATION_TARGET,
    num_probes: int = CALIBRATION_PROBES,
) -> float:
    """The meta step whose mean meta correlation on ``probes`` is ``target`` (see module doc).

    ``settings``: the monitor's settings (layers, first method, task, combination). The correlation is assumed to fall as the step
    grows (it does, up to noise); the result is clamped to [1e-4, 0.1].
    """
    parameter = next(model.parameters())
    chosen = probes.select(range(min(num_probes, len(probes))))
    images = chosen.images.to(device=parameter.device, dtype=parameter.dtype)
    logits = model_logits(model, images, settings.output_to_logits)
    labels = label_max_min_targets(logits, chosen, settings.task)[0][:, :1]
    common = dict(layers=list(settings.layers), methods=list(settings.methods), output_to_logits=settings.output_to_logits,
                  smooth=settings.smooth)
    weights = layer_weights(settings.combine_weights, num_layers=len(settings.layers)).tolist()
    size = tuple(images.shape[-2:])

    def combined(maps: dict) -> torch.Tensor:
        return combine_maps(maps[settings.methods[0]], weights, size=size, mode=settings.combine_mode)[:, 0]

    plain = combined(compute_saliency(model, images, labels, **{**common, "methods": [settings.methods[0]]}))

    def correlation(lr: float) -> float:
        """Mean ρ over the probes; −inf when any method's map overflows (the step is too large)."""
        maps = compute_saliency(model, images, labels, **common, meta_lr=lr, task=settings.task,
                                meta_params=settings.meta_params)
        if not all(t.isfinite().all() for per_layer in maps.values() for t in per_layer.values()):
            return -math.inf
        meta = combined(maps)
        values = map_correlation(plain, meta, None)
        finite = values[~values.isnan()]  # NaN: a constant map
        return float(finite.mean()) if len(finite) else -math.inf

    low, high = None, None  # low: correlation at or above target; high: below
    for lr in _DECADES:
        value = correlation(lr)
        if value >= target:
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
