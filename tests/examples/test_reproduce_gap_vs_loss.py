"""gap-vs-loss (examples/reproduce/gap_vs_loss.py): the AUC, the analysis against a direct computation, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from examples.reproduce import analyses as A
from examples.reproduce import cli, data, report
from examples.reproduce.gap_vs_loss import auc, gap_vs_loss, label_losses, spearman
from examples.reproduce.verdicts import gap_vs_loss_verdict
from examples.voc_data import generate_synthetic_voc
from saliency_monitor.metrics import mean_stderr
from saliency_monitor.monitor.probes import ProbeBatch
from tests.examples.test_reproduce import SIZE, TinyVOCNet


def literal_auc(positive: list[float], negative: list[float]) -> float:
    wins = 0.0
    for p in positive:
        for n in negative:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(positive) * len(negative))


def test_auc_equals_a_literal_double_loop_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        pos = rng.integers(0, 6, rng.integers(1, 12)).astype(float) + (0 if trial % 2 else rng.random(1)[0])
        neg = rng.integers(0, 6, rng.integers(1, 12)).astype(float)  # small integers: many ties
        got = auc(torch.tensor(pos), torch.tensor(neg))
        assert got == pytest.approx(literal_auc(list(pos), list(neg)), abs=1e-12)
        sklearn_metrics = pytest.importorskip("sklearn.metrics")
        want = sklearn_metrics.roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        assert got == pytest.approx(want, abs=1e-12)
    assert auc(torch.tensor([1.0, math.nan, 3.0]), torch.tensor([2.0])) == 0.5  # NaN dropped
    assert math.isnan(auc(torch.tensor([math.nan]), torch.tensor([1.0])))
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    return generate_synthetic_voc(root, num_train=6, num_val=2, num_test=8, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def probes(voc_root: Path) -> ProbeBatch:
    return data.voc_probes(voc_root, "test", SIZE, None, seed=0)


@pytest.fixture(scope="module")
def train_probes(voc_root: Path) -> ProbeBatch:
    return data.voc_probes(voc_root, "trainval", SIZE, None, seed=0)


def direct_loss(model: nn.Module, probes: ProbeBatch) -> torch.Tensor:
    """softplus(−z) of each image's true class with the highest logit, by hand."""
    with torch.no_grad():
        logits = model(probes.images.double()).double()
    out = []
    for row, classes in zip(logits, probes.classes, strict=True):
        label = max(classes, key=lambda c: float(row[c]))
        out.append(F.softplus(-row[label]))
    return torch.stack(out)


