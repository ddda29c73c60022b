"""Activation checkpointing changes no map: plain and meta maps of a model running blocks
through ``torch.utils.checkpoint`` (reentrant, non-reentrant, ``checkpoint_sequential``) equal
those of the same model without it, at layers below, inside and above the checkpointed blocks,
and the model comes back untouched."""

from __future__ import annotations

import copy
import re
from typing import ClassVar

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint
import torchvision
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine.checkpointing import _run_directly, checkpoints_run_directly
from tests._trace import assert_same, snapshot
from tests.conftest import randomize_batchnorm

MODES = ["reentrant", "non_reentrant", "sequential_reentrant", "sequential_non_reentrant"]
NUM_CLASSES = 4


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``blocks`` on ``x``: every block but the last through ``checkpoint`` (``mode``) or plainly (None)."""
    if mode is None:
        return blocks(x)
    reentrant = not mode.endswith("non_reentrant")
    if mode.startswith("sequential"):
        return torch_checkpoint.checkpoint_sequential(blocks, len(blocks), x, use_reentrant=reentrant)
    for block in blocks[:-1]:
        x = torch_checkpoint.checkpoint(block, x, use_reentrant=reentrant)
    return blocks[-1](x)


class BlockNet(nn.Module):
    """A stem, three blocks (the first two checkpointed unless ``mode`` is None), a linear head."""

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(12, 8, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.blocks, self.stem(x), self.mode)
        return self.head(x.mean(dim=(2, 3)))


class CheckpointedResNet(nn.Module):
    """torchvision's resnet18 with ``layer2`` and ``layer3`` run through ``checkpoint`` (``mode``)."""

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.m = torchvision.models.resnet18(num_classes=NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
        x = run_blocks(nn.Sequential(m.layer2, m.layer3, m.layer4), x, self.mode)
        return m.fc(torch.flatten(m.avgpool(x), 1))


def pair(factory: type[nn.Module], mode: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module]:
    """(checkpointed, plain) copies of one seeded model; the checkpointed one in train mode with
    a frozen first convolution, some ``.grad`` set and one submodule in eval mode."""
    torch.manual_seed(0)
    plain = randomize_batchnorm(factory(), seed=0).to(dtype)
    checkpointed = copy.deepcopy(plain)
    checkpointed.mode = mode
    for model in (plain, checkpointed):
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.weight.requires_grad_(False)
    head = [m for m in checkpointed.modules() if isinstance(m, nn.Linear)][-1]
    head.weight.grad = torch.ones_like(head.weight)
    checkpointed.train()
    next(m for m in checkpointed.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    return checkpointed, plain.eval()


def images(size: int = 16, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def assert_same_maps(model: nn.Module, reference: nn.Module, x: torch.Tensor, **kwargs: object) -> None:
    """Plain and meta maps of ``model`` equal ``reference``'s, and ``model`` is left untouched."""
    before = snapshot(model)
    parameters = {n: id(p) for n, p in model.named_parameters()}
    for meta_lr in (None, 0.05):
        got = compute_saliency(model, x, [[0, 1], [3, 2]], meta_lr=meta_lr, **kwargs)  # type: ignore[arg-type]
        want = compute_saliency(reference, x, [[0, 1], [3, 2]], meta_lr=meta_lr, **kwargs)  # type: ignore[arg-type]
        for method, per_layer in want.items():
            for layer, value in per_layer.items():
                scale = float(value.abs().max())
                torch.testing.assert_close(
                    got[method][layer], value, rtol=1e-4, atol=1e-6 * scale,
                    msg=lambda text, m=method, at=layer, lr=meta_lr: f"{m} at {at}, meta_lr={lr}: {text}",
                )
    assert_same(before, snapshot(model))
    assert parameters == {n: id(p) for n, p in model.named_parameters()}
    assert "apply" not in vars(torch_checkpoint.CheckpointFunction)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("mode", MODES)
def test_block_net_maps_ignore_checkpointing(mode: str, task: str) -> None:
    model, reference = pair(BlockNet, mode)
    assert_same_maps(
        model, reference, images(),
        layers=["input", "stem", "blocks.0.3", "blocks.1", "blocks.2"],  # below, inside, at, above the blocks
        methods=["norm_grad_selective", "gradient", "linear_approx", "grad_cam", "lrp"],
        task=task, meta_params="trainable",
    )


@pytest.mark.parametrize("smooth", ["backward", "forward"])
@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_smoothed_real_conv_maps_ignore_checkpointing(mode: str, smooth: str) -> None:
    model, reference = pair(BlockNet, mode)
    assert_same_maps(
        model, reference, images(),
        layers=["stem.0", "blocks.0.0", "blocks.0.3", "blocks.2.0"],
        methods=["norm_grad_conv", "norm_grad_selective"], smooth=smooth,
    )


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_resnet18_maps_ignore_checkpointing(mode: str) -> None:
    model, reference = pair(CheckpointedResNet, mode, torch.float32)  # float32: twice as fast here
    assert_same_maps(
        model, reference, images(size=32, dtype=torch.float32),
        layers=["m.layer1", "m.layer2.1", "m.layer3.0.conv1", "m.layer3"],  # layer4 is 1×1 at 32 px
        methods=["norm_grad_selective", "gradient", "grad_cam"],
    )


class Raising(nn.Module):
    """A reentrant checkpoint whose function notes whether gradients were enabled inside
    (in a class attribute, so that LRP's private copy notes it too)."""

    grad_enabled: ClassVar[list[bool]] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return torch.relu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch_checkpoint.checkpoint(self.block, x, use_reentrant=True).mean(dim=(2, 3)))


@pytest.mark.parametrize("meta_lr", [None, 0.05])
@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_checkpointing_is_restored_after_a_pass_that_raises(method: str, meta_lr: float | None) -> None:
    model = Raising()
    model.grad_enabled.clear()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape("Expected `targets` to be class indices in [0, 3)")):
        compute_saliency(model, x, [0, 7], ["conv"], [method], meta_lr=meta_lr)
    assert model.grad_enabled and all(model.grad_enabled), "the block ran under checkpoint's no_grad"
    assert_same(before, snapshot(model))
    assert "apply" not in vars(torch_checkpoint.CheckpointFunction)
    model.grad_enabled.clear()
    logits = model(x.requires_grad_(True))
    assert model.grad_enabled == [False]  # reentrant checkpointing is back: the forward under no_grad
    with pytest.raises(RuntimeError, match=re.escape("incompatible with .grad()")):
        torch.autograd.grad(logits.sum(), x)


def test_checkpoints_run_directly_nests_and_restores_on_error() -> None:
    function_class = torch_checkpoint.CheckpointFunction
    original = function_class.apply
    with pytest.raises(KeyError), checkpoints_run_directly():
        with checkpoints_run_directly():
            assert function_class.apply(torch.neg, True, torch.ones(1)).item() == -1
        assert vars(function_class)["apply"].__func__ is _run_directly
        raise KeyError
    assert "apply" not in vars(function_class)
    assert function_class.apply == original


def test_without_checkpoint_function_nothing_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch_checkpoint, "CheckpointFunction")
    with checkpoints_run_directly():
        assert not hasattr(torch_checkpoint, "CheckpointFunction")


def test_an_unexpected_checkpoint_function_call_is_refused() -> None:
    message = (
        "Expected torch.utils.checkpoint to call CheckpointFunction.apply(function, preserve_rng_state, *args), "
        "but got (None, True, ...): this torch version is not supported for models using "
        "checkpoint(..., use_reentrant=True); use use_reentrant=False."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _run_directly(None, True)  # type: ignore[arg-type]
