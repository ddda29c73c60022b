"""compute_saliency against independent implementations: pytorch-grad-cam and captum.

* ``grad_cam`` = pytorch_grad_cam.GradCAM: its raw per-layer cam (``get_cam_image`` on the
  activations and gradients it recorded, then relu) at the layer's resolution, and its
  final output (min-max normalised, cv2-resized to the input, normalised again) against
  ours put through the same normalisation and a bilinear resize;
* ``grad_cam`` = captum ``LayerGradCam(relu_attributions=True)``;
* ``linear_approx`` = captum ``LayerGradientXActivation`` summed over channels, and at
  ``"input"`` captum ``InputXGradient`` summed over channels;
* ``gradient`` at ``"input"`` = captum ``Saliency(abs=True)``'s max over channels.

The peers get a deep copy with in-place flags off (their hooks are not built for in-place
ops after the layer); ours runs on the original model, in-place ReLUs included. Inputs are
not square, so an (h, w) mix-up shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import InputXGradient, LayerGradCam, LayerGradientXActivation, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from saliency_monitor import compute_saliency
from tests.conftest import make_images, without_inplace

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

TARGETS = torch.tensor([[1, 4], [2, 1]])  # (B=2, T=2)
CASES = {
    # model fixture: (input (h, w), layers)
    "smallnet": ((32, 40), ["relu1", "grouped", "same2", "mixed"]),
    "resnet18": ((48, 64), ["layer1", "layer2.0.conv1", "layer3", "layer4"]),
}
PARAMS = [(name, layer) for name, (_, layers) in CASES.items() for layer in layers]
IDS = [f"{m}-{layer}" for m, layer in PARAMS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small float64 work: one thread avoids OpenMP oversubscription on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_OURS: dict[str, dict] = {}


def ours(request: pytest.FixtureRequest, model_name: str) -> tuple[nn.Module, Tensor, dict]:
    """The model, images and our maps at every layer of the case, computed once."""
    if model_name not in _OURS:
        size, layers = CASES[model_name]
        model = request.getfixturevalue(model_name)
        images = make_images(TARGETS.shape[0], size, seed=7)
        maps = compute_saliency(model, images, TARGETS, ["input", *layers], ["grad_cam", "linear_approx", "gradient"])
        _OURS[model_name] = (model, images, maps)
    return _OURS[model_name]


def assert_close_scaled(actual: Tensor, expected: Tensor, what: str, rel: float = 2e-5) -> None:
    """Max |difference| relative to each map's largest |value| (ours are float32)."""
    actual, expected = actual.double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.flatten(-2).abs().amax(-1)[..., None, None].clamp_min(1e-300)
    error = ((actual - expected).abs() / scale).max().item()
    assert error <= rel, f"{what}: max error {error:.3g} of the map's max |value| (allowed {rel})"


# --------------------------------------------------------------------------- pytorch-grad-cam


def pytorch_grad_cam(model: nn.Module, layer: str, images: Tensor, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(raw relu'd cam at the layer's resolution (B, h, w), final output (B, H, W))."""
    peer = without_inplace(model)
    cam = GradCAM(model=peer, target_layers=[dict(peer.named_modules())[layer]])
    try:
        targets = [ClassifierOutputTarget(c) for c in classes]
        final = cam(input_tensor=images, targets=targets)
        recorded = cam.activations_and_grads
        assert len(recorded.activations) == len(recorded.gradients) == 1
        raw = cam.get_cam_image(images, layer, targets, recorded.activations[0].numpy(),
                                recorded.gradients[0].numpy(), eigen_smooth=False)
        return np.maximum(raw, 0), final
    finally:
        cam.activations_and_grads.release()


def min_max(maps: Tensor) -> Tensor:
    """pytorch_grad_cam.utils.image.scale_cam_image's normalisation, per (H, W) map."""
    low = maps.flatten(-2).amin(-1)[..., None, None]
    maps = maps - low
    return maps / (1e-7 + maps.flatten(-2).amax(-1)[..., None, None])


@pytest.mark.parametrize(("model_name", "layer"), PARAMS, ids=IDS)
def test_grad_cam_matches_pytorch_grad_cam(request: pytest.FixtureRequest, model_name: str, layer: str) -> None:
    model, images, maps = ours(request, model_name)
    mine = maps["grad_cam"][layer]  # (B, T, h, w) float32
    for t in range(TARGETS.shape[1]):
        raw, final = pytorch_grad_cam(model, layer, images, TARGETS[:, t].tolist())
        assert raw.max() > 0, f"{layer}: degenerate Grad-CAM for targets {TARGETS[:, t].tolist()}"
        assert_close_scaled(mine[:, t], torch.from_numpy(raw), f"{model_name} {layer} t={t} raw cam")
        # their output: normalise, cv2-resize to the input (bilinear, half-pixel), normalise again
        assert final.shape == (images.shape[0], *images.shape[2:])
        resized = F.interpolate(min_max(mine[:, t : t + 1].double()), size=images.shape[2:], mode="bilinear",
                                align_corners=False)[:, 0]
        expected = min_max(resized.float()).double()
        np.testing.assert_allclose(final, expected.numpy(), rtol=0, atol=1e-5, err_msg=f"{layer} t={t}")


# --------------------------------------------------------------------------- captum


@pytest.mark.parametrize(("model_name", "layer"), PARAMS, ids=IDS)
def test_grad_cam_matches_captum_layer_grad_cam(request: pytest.FixtureRequest, model_name: str, layer: str) -> None:
    model, images, maps = ours(request, model_name)
    peer = without_inplace(model)
    attribution = LayerGradCam(peer, dict(peer.named_modules())[layer])
    for t in range(TARGETS.shape[1]):
        theirs = attribution.attribute(images, target=TARGETS[:, t].tolist(), relu_attributions=True)
        assert theirs.shape[1] == 1
        assert_close_scaled(maps["grad_cam"][layer][:, t], theirs[:, 0].detach(), f"{model_name} {layer} t={t}")


@pytest.mark.parametrize(("model_name", "layer"), PARAMS, ids=IDS)
def test_linear_approx_matches_captum_layer_gradient_x_activation(
    request: pytest.FixtureRequest, model_name: str, layer: str
) -> None:
    model, images, maps = ours(request, model_name)
    peer = without_inplace(model)
    attribution = LayerGradientXActivation(peer, dict(peer.named_modules())[layer])
    for t in range(TARGETS.shape[1]):
        theirs = attribution.attribute(images, target=TARGETS[:, t].tolist()).detach()  # (B, K, h, w)
        assert_close_scaled(maps["linear_approx"][layer][:, t], theirs.sum(1), f"{model_name} {layer} t={t}")


@pytest.mark.parametrize("model_name", list(CASES))
def test_input_methods_match_captum_input_x_gradient_and_saliency(
    request: pytest.FixtureRequest, model_name: str
) -> None:
    model, images, maps = ours(request, model_name)
    peer = without_inplace(model)
    for t in range(TARGETS.shape[1]):
        target = TARGETS[:, t].tolist()
        x_grad = InputXGradient(peer).attribute(images.clone().requires_grad_(True), target=target).detach()
        assert_close_scaled(maps["linear_approx"]["input"][:, t], x_grad.sum(1), f"{model_name} input x grad t={t}")
        saliency = Saliency(peer).attribute(images.clone().requires_grad_(True), target=target, abs=True).detach()
        assert_close_scaled(maps["gradient"]["input"][:, t], saliency.amax(1), f"{model_name} saliency t={t}")
