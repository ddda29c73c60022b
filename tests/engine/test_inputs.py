"""Inputs that used to stop the engine: uint8 images (converted inside ``forward``) and
single-logit binary classifiers (``two_class_logits``)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine import two_class_logits
from saliency_monitor.engine.model_io import model_logits
from saliency_monitor.engine.task import class_loss, class_probabilities

LAYERS = ["body.0", "body.2"]
MEAN, STD = 0.5, 0.25


def body(outputs: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs),
    )


class Net(nn.Module):
    """``body`` on normalised images; ``uint8=True``: converts raw uint8 pixels itself."""

    def __init__(self, outputs: int = 3, uint8: bool = False) -> None:
        super().__init__()
        self.body = body(outputs)
        self.uint8 = uint8

    def forward(self, x: Tensor) -> Tensor:
        if self.uint8:
            x = (x.float() / 255 - MEAN) / STD
        return self.body(x)


def pixels(n: int = 2, size: int = 8) -> Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def normalised(images: Tensor) -> Tensor:
    return (images.float() / 255 - MEAN) / STD


# --------------------------------------------------------------------------- uint8 images


@pytest.mark.parametrize("meta_lr", [None, 0.1])
@pytest.mark.parametrize("methods", [["norm_grad_selective", "grad_cam", "norm_grad_conv"], ["lrp"]])
def test_uint8_images_give_the_maps_of_the_converted_float_images(methods: list[str], meta_lr: float | None) -> None:
    raw, converted = Net(uint8=True), Net()
    converted.load_state_dict(raw.state_dict())
    targets = torch.tensor([[0, 2], [1, 1]])
    layers = ["body.2"] if "norm_grad_conv" in methods else LAYERS
    got = compute_saliency(raw, pixels(), targets, layers, methods, meta_lr=meta_lr)
    expected = compute_saliency(converted, normalised(pixels()), targets, layers, methods, meta_lr=meta_lr)
    for method in methods:
        for layer in layers:
            assert got[method][layer].shape == expected[method][layer].shape
            torch.testing.assert_close(got[method][layer], expected[method][layer], rtol=1e-4, atol=1e-6)


def test_uint8_images_with_default_layers() -> None:
    maps = compute_saliency(Net(uint8=True), pixels(), [0, 1], methods=["norm_grad", "gradient"], output_size=8)
    assert set(maps["norm_grad"]) == {"body.1", "body.3"}  # the ReLUs finish last at 8 and 4 px
    assert maps["norm_grad"]["body.1"].shape == (2, 1, 8, 8) and maps["gradient"]["body.3"].isfinite().all()


def test_uint8_images_and_a_frozen_model() -> None:
    model = Net(uint8=True).requires_grad_(False)  # no parameter and no image needs a gradient
    frozen = compute_saliency(model, pixels(), [0, 1], LAYERS, ["norm_grad"], meta_lr=0.1)
    trainable = compute_saliency(model.requires_grad_(True), pixels(), [0, 1], LAYERS, ["norm_grad"], meta_lr=0.1)
    for layer in LAYERS:
        torch.testing.assert_close(frozen["norm_grad"][layer], trainable["norm_grad"][layer])


@pytest.mark.parametrize("methods", [["norm_grad"], ["lrp"]])
def test_the_input_layer_needs_floating_point_images(methods: list[str]) -> None:
    message = (
        "Expected floating-point images for layer 'input' (its maps differentiate the images), but got torch.uint8 "
        "images. Choose hidden layers only, or convert the images to float before the model."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        compute_saliency(Net(uint8=True), pixels(), [0, 1], ["input", "body.0"], methods)


def test_bool_images_are_refused() -> None:
    with pytest.raises(TypeError, match=re.escape("Expected `images` to be a floating-point or integer tensor, but "
                                                  "got torch.bool.")):
        compute_saliency(Net(uint8=True), pixels() > 128, [0, 1], LAYERS)


# --------------------------------------------------------------------------- single-logit binary classifiers


def test_two_class_logits_softmax_and_loss_are_the_binary_ones() -> None:
    z = torch.tensor([[-3.0], [0.0], [1.5]])
    logits = two_class_logits()(z)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(class_probabilities(logits, "multiclass")[:, 1], torch.sigmoid(z[:, 0]))
    for b in range(3):
        for c in (0, 1):
            bce = F.binary_cross_entropy_with_logits(z[b], torch.tensor([float(c)]))
            torch.testing.assert_close(class_loss(logits[b], torch.tensor(c), "multiclass"), bce)


def test_two_class_logits_composes_with_output_to_logits_and_accepts_b_logits() -> None:
    z = torch.tensor([0.5, -2.0])
    torch.testing.assert_close(two_class_logits(lambda out: out["logit"])({"logit": z}),
                               torch.tensor([[-0.25, 0.25], [1.0, -1.0]]))
    with pytest.raises(ValueError, match=re.escape(
            "Expected a single-logit binary classifier's (B, 1) or (B,) logits, but got shape (2, 3).")):
        two_class_logits()(torch.zeros(2, 3))


def test_a_single_logit_model_is_explained_as_two_classes() -> None:
    model, images = Net(outputs=1), normalised(pixels())
    to_logits = two_class_logits()
    maps = compute_saliency(model, images, [[0, 1], [1, 0]], LAYERS, ["linear_approx"], output_to_logits=to_logits)
    for layer in LAYERS:  # class 0 explains -z/2, class 1 explains z/2
        value = maps["linear_approx"][layer]
        torch.testing.assert_close(value[0, 0], -value[0, 1])
        torch.testing.assert_close(value[1, 0], -value[1, 1])
    assert model_logits(model, images, to_logits).shape == (2, 2)


def test_the_meta_step_of_a_single_logit_model_descends_its_binary_cross_entropy() -> None:
    """Class 1's multiclass loss is BCE toward 1 = the raw logit's "multilabel" loss; the map
    of class 1 backpropagates z/2, half the raw logit."""
    model, images = Net(outputs=1), normalised(pixels())
    two = compute_saliency(model, images, [1, 1], LAYERS, ["linear_approx"], meta_lr=0.5,
                           output_to_logits=two_class_logits())
    raw = compute_saliency(model, images, [0, 0], LAYERS, ["linear_approx"], meta_lr=0.5, task="multilabel")
    for layer in LAYERS:
        torch.testing.assert_close(two["linear_approx"][layer], raw["linear_approx"][layer] / 2)


def test_a_single_logit_output_is_told_about_two_class_logits() -> None:
    message = (
        "Expected the model to map (B, C_in, H, W) images to (B, C) class logits with C >= 2, but got shape (2, 1) "
        "for B=2 (a single-logit binary classifier: pass `output_to_logits=two_class_logits(...)`)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        model_logits(Net(outputs=1), normalised(pixels()))
