"""SaliencyMonitor with the relevance methods (LRP, Salient Relevance) in tiny real fits."""

from __future__ import annotations

import math

import pytest
import torch

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine import saliency_options
from saliency_monitor.engine.compute import compute_saliency
from saliency_monitor.metrics import structural_similarity
from saliency_monitor.monitor.evaluation import METRICS, EvaluationPlan, evaluate_probes
from saliency_monitor.monitor.keys import MetricKey
from saliency_monitor.monitor.probes import ProbeBatch
from tests._fits import Classifier, SpyLogger, TinyNet, multiclass_loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")
LAYERS = ("stem", "stage1", "stage2", "all")
"""The default layers' labels in keys (net.stem, net.stage1, net.stage2 and the combined map)."""


START = "drift_from_start" in METRICS
"""Whether the evaluation computes drift from the fit start (its keys are expected only then)."""


def metric_keys(records: list, label: str) -> set[str]:
    """The metric codes of the breakdown keys (``layer_{split}/{code}_{label}_{layer}``) of one method."""
    return {key.split("/")[1].split("_")[0] for _, metrics in records for key in metrics
            if key.startswith(("layer_train/", "layer_val/")) and key.split("/")[1].split("_")[1:2] == [label]}


def test_fit_with_salient_relevance_only_logs_its_metrics_and_the_ssim(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(methods=["salient_relevance"], num_train_probes=4, num_val_probes=4,
                              meta_lr=0.05, context_size=32)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(), train, val)
    records = spy.saliency()
    keys = {key for _, metrics in records for key in metrics}
    assert not any("LRP" in key.split("/")[1].split("_") for key in keys)  # computed for the SSIM, not logged
    expected = {"cs", "mcs", "mc", "tv", "drift", "ssim", "lossr"} | ({"start"} if START else set())
    assert metric_keys(records, "SalRel") == expected
    for split in ("train", "val"):
        for layer in LAYERS:
            value = records[-1][1][f"layer_{split}/ssim_SalRel_{layer}"]
            assert -1 <= value <= 1 and math.isfinite(value)
    assert "Saliency/gap_SalRel" in records[-1][1]
    assert records[-1][1]["saliency_run/errors"] == 0


def test_fit_with_lrp_and_a_gradient_method(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(methods=["lrp", "norm_grad"], num_train_probes=4, num_val_probes=4, meta_lr=None)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(), train, val)
    records = spy.saliency()
    assert metric_keys(records, "LRP") == metric_keys(records, "NG") == {"cs", "tv", "drift"} | (
        {"start"} if START else set())
    assert records[-1][1]["saliency_run/errors"] == 0


def test_evaluation_ssim_is_the_ssim_of_the_label_maps() -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    images = torch.randn(3, 3, 16, 16)
    probes = ProbeBatch(images=images, classes=((0,), (1,), (2,)), task="multiclass")
    settings = EvaluationPlan.of(saliency_options(("stem", "stage2"), ("salient_relevance",), context_size=32))
    result = evaluate_probes(model, probes, settings)
    maps = compute_saliency(model, images, [0, 1, 2], ["stage2"], ["lrp", "salient_relevance"],
                            context_size=32, output_size=16)
    want = structural_similarity(maps["lrp"]["stage2"][:, 0], maps["salient_relevance"]["stage2"][:, 0])
    torch.testing.assert_close(result.values[MetricKey(None, "relevance_ssim", "salient_relevance", "stage2")], want)
    assert "lrp" not in result.maps


def test_smooth_with_relevance_methods_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        SaliencyMonitor(methods=["norm_grad", "lrp"], smooth="backward")
    assert str(caught.value) == (
        "Expected `smooth=None` with the relevance methods ['lrp'] (smoothing changes gradients, not relevance "
        "rules), but got smooth='backward'."
    )
    with pytest.raises(ValueError, match=r"Expected `lrp_composite` to be one of"):
        SaliencyMonitor(methods=["lrp"], lrp_composite="zplus")
