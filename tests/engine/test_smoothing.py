"""Checkerboard smoothing (Smooth Deep Saliency): exactly what it should change, nothing else."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine.capture import capture
from saliency_monitor.engine.smoothing import average_shifts, phase_averaged_conv, smoothing, strided_convolutions
from saliency_monitor.metrics import total_variation
from tests._trace import assert_same, snapshot


class Strided(nn.Module):
    """conv -> relu ("act", 12x12) -> stride-2 conv -> relu -> stride-2 conv -> pool -> fc."""

    def __init__(self, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.down1 = nn.Conv2d(6, 8, 3, stride=2, padding=1, padding_mode=padding_mode)
        self.relu = nn.ReLU()
        self.down2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.down1(self.act(self.conv(x))))
        return self.fc(self.down2(x).mean(dim=(2, 3)))


def make(seed: int = 0, **kwargs) -> Strided:
    torch.manual_seed(seed)
    return Strided(**kwargs).double()


def test_average_shifts_is_the_clipped_2x2_window_mean() -> None:
    g = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    want = torch.empty_like(g)
    for i in range(5):
        for j in range(6):
            window = [g[..., i - a, j - b] for a in (0, 1) for b in (0, 1) if i - a >= 0 and j - b >= 0]
            want[..., i, j] = sum(window) / len(window)
    torch.testing.assert_close(average_shifts(g), want, rtol=0, atol=1e-15)


def test_backward_smoothing_changes_only_the_gradient_into_strided_convolutions() -> None:
    model = make()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 3], [1, 1]])
    plain = capture(model, images, targets, ["act", "down1"])
    smooth = capture(model, images, targets, ["act", "down1"], smooth="backward")
    torch.testing.assert_close(smooth.logits, plain.logits, rtol=0, atol=0)  # forward untouched
    for name in ("act", "down1"):
        torch.testing.assert_close(smooth.layers[name].activation, plain.layers[name].activation, rtol=0, atol=0)
    # below down2 only down2's input gradient is averaged; below down1 the chain is averaged at each stride-2 input
    assert not torch.allclose(smooth.layers["down1"].gradient, plain.layers["down1"].gradient)

    # the literal chain: d logit / d act = (d logit / d down1-input) averaged, where the upstream gradient
    # into down2's input is averaged too
    x = images.clone()
    act = model.act(model.conv(x)).detach().requires_grad_(True)
    h = model.relu(model.down1(_averaged(act)))
    logits = model.fc(model.down2(_averaged(h)).mean(dim=(2, 3)))
    for t in range(2):
        grad = torch.autograd.grad(logits.gather(1, targets[:, t : t + 1]).sum(), act, retain_graph=True)[0]
        torch.testing.assert_close(smooth.layers["act"].gradient[:, t], grad, rtol=1e-12, atol=1e-12)


class _Averaged(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        out = torch.zeros_like(g)  # a literal loop, independent of average_shifts
        height, width = g.shape[-2:]
        for i in range(height):
            for j in range(width):
                cells = [g[..., i - a, j - b] for a in (0, 1) for b in (0, 1) if i >= a and j >= b]
                out[..., i, j] = sum(cells) / len(cells)
        return out


def _averaged(x):
    return _Averaged.apply(x)


def test_backward_smoothing_leaves_weight_gradients_of_the_strided_convolution_alone() -> None:
    model = make()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)

    def weight_grad(mode):
        with smoothing(model, mode):
            loss = model(images).sum()
        return torch.autograd.grad(loss, [model.down2.weight, model.down2.bias, model.fc.weight])

    for got, want in zip(weight_grad("backward"), weight_grad(None)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_forward_smoothing_is_the_phase_average(padding_mode: str) -> None:
    model = make(padding_mode=padding_mode)
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    conv = model.down1
    out_size = tuple(conv(x).shape[-2:])
    padded = F.pad(x, (1, 1, 1, 1), mode=padding_mode) if padding_mode != "zeros" else F.pad(x, (1, 1, 1, 1))
    dense = F.conv2d(padded, conv.weight, conv.bias)  # stride 1
    want = torch.empty(2, 8, *out_size, dtype=torch.float64)
    for i in range(out_size[0]):
        for j in range(out_size[1]):
            cells = [dense[..., 2 * i + a, 2 * j + b] for a in (0, 1) for b in (0, 1)
                     if 2 * i + a < dense.shape[-2] and 2 * j + b < dense.shape[-1]]
            want[..., i, j] = sum(cells) / len(cells)
    torch.testing.assert_close(phase_averaged_conv(conv, x, out_size), want, rtol=1e-12, atol=1e-12)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with smoothing(model, "forward"):
        smoothed = model(images)
    assert not torch.allclose(smoothed, model(images))  # it changes predictions (documented)


@pytest.mark.parametrize("mode", ["backward", "forward"])
def test_no_hook_survives_even_when_the_call_raises(mode: str) -> None:
    model = make()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = snapshot(model)
    compute_saliency(model, images, [0, 1], ["act"], ["norm_grad"], smooth=mode)
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError):
        compute_saliency(model, images, [0, 9], ["act"], ["norm_grad"], smooth=mode)
    assert_same(before, snapshot(model))
    assert [type(m).__name__ for m in strided_convolutions(model)] == ["Conv2d", "Conv2d"]


def test_smoothing_lowers_total_variation_of_checkerboard_maps() -> None:
    tv = {}
    for mode in (None, "backward", "forward"):
        values = []
        for seed in range(4):
            model = make(seed)
            images = torch.randn(8, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            maps = compute_saliency(model, images, [0] * 8, ["act"], ["gradient", "norm_grad"], smooth=mode)
            values += [total_variation(maps[m]["act"][:, 0]).mean() for m in maps]
        tv[mode] = torch.stack(values)
    assert (tv["backward"] < tv[None]).all(), tv
    assert (tv["forward"] < tv[None]).all(), tv


def test_bad_smooth_argument() -> None:
    with pytest.raises(ValueError, match=re.escape(
            "Expected `smooth` to be one of ['backward', 'forward'] or None, but got 'both'.")):
        compute_saliency(make(), torch.randn(1, 3, 12, 12, dtype=torch.float64), [0], ["act"], smooth="both")


def test_monitor_smoothing_logs_the_prediction_difference_of_the_forward_hook(tmp_path) -> None:
    from saliency_monitor import SaliencyMonitor
    from tests._fits import Classifier, SpyLogger, multiclass_loaders, trainer

    records = {}
    for mode in (None, "backward", "forward"):
        spy = SpyLogger()
        torch.manual_seed(0)
        monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, smooth=mode, num_logged_images=0,
                                  layers=["net.stem", "net.stage1"])
        train, val = multiclass_loaders()
        with pytest.warns(UserWarning, match="takes scalars only"):
            trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(), train, val)
        records[mode] = spy.saliency()[0][1]  # fit start: the same weights for every mode
    key = "layer_val/tv_NG_stem"  # net.stem: the layer feeding the stride-2 stage1 conv
    assert records["backward"][key] < records[None][key]
    assert "saliency_run/prediction_difference_val" not in records["backward"]
    assert 0 < records["forward"]["saliency_run/prediction_difference_val"] < 1
    assert 0 < records["forward"]["saliency_run/prediction_difference_train"] < 1
    with pytest.raises(ValueError, match=re.escape(
            "Expected `smooth` to be one of ['backward', 'forward'] or None, but got 'yes'.")):
        SaliencyMonitor(smooth="yes")
