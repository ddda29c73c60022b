"""The probes' loss beside the meta-correlation gap: per-probe label-class losses, the loss gap,
the rank correlation of loss and 1 − meta correlation, and the per-probe rank residuals, each
against a direct computation (torch's losses, scipy's ranks and Spearman)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine import saliency_options
from saliency_monitor.monitor.evaluation import EvaluationPlan, evaluate_probes
from saliency_monitor.monitor.keys import COMBINED, MetricKey
from saliency_monitor.monitor.probes import ProbeBatch
from saliency_monitor.monitor.report import loss_agreement, loss_scalars, probe_table
from tests._fits import Classifier, SpyLogger, TinyNet, class_images, multiclass_loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")
LAYERS = ("stem", "stage1", "stage2")


def plan(task: str, meta_lr: float | None = 0.05) -> EvaluationPlan:
    options = saliency_options(LAYERS, ["norm_grad_selective", "norm_grad"], task=task)
    return EvaluationPlan.of(options, meta_lr=meta_lr)


def direct_losses(model: torch.nn.Module, probes: ProbeBatch, task: str) -> torch.Tensor:
    """The label-class loss written out: softmax CE of the probe's class, or for multilabel
    BCE toward 1 of the true class the model scores highest."""
    with torch.no_grad():
        logits = model.eval()(probes.images).double()
    if task == "multiclass":
        labels = torch.tensor([classes[0] for classes in probes.classes])
        return F.cross_entropy(logits, labels, reduction="none")
    out = []
    for row, classes in zip(logits, probes.classes):
        label = max(classes, key=lambda c: float(row[c]))
        out.append(F.binary_cross_entropy_with_logits(row[label], torch.tensor(1.0, dtype=torch.float64)))
    return torch.stack(out)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_each_probe_gets_its_label_class_loss(task: str) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    classes = ((0,), (1,), (2,), (0,), (2,)) if task == "multiclass" else ((0, 1), (1,), (0, 2), (2,), (1, 2))
    probes = ProbeBatch(images=class_images(torch.tensor([c[0] for c in classes]), 3), classes=classes, task=task)
    result = evaluate_probes(model, probes, plan(task, meta_lr=None))
    torch.testing.assert_close(result.losses, direct_losses(model, probes, task), rtol=1e-5, atol=1e-6)


def test_loss_agreement_is_spearman_and_the_rank_residual() -> None:
    generator = np.random.default_rng(0)
    losses = torch.tensor(generator.exponential(size=12))
    meta = torch.tensor(1 - generator.uniform(0, 0.3, size=12))
    meta[[3, 7]] = meta[[0, 0]]  # ties
    losses[5] = math.nan  # a probe without a value is left out
    rho, residuals = loss_agreement(losses, meta)
    keep = ~torch.isnan(losses)
    want = scipy.stats.spearmanr(losses[keep].numpy(), (1 - meta[keep]).numpy()).statistic
    assert rho == pytest.approx(want, abs=1e-12)
    ranks_loss = scipy.stats.rankdata(losses[keep].numpy())
    ranks_fragility = scipy.stats.rankdata((1 - meta[keep]).numpy())
    np.testing.assert_allclose(residuals[keep].numpy(), (ranks_fragility - ranks_loss) / (int(keep.sum()) - 1))
    assert math.isnan(float(residuals[5])) and residuals[keep].abs().max() <= 1
    assert math.isnan(loss_agreement(losses[:2], meta[:2])[0])  # fewer than 3 probes


def test_loss_scalars_mean_stderr_gap_and_agreement() -> None:
    torch.manual_seed(1)
    model = TinyNet().eval()
    results = {}
    for split, seed in (("train", 0), ("val", 1)):
        labels = torch.arange(6) % 3
        probes = ProbeBatch(images=class_images(labels, seed), classes=tuple((int(c),) for c in labels),
                            task="multiclass")
        results[split] = evaluate_probes(model, probes, plan("multiclass"))
    scalars = loss_scalars(results)
    for split, result in results.items():
        losses = result.losses.numpy()
        assert scalars[MetricKey(split, "loss")] == pytest.approx(losses.mean())
        assert scalars[MetricKey(split, "loss").error()] == pytest.approx(scipy.stats.sem(losses))
        for method in ("norm_grad_selective", "norm_grad"):
            meta = result.values[MetricKey(None, "meta_correlation", method, COMBINED)].numpy()
            want = scipy.stats.spearmanr(losses, 1 - meta).statistic
            assert scalars[MetricKey(split, "loss_rank_correlation", method, COMBINED)] == pytest.approx(want)
    gap = results["val"].losses.mean() - results["train"].losses.mean()
    assert scalars[MetricKey(None, "loss_gap")] == pytest.approx(float(gap))
    standard_error = math.hypot(scipy.stats.sem(results["train"].losses), scipy.stats.sem(results["val"].losses))
    assert scalars[MetricKey(None, "loss_gap").error()] == pytest.approx(standard_error)
    columns, rows = probe_table(results["val"], list(range(6)), plan("multiclass"), str, with_boxes=False)
    assert "label_loss" in columns and "rank_residual/norm_grad_selective" in columns
    assert [row[columns.index("label_loss")] for row in rows] == pytest.approx(results["val"].losses.tolist())


def test_a_fit_logs_the_loss_beside_the_gap(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=6, num_val_probes=6, meta_lr=0.05)
    model = Classifier()
    trainer(tmp_path, [monitor], logger=spy).fit(model, *multiclass_loaders())
    last = spy.saliency()[-1][1]
    # the last evaluation ran after the last optimizer step: the final weights are the evaluated ones
    for split in ("train", "val"):
        probes = monitor.state.probes[split]
        losses = direct_losses(model, probes, "multiclass")
        assert last[f"layer_{split}/loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
        assert last[f"stderr/layer_{split}_loss"] == pytest.approx(float(scipy.stats.sem(losses.numpy())), rel=1e-4)
    gap = last["layer_val/loss"] - last["layer_train/loss"]
    assert last["Saliency/gap_loss"] == pytest.approx(gap)
    assert -1 <= last["layer_val/lossr_NGsel_all"] <= 1
