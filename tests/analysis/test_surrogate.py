"""Bilinear surrogate (Smooth Deep Saliency): fits, stays faithful, smooths, leaves the original alone."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.analysis.surrogate import BilinearDownsample, SurrogateReport, fit_bilinear_surrogate
from saliency_monitor.engine.smoothing import strided_convolutions
from saliency_monitor.metrics import total_variation
from tests._trace import assert_same, snapshot

FIT = {"epochs": 30, "lr": 1e-2, "batch_size": 16}


class Strided(nn.Module):
    """conv -> relu ("act", 12x12) -> stride-2 conv -> relu -> stride-2 conv -> pool -> fc (float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.down1 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.down2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.down1(self.act(self.conv(x))))
        return self.fc(self.down2(x).mean(dim=(2, 3)))


def make() -> Strided:
    torch.manual_seed(0)
    return Strided()


def images(n: int = 64) -> torch.Tensor:
    """Smooth random images (4x4 noise upsampled): like natural images, mostly low frequency."""
    coarse = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return F.interpolate(coarse, size=(12, 12), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def fitted() -> tuple[Strided, nn.Module, SurrogateReport, SurrogateReport]:
    model = make()
    _, initial = fit_bilinear_surrogate(model, images(), epochs=0)
    surrogate, report = fit_bilinear_surrogate(model, images(), **FIT)
    return model, surrogate, report, initial


def test_fit_replaces_both_strided_convs_and_lowers_the_error(fitted) -> None:
    _, surrogate, report, initial = fitted
    assert report.layers == ("down1", "down2")
    assert strided_convolutions(surrogate) == []
    assert isinstance(surrogate.down1, BilinearDownsample) and isinstance(surrogate.down2, BilinearDownsample)
    for name in report.layers:
        assert report.fit_l1[name] < initial.fit_l1[name]
        assert report.fit_l1[name] < 0.2, report.fit_l1
    assert surrogate(images(2)).shape == (2, 4)


def test_report_figures_match_a_literal_recomputation(fitted) -> None:
    model, surrogate, report, _ = fitted
    x = images()
    with torch.no_grad():
        p_orig, p_sur = model(x).softmax(-1), surrogate(x).softmax(-1)
        # fit_l1 of down1: its recorded input is act(conv(x)) on the original
        h = model.act(model.conv(x))
        rel = (surrogate.down1(h) - model.down1(h)).abs().mean() / model.down1(h).abs().mean()
    difference = (p_sur - p_orig).abs().mean().item()
    assert report.prediction_difference == pytest.approx(difference, rel=1e-5)
    assert report.prediction_difference < 0.05
    assert report.fit_l1["down1"] == pytest.approx(rel.item(), rel=1e-4)
    agreement = (p_sur.argmax(-1) == p_orig.argmax(-1)).float().mean().item()
    assert (report.accuracy, report.original_accuracy) == (pytest.approx(agreement), 1.0)


def test_accuracy_with_class_and_multi_hot_labels(fitted) -> None:
    model, _, _, _ = fitted
    x = images(32)
    with torch.no_grad():
        top = model(x).argmax(-1)
    labels = torch.arange(32) % 4
    _, report = fit_bilinear_surrogate(model, x, labels=labels, epochs=0)
    assert report.original_accuracy == pytest.approx((top == labels).float().mean().item())
    multi_hot = F.one_hot(labels, 4) | F.one_hot((labels + 1) % 4, 4)
    surrogate, report = fit_bilinear_surrogate(model, x, labels=multi_hot, task="multilabel", epochs=0)
    hit = ((top == labels) | (top == (labels + 1) % 4)).float().mean().item()
    assert report.original_accuracy == pytest.approx(hit)
    with torch.no_grad():
        want = (surrogate(x).sigmoid() - model(x).sigmoid()).abs().mean().item()
    assert report.prediction_difference == pytest.approx(want, rel=1e-5)


def test_original_untouched_and_fit_deterministic() -> None:
    model = make()
    model.train()
    before = snapshot(model)
    first, report1 = fit_bilinear_surrogate(model, list(images().split(16)), epochs=2, lr=1e-2, seed=3)
    assert_same(before, snapshot(model))
    second, report2 = fit_bilinear_surrogate(model, images(), epochs=2, lr=1e-2, seed=3)
    assert report1 == report2
    for (n1, a), (n2, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1
    assert model.down1.stride == (2, 2) and not first.training


def test_surrogate_maps_are_smoother_upstream_of_replaced_convs(fitted) -> None:
    model, surrogate, _, _ = fitted
    x = images(16)
    tv = {}
    for name, net in (("original", model), ("surrogate", surrogate)):
        maps = compute_saliency(net, x, [0] * 16, ["conv", "act"], ["gradient", "norm_grad"])
        tv[name] = torch.stack([total_variation(maps[m]["act"][:, 0]).mean() for m in maps])
        assert maps["gradient"]["conv"].shape == (16, 1, 12, 12)
    print("TV at act (gradient, norm_grad):", tv)
    assert (tv["surrogate"] < tv["original"]).all(), tv


def test_bilinear_downsample_output_size_follows_the_conv_formula() -> None:
    for kwargs in ({"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 5, "stride": 2, "padding": 0},
                   {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2}, {"kernel_size": 4, "stride": 2}):
        conv = nn.Conv2d(2, 3, **kwargs)
        x = torch.randn(1, 2, 13, 10)
        assert BilinearDownsample.from_conv(conv)(x).shape == conv(x).shape, kwargs


def test_initialisation_copies_the_3x3_conv_and_starts_at_identity() -> None:
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    module = BilinearDownsample.from_conv(conv)
    assert torch.equal(module.conv1.weight, conv.weight) and torch.equal(module.conv1.bias, conv.bias)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(module.conv2(x), x)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"model": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())}, ValueError,
     "Expected `model` to contain a stride-2 torch.nn.Conv2d, but got none in Sequential."),
    ({"images": torch.zeros(2, 3, 12)}, ValueError,
     "Expected `images` of shape (N, C, H, W) and floating dtype, but got shape (2, 3, 12) and dtype torch.float32."),
    ({"images": torch.zeros(2, 3, 12, 12, dtype=torch.long)}, ValueError,
     "Expected `images` of shape (N, C, H, W) and floating dtype, but got shape (2, 3, 12, 12) and dtype torch.int64."),
    ({"images": [torch.zeros(2, 3, 12, 12), "x"]}, TypeError,
     "Expected `images` to be a tensor or an iterable of tensors, but got str."),
    ({"images": []}, ValueError, "Expected `images` to hold at least one batch, but got an empty iterable."),
    ({"task": "binary"}, ValueError, "Expected `task` to be one of ['multiclass', 'multilabel'], but got 'binary'."),
    ({"epochs": -1}, ValueError, "Expected `epochs` to be a non-negative int, but got -1."),
    ({"labels": torch.zeros(3, dtype=torch.long)}, ValueError,
     "Expected `labels` of shape (2,) or (2, K), but got (3,)."),
])
def test_bad_input(kwargs: dict, error: type, message: str) -> None:
    args = {"model": make(), "images": torch.zeros(2, 3, 12, 12)} | kwargs
    with pytest.raises(error, match=re.escape(message)):
        fit_bilinear_surrogate(args.pop("model"), args.pop("images"), **args)


def test_a_dataloader_of_labelled_batches_is_accepted() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model = _dataloader_model()
    images = torch.randn(16, 3, 12, 12)
    loader = DataLoader(TensorDataset(images, torch.arange(16) % 4), batch_size=8)
    from_loader = fit_bilinear_surrogate(model, loader, epochs=2)[0]
    from_tensor = fit_bilinear_surrogate(model, images, epochs=2)[0]
    for (name, a), (_, b) in zip(from_loader.state_dict().items(), from_tensor.state_dict().items()):
        assert torch.equal(a, b), name


def _dataloader_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 4),
    )
