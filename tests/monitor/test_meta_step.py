"""The calibrated meta step: the bracket it returns, checked with an independent scipy path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from saliency_monitor import compute_saliency
from saliency_monitor.engine import saliency_options
from saliency_monitor.monitor.evaluation import EvaluationPlan
from saliency_monitor.monitor.meta_step import CALIBRATION_TARGET, calibrate_meta_lr
from saliency_monitor.monitor.probes import ProbeBatch
from tests._fits import NUM_CLASSES, TinyNet, class_images

LAYERS = ("stem", "stage1", "stage2")
HALF_BRACKET = 10 ** (1 / 16)  # after 3 bisections of a decade the bracket is 10^(1/8) wide


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet().double()
    labels = torch.arange(10) % NUM_CLASSES
    images = class_images(labels, 5).double()
    probes = ProbeBatch(images=images, classes=tuple((int(c),) for c in labels), task="multiclass")
    settings = EvaluationPlan.of(saliency_options(LAYERS, ("norm_grad_selective", "norm_grad")))
    return model, probes, settings


def reference_correlation(model, images, labels, lr) -> float:
    """Mean Spearman ρ (scipy) of plain vs meta combined maps, the combination written out."""
    def combined(maps) -> np.ndarray:
        layers = [F.interpolate(maps["norm_grad_selective"][layer], size=images.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0].double() for layer in LAYERS]
        normalised = [(m - m.amin((1, 2), keepdim=True)) / (m.amax((1, 2), keepdim=True) - m.amin((1, 2), keepdim=True))
                      for m in layers]
        return (sum(normalised) / len(LAYERS)).numpy()

    plain = combined(compute_saliency(model, images, labels, LAYERS, ["norm_grad_selective"]))
    meta = combined(compute_saliency(model, images, labels, LAYERS, ["norm_grad_selective"], meta_lr=lr))
    return float(np.mean([spearmanr(p.ravel(), m.ravel())[0] for p, m in zip(plain, meta)]))


def test_calibrated_step_brackets_the_target(setup) -> None:
    model, probes, settings = setup
    lr = calibrate_meta_lr(model, probes, settings)
    assert 1e-4 < lr < 0.1
    labels = torch.tensor([c[0] for c in probes.classes])[:, None]
    above = reference_correlation(model, probes.images, labels, lr / HALF_BRACKET)
    below = reference_correlation(model, probes.images, labels, lr * HALF_BRACKET)
    assert above >= CALIBRATION_TARGET > below, (lr, above, below)


def test_calibration_is_clamped_to_the_search_range(setup) -> None:
    model, probes, settings = setup
    assert calibrate_meta_lr(model, probes, settings, target=-1.0) == 0.1  # never falls that low
    assert calibrate_meta_lr(model, probes, settings, target=1.0) == 1e-4  # already below at the smallest step


def test_calibration_only_uses_the_first_probes(setup) -> None:
    model, probes, settings = setup
    few = calibrate_meta_lr(model, probes, settings, num_probes=4)
    assert few == calibrate_meta_lr(model, probes.select(range(4)), settings)
