"""compute_saliency leaves no trace: parameters, .grad, requires_grad, buffers, train flags,
hooks and RNG state are exactly as before, also when the call raises midway."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from saliency_monitor import compute_saliency
from tests._trace import assert_same, snapshot


class TracedNet(nn.Module):
    """BatchNorm, Dropout, in-place ReLU, a frozen conv and a residual in-place add."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)
        self.explode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        out = self.bn3(self.conv3(x))
        if self.explode:
            raise RuntimeError("boom")
        out += x  # in-place: overwrites bn3's output
        out = torch.relu_(out)
        return self.fc(self.drop(out.mean(dim=(2, 3))))


@pytest.fixture
def model() -> TracedNet:
    torch.manual_seed(0)
    net = TracedNet()
    net.train()
    net.bn2.eval()  # mixed per-module flags must come back individually
    net.conv1.weight.requires_grad_(False)  # frozen stem
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.5)  # an existing gradient
    with torch.no_grad():  # non-trivial running statistics
        for bn in (net.bn1, net.bn2, net.bn3):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return net


ALL_METHODS = ["gradient", "linear_approx", "grad_cam", "norm_grad", "norm_grad_selective"]


def test_successful_call_leaves_no_trace(model: TracedNet) -> None:
    images = torch.randn(3, 3, 16, 16)
    images_before = images.clone()
    before = snapshot(model)
    maps = compute_saliency(model, images, torch.tensor([[0, 1], [2, 3], [1, 1]]),
                            ["input", "relu", "bn3", "conv2"], ALL_METHODS)
    compute_saliency(model, images, [0, 1, 2], ["conv2"], ["norm_grad_conv"])
    assert_same(before, snapshot(model))
    assert torch.equal(images, images_before) and not images.requires_grad
    assert maps["norm_grad"]["bn3"].shape == (3, 2, 8, 8)


@pytest.mark.parametrize("failure", ["forward_raises", "target_out_of_range", "layer_runs_twice"])
def test_failing_call_leaves_no_trace(model: TracedNet, failure: str) -> None:
    images = torch.randn(2, 3, 16, 16)
    layers, targets = ["relu", "bn3"], [0, 1]
    if failure == "forward_raises":
        model.explode = True
    elif failure == "target_out_of_range":
        targets = [0, 4]
    else:
        shared = nn.ReLU()
        model.bn1.register_forward_hook(lambda m, a, out: shared(out))
        model.bn2.register_forward_hook(lambda m, a, out: shared(out))
        model.add_module("shared", shared)
        layers = ["shared"]
    before = snapshot(model)
    with pytest.raises((RuntimeError, ValueError)):
        compute_saliency(model, images, targets, layers, ALL_METHODS)
    assert_same(before, snapshot(model))


def test_in_place_ops_do_not_corrupt_captured_values(model: TracedNet) -> None:
    """bn3's output is overwritten by ``out += x`` and an in-place ReLU downstream: the maps
    must equal those of a copy whose ops are out-of-place."""
    images = torch.randn(2, 3, 16, 16)

    class OutOfPlace(TracedNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            out = torch.relu(self.bn3(self.conv3(x)) + x)
            return self.fc(self.drop(out.mean(dim=(2, 3))))

    reference = OutOfPlace()
    reference.load_state_dict(model.state_dict())
    reference.relu.inplace = False
    got = compute_saliency(model, images, [1, 2], ["bn3", "relu"], ALL_METHODS)
    want = compute_saliency(reference, images, [1, 2], ["bn3", "relu"], ALL_METHODS)
    for method in ALL_METHODS:
        for layer in ("bn3", "relu"):
            torch.testing.assert_close(got[method][layer], want[method][layer])


def test_torchvision_resnet_in_place_relu_flags_untouched() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5)
    reference = copy.deepcopy(net)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    images = torch.randn(2, 3, 32, 32)
    before = snapshot(net)
    layers = ["relu", "layer1.0.bn2", "layer2", "layer3"]  # layer4 is 1×1 at 32 px
    got = compute_saliency(net, images, [1, 3], layers, ALL_METHODS)
    want = compute_saliency(reference, images, [1, 3], layers, ALL_METHODS)
    for method in ALL_METHODS:
        for layer in layers:
            torch.testing.assert_close(got[method][layer], want[method][layer])
    assert_same(before, snapshot(net))


def test_frozen_model_and_grad_contexts_give_the_same_maps(model: TracedNet) -> None:
    images = torch.randn(2, 3, 16, 16)
    want = compute_saliency(model, images, [0, 3], ["relu", "bn3"], ALL_METHODS)
    frozen = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        got_no_grad = compute_saliency(frozen, images, [0, 3], ["relu", "bn3"], ALL_METHODS)
    with torch.inference_mode():  # as in Lightning's validation loop: inference tensors
        inference_images = images.clone()
        inference_targets = torch.tensor([0, 3])
        got_inference = compute_saliency(model, inference_images, inference_targets, ["relu", "bn3"], ALL_METHODS)
    for got in (got_no_grad, got_inference):
        for method in ALL_METHODS:
            for layer in ("relu", "bn3"):
                torch.testing.assert_close(got[method][layer], want[method][layer])
    assert all(not p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_gives_float32_maps(model: TracedNet, dtype: torch.dtype) -> None:
    images = torch.randn(2, 3, 16, 16)
    want = compute_saliency(model, images, [0, 3], ["relu", "bn3"], ALL_METHODS)
    low = copy.deepcopy(model).to(dtype)
    got = compute_saliency(low, images.to(dtype), [0, 3], ["relu", "bn3"], ALL_METHODS)
    for method in ALL_METHODS:
        for layer in ("relu", "bn3"):
            assert got[method][layer].dtype == torch.float32
            scale = want[method][layer].abs().max()
            torch.testing.assert_close(got[method][layer], want[method][layer], rtol=0.1, atol=0.1 * scale)


def test_autocast_gives_float32_maps(model: TracedNet) -> None:
    images = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = compute_saliency(model, images, [0, 3], ["relu", "bn3"], ALL_METHODS)
    for method in ALL_METHODS:
        for layer in ("relu", "bn3"):
            assert maps[method][layer].dtype == torch.float32
            assert torch.isfinite(maps[method][layer]).all()
