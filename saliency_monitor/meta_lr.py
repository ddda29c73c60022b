"""Choosing the meta-saliency step for a monitored run.

The meta/non-meta correlation only separates train from val images when the step moves
the maps measurably: with the paper's lr = 0.002 both stay ≥ 0.97 on a small ResNet, and
the right size depends on the model, the loss and the data. ``"calibrate"`` therefore picks
the step once, at fit start, on the training probes, and holds it fixed so that later
evaluations stay comparable:

    lr* = the step at which the mean meta correlation of the combined label-class map of
    the first method on the training probes equals ``CALIBRATION_TARGET``,

found by a geometric search (decades, then bisection in log space). ``"optimizer"`` uses
the first optimizer's learning rate ("what one training step would do to this map"), which
is only meaningful for plain SGD.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .combine import combine_maps, layer_weights
from .evaluation import EvaluationSettings, _logits, _targets
from .metrics import map_correlation
from .probes import ProbeBatch
from .saliency import compute_saliency

META_LR_RULES = ("calibrate", "optimizer")
CALIBRATION_TARGET = 0.9
"""Mean train-probe meta correlation the calibrated step produces at fit start."""
CALIBRATION_PROBES = 8
"""Training probes the calibration uses (its cost: about 10 meta evaluations of them)."""
_DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
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
    grows (it does, up to noise); the result is clamped to [1e-4, 1].
    """
    parameter = next(model.parameters())
    chosen = probes.select(range(min(num_probes, len(probes))))
    images = chosen.images.to(device=parameter.device, dtype=parameter.dtype)
    labels = _targets(_logits(model, images), chosen, settings.task)[0][:, :1]
    common = dict(layers=list(settings.layers), methods=[settings.methods[0]])
    weights = layer_weights(settings.combine_weights, num_layers=len(settings.layers)).tolist()
    size = tuple(images.shape[-2:])

    def combined(maps: dict) -> torch.Tensor:
        return combine_maps(maps[settings.methods[0]], weights, size=size, mode=settings.combine_mode)[:, 0]

    plain = combined(compute_saliency(model, images, labels, **common))

    def correlation(lr: float) -> float:
        meta = compute_saliency(model, images, labels, **common, meta_lr=lr, task=settings.task,
                                meta_params=settings.meta_params)
        values = map_correlation(plain, combined(meta), None)
        return float(values[~values.isnan()].mean()) if (~values.isnan()).any() else math.nan

    low, high = None, None  # low: correlation above target; high: below
    for lr in _DECADES:
        value = correlation(lr)
        if value >= target or math.isnan(value):
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
