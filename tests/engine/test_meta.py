"""Meta-saliency: exact against a literal deepcopy + SGD step, batch-invariant, and the
model never touched."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from saliency_monitor import DEFAULT_META_LR, compute_saliency
from tests._trace import assert_same, snapshot

METHODS = ["norm_grad", "norm_grad_selective", "linear_approx", "grad_cam", "gradient"]
CONV_METHODS = ["norm_grad_conv", "conv:filter_norm", "conv:sum"]  # Conv2d layers only


class MetaNet(nn.Module):
    """BatchNorm with non-trivial running stats, a frozen conv, in-place ReLU, tied weights."""

    def __init__(self, num_classes: int = 5, tie: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        if tie:
            self.conv3.weight = self.conv2.weight  # tied: one parameter used by two modules
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.conv2(x))
        x = torch.tanh(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def make_net(tie: bool = False) -> MetaNet:
    torch.manual_seed(0)
    net = MetaNet(tie=tie).double()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
    net.train()  # saliency and the meta step run in eval mode regardless
    return net


def literal_meta_maps(model, images, targets, layers, methods, lr, task, trainable_only=False):
    """The reference: per image and target, a deep copy, one SGD step on that loss, maps."""
    rows = []
    for b in range(images.shape[0]):
        row = []
        for c in targets[b].tolist():
            clone = copy.deepcopy(model).eval()
            params = [p for p in clone.parameters() if p.requires_grad or not trainable_only]
            for p in clone.parameters():
                p.requires_grad_(True)
            logits = clone(images[b : b + 1])
            if task == "multiclass":
                loss = F.cross_entropy(logits, torch.tensor([c]))
            else:
                loss = F.binary_cross_entropy_with_logits(logits[0, c], torch.tensor(1.0, dtype=logits.dtype))
            loss.backward()
            if lr > 0:
                torch.optim.SGD(params, lr=lr).step()
            else:  # torch's SGD refuses lr < 0: the same update by hand
                with torch.no_grad():
                    for p in params:
                        p -= lr * p.grad
            row.append(compute_saliency(clone, images[b : b + 1], [c], layers, methods))
        rows.append(row)
    return {
        m: {layer: torch.cat([torch.cat([r[m][layer] for r in row], 1) for row in rows]) for layer in layers}
        for m in methods
    }


def assert_maps_close(got, want, rtol=1e-4):
    for method, per_layer in want.items():
        for layer, expected in per_layer.items():
            scale = expected.abs().amax().clamp_min(1e-12)
            torch.testing.assert_close(got[method][layer], expected, rtol=0, atol=rtol * float(scale),
                                       msg=lambda m, method=method, layer=layer: f"{method} at {layer}: {m}")


@pytest.mark.parametrize(("task", "lr"), [("multiclass", 0.05), ("multilabel", 0.05), ("multiclass", -0.05)])
def test_matches_literal_reference(task: str, lr: float) -> None:
    net = make_net()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 4], [2, 2], [3, 1]])
    layers = ["relu", "conv2", "conv3"]
    got = compute_saliency(net, images, targets, layers, METHODS, meta_lr=lr, task=task)
    want = literal_meta_maps(net, images, targets, layers, METHODS, lr, task)
    assert_maps_close(got, want)
    conv = compute_saliency(net, images, targets, ["conv2", "conv3"], CONV_METHODS, meta_lr=lr, task=task)
    assert_maps_close(conv, literal_meta_maps(net, images, targets, ["conv2", "conv3"], CONV_METHODS, lr, task))
    plain = compute_saliency(net, images, targets, layers, METHODS)
    assert not torch.allclose(got["norm_grad"]["conv3"], plain["norm_grad"]["conv3"]), "the step must matter"


def test_matches_literal_reference_on_resnet18() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[1, 3], [0, 2]])
    methods = {("relu", "layer2", "layer3"): METHODS, ("layer3.0.conv1",): CONV_METHODS[:1]}
    for layers, names in methods.items():
        got = compute_saliency(net, images, targets, layers, names, meta_lr=DEFAULT_META_LR)
        want = literal_meta_maps(net, images, targets, layers, names, DEFAULT_META_LR, "multiclass")
        assert_maps_close(got, want)


def test_tied_weights_step_once_with_the_summed_gradient() -> None:
    net = make_net(tie=True)
    assert net.conv3.weight is net.conv2.weight
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 3]])
    got = compute_saliency(net, images, targets, ["conv2", "conv3"], METHODS, meta_lr=0.1)
    assert_maps_close(got, literal_meta_maps(net, images, targets, ["conv2", "conv3"], METHODS, 0.1, "multiclass"))


def test_trainable_only_leaves_frozen_parameters_fixed() -> None:
    net = make_net()
    net.conv1.requires_grad_(False)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0], [3]])
    got = compute_saliency(net, images, targets, ["relu", "conv3"], METHODS, meta_lr=0.1, meta_params="trainable")
    want = literal_meta_maps(net, images, targets, ["relu", "conv3"], METHODS, 0.1, "multiclass", trainable_only=True)
    assert_maps_close(got, want)
    everything = compute_saliency(net, images, targets, ["relu", "conv3"], METHODS, meta_lr=0.1)
    assert not torch.allclose(everything["norm_grad"]["relu"], got["norm_grad"]["relu"])


def test_batch_invariance_and_small_step_limit() -> None:
    net = make_net()
    images = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])
    layers = ["relu", "conv3"]
    batched = compute_saliency(net, images, targets, layers, METHODS, meta_lr=0.05)
    for b in range(4):
        alone = compute_saliency(net, images[b : b + 1], targets[b : b + 1], layers, METHODS, meta_lr=0.05)
        for m in METHODS:
            for layer in layers:
                torch.testing.assert_close(alone[m][layer][0], batched[m][layer][b], rtol=1e-6, atol=1e-9)
    plain = compute_saliency(net, images, targets, layers, METHODS)
    errors = []
    for lr in (1e-2, 1e-4, 1e-6):
        meta = compute_saliency(net, images, targets, layers, METHODS, meta_lr=lr)
        errors.append(max(float((meta[m][layer] - plain[m][layer]).abs().max() / plain[m][layer].abs().max())
                          for m in METHODS for layer in layers))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4, errors


def test_model_is_never_touched() -> None:
    net = make_net(tie=True)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    net.conv1.weight.requires_grad_(False)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = snapshot(net)
    compute_saliency(net, images, [[0, 1], [2, 3]], ["relu", "conv3"], METHODS, meta_lr=0.5)
    compute_saliency(net, images, [1, 2], ["relu"], ["norm_grad"], meta_lr=0.5, task="multilabel")
    with pytest.raises(ValueError):
        compute_saliency(net, images, [1, 7], ["relu"], ["norm_grad"], meta_lr=0.5)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta_lr": 0}, "Expected `meta_lr` to be a finite non-zero number, but got 0."),
        ({"meta_lr": math.nan}, "Expected `meta_lr` to be a finite non-zero number, but got nan."),
        ({"meta_lr": math.inf}, "Expected `meta_lr` to be a finite non-zero number, but got inf."),
        ({"meta_lr": True}, "Expected `meta_lr` to be a finite non-zero number, but got True."),
        ({"meta_lr": "0.1"}, "Expected `meta_lr` to be a finite non-zero number, but got '0.1'."),
        ({"meta_lr": 0.1, "task": "regression"},
         "Expected `task` to be one of ['multiclass', 'multilabel'], but got 'regression'."),
        ({"meta_lr": 0.1, "meta_params": "some"},
         "Expected `meta_params` to be one of ['all', 'trainable'], but got 'some'."),
    ],
)
def test_bad_meta_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compute_saliency(make_net(), torch.randn(1, 3, 8, 8, dtype=torch.float64), [0], ["relu"], **kwargs)


def test_models_without_steppable_parameters() -> None:
    class NoParams(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 2).flatten(1)

    no_params = "Expected `model` to have parameters for the meta step, but it has none."
    with pytest.raises(ValueError, match=re.escape(no_params)):
        compute_saliency(NoParams(), torch.randn(1, 1, 4, 4), [0], ["input"], meta_lr=0.1)
    frozen = make_net().requires_grad_(False)
    no_trainable = "parameters with requires_grad=True for the meta step, but it has none"
    with pytest.raises(ValueError, match=re.escape(no_trainable)):
        compute_saliency(frozen, torch.randn(1, 3, 8, 8, dtype=torch.float64), [0], ["relu"], meta_lr=0.1,
                         meta_params="trainable")


def test_repeated_targets_of_an_image_are_computed_once() -> None:
    net = make_net()
    images = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        distinct = compute_saliency(net, images, [[1, 2, 3]], ["conv3"], METHODS, meta_lr=0.05)
        forwards_distinct = len(calls)
        calls.clear()
        repeated = compute_saliency(net, images, [[2, 2, 1, 2]], ["conv3"], METHODS, meta_lr=0.05)
    finally:
        handle.remove()
    assert (forwards_distinct, len(calls)) == (1 + 3, 1 + 2)  # θ forward, then one per distinct class
    for m in METHODS:
        got = repeated[m]["conv3"][0]
        want = distinct[m]["conv3"][0]
        torch.testing.assert_close(got[[0, 1, 3]], want[[1, 1, 1]], rtol=0, atol=0)
        torch.testing.assert_close(got[2], want[0], rtol=0, atol=0)