def test_gap_vs_loss_numbers_equal_a_direct_computation(probes, train_probes, tmp_path) -> None:
    torch.manual_seed(0)
    first, second = TinyVOCNet().double().eval(), TinyVOCNet().double().eval()
    with torch.no_grad():
        second.fc.bias.add_(torch.linspace(-2, 2, 20, dtype=torch.float64))  # a different loss per class
    layers = ["conv1", "conv2"]
    result = gap_vs_loss([(0, first), (2, second)], train_probes, probes, layers, methods=["norm_grad_selective"],
                         meta_lr=0.5, batch_size=5)
    assert result.epochs == (0, 2) and result.methods == ("norm_grad_selective",) and result.task == "multilabel"
    assert result.train_rho["norm_grad_selective"].shape == (2, len(train_probes))
    assert result.val_loss.shape == (2, len(probes))
    for e, model in enumerate((first, second)):
        gap = A.meta_gap([(0, model)], train_probes, probes, layers, methods=["norm_grad_selective"], meta_lr=0.5)
        rt, rv = gap.train["norm_grad_selective"][A.COMBINED][0], gap.val["norm_grad_selective"][A.COMBINED][0]
        np.testing.assert_allclose(result.train_rho["norm_grad_selective"][e], rt, atol=1e-6)
        np.testing.assert_allclose(result.val_rho["norm_grad_selective"][e], rv, atol=1e-6)
        lt, lv = direct_loss(model, train_probes), direct_loss(model, probes)
        np.testing.assert_allclose(result.train_loss[e], lt, rtol=1e-5)  # the logits are float32
        np.testing.assert_allclose(result.val_loss[e], lv, rtol=1e-5)
        lt, lv = result.train_loss[e], result.val_loss[e]
        s = result.stats("norm_grad_selective", e)
        assert s.meta_gap[0] == pytest.approx(float(rt.mean() - rv.mean()))
        assert s.meta_gap[1] == pytest.approx(math.hypot(mean_stderr(rt)[1], mean_stderr(rv)[1]))
        assert s.loss_gap[0] == pytest.approx(float(lv.mean() - lt.mean()))  # val − train
        assert s.loss_gap[1] == pytest.approx(math.hypot(float(lt.std()) / len(lt) ** 0.5,
                                                         float(lv.std()) / len(lv) ** 0.5))
        assert s.auc_rho == pytest.approx(literal_auc((1 - rv).tolist(), (1 - rt).tolist()))
        assert s.auc_loss == pytest.approx(literal_auc(lv.tolist(), lt.tolist()))
        assert s.spearman_all == pytest.approx(spearmanr(torch.cat([lt, lv]), 1 - torch.cat([rt, rv])).statistic)
        assert s.spearman_val == pytest.approx(spearmanr(lv, 1 - rv).statistic)
        assert s.counts == (len(train_probes), len(probes))
    assert not torch.equal(result.val_loss[0], result.val_loss[1])
    verdict = gap_vs_loss_verdict(result)
    assert verdict.startswith("norm_grad_selective: the meta gap follows the loss gap with Spearman")
    assert "AUC(1 − ρ) > AUC(loss) at" in verdict and "of 2 checkpoints" in verdict
    setting = report.Setting("tiny", "synthetic", "python -m examples.reproduce gap-vs-loss", 1.0)
    written = report.write_gap_vs_loss(result, tmp_path, setting)
    text = written.markdown.read_text()
    assert "| norm_grad_selective | 2 |" in text and "**val − train**" in text and "softplus(−z_label)" in text
    assert Image.open(tmp_path / "gap_vs_loss.png").size[0] > 100


def test_label_losses_multiclass_is_the_cross_entropy(probes) -> None:
    model = TinyVOCNet().double().eval()
    single = ProbeBatch(images=probes.images[:4], classes=tuple((c[0],) for c in probes.classes[:4]),
                        task="multiclass")
    with torch.no_grad():
        logits = model(single.images.double())
    want = F.cross_entropy(logits, torch.tensor([c[0] for c in single.classes]), reduction="none")
    np.testing.assert_allclose(label_losses(model, single, 3), want, rtol=1e-5)


def test_cli_lists_and_runs_gap_vs_loss(voc_root, tmp_path, capsys) -> None:
    assert "gap-vs-loss" in cli.ANALYSES and "gap-vs-loss" in report.WRITERS
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    assert "gap-vs-loss" in capsys.readouterr().out
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=20).state_dict(), weights)
    out = tmp_path / "out"
    reports = cli.main(["gap-vs-loss", "--arch", "resnet18", "--weights", str(weights), "--voc-root", str(voc_root),
                        "--num-images", "3", "--image-size", str(SIZE), "--out", str(out), "--layers", "layer1",
                        "layer2", "--checkpoints", str(weights), str(weights), "--methods", "norm_grad"])
    assert list(reports) == ["gap-vs-loss"]
    text = (out / "gap_vs_loss.md").read_text()
    assert "- Command: `python -m examples.reproduce gap-vs-loss --arch resnet18" in text
    assert text.count("| norm_grad |") == 2 and "**Verdict.**" in text and "| 3 / 3 |" in text
    assert (out / "gap_vs_loss.png").is_file()
