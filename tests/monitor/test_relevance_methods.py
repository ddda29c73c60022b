"""SaliencyMonitor with the relevance methods (LRP, Salient Relevance) in tiny real fits."""

from __future__ import annotations

import math

import pytest
import torch

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine import saliency_options
from saliency_monitor.engine.compute import compute_saliency
from saliency_monitor.metrics import structural_similarity
from saliency_monitor.monitor.evaluation import EvaluationPlan, evaluate_probes
from saliency_monitor.monitor.keys import MetricKey
from saliency_monitor.monitor.probes import ProbeBatch
from tests._fits import Classifier, SpyLogger, TinyNet, multiclass_loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")
LAYERS = ("net.stem", "net.stage1", "net.stage2", "combined")


def metric_keys(records: list, method: str) -> set[str]:
    return {key.split("/")[2] for _, metrics in records for key in metrics if key.count("/") == 4
            and key.split("/")[3] == method and "_stderr" not in key}


def test_fit_with_salient_relevance_only_logs_its_metrics_and_the_ssim(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(methods=["salient_relevance"], num_train_probes=4, num_val_probes=4,
                              meta_lr=0.05, context_size=32)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(), train, val)
    records = spy.saliency()
    keys = {key for _, metrics in records for key in metrics}
    assert not any("/lrp/" in key for key in keys)  # computed for the SSIM, not logged
    assert metric_keys(records, "salient_relevance") == {
        "class_sensitivity", "meta_class_sensitivity", "meta_correlation", "total_variation", "drift",
        "relevance_ssim",
    }
    for split in ("train", "val"):
        for layer in LAYERS:
            value = records[-1][1][f"saliency/{split}/relevance_ssim/salient_relevance/{layer}"]
            assert -1 <= value <= 1 and math.isfinite(value)
        assert "saliency/meta_correlation_gap/salient_relevance/combined" in records[-1][1]
    assert records[-1][1]["saliency/errors"] == 0


def test_fit_with_lrp_and_a_gradient_method(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(methods=["lrp", "norm_grad"], num_train_probes=4, num_val_probes=4, meta_lr=None)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(), train, val)
    records = spy.saliency()
    assert metric_keys(records, "lrp") == metric_keys(records, "norm_grad") == {
        "class_sensitivity", "total_variation", "drift"}
    assert records[-1][1]["saliency/errors"] == 0


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
