"""Bad input gets a ValueError/TypeError saying what was expected and what was given."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from saliency_monitor import compute_saliency


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layers": ["layer5"]}, ValueError,
         "Expected `layers` to be names from model.named_modules() or 'input', but got 'layer5'. "
         "Did you mean one of ['layer4', 'layer3', 'layer2', 'layer1', 'layer4.1']?"),
        ({"layers": ["fc"]}, ValueError,
         "Expected layer 'fc' to output a 4-D (B, K, H, W) tensor, but got shape (2, 5)."),
        ({"layers": ["layer1.0.relu"]}, ValueError,
         "Expected layer 'layer1.0.relu' to run once per forward pass, but it ran again"),
        ({"targets": [0, 5]}, ValueError,
         "Expected `targets` to be class indices in [0, 5), but got values in [0, 5]."),
        ({"targets": [[-1], [0]]}, ValueError,
         "Expected `targets` to be class indices in [0, 5), but got values in [-1, 0]."),
        ({"targets": [0, 1, 2]}, ValueError,
         "Expected `targets` of shape (B,) or (B, T) with B=2 and T>=1, but got shape (3, 1)."),
        ({"targets": torch.zeros(2, 1, 1, dtype=torch.long)}, ValueError,
         "Expected `targets` of shape (B,) or (B, T) with B=2 and T>=1, but got shape (2, 1, 1)."),
        ({"targets": torch.zeros(2, 0, dtype=torch.long)}, ValueError,
         "Expected `targets` of shape (B,) or (B, T) with B=2 and T>=1, but got shape (2, 0)."),
        ({"targets": [0.0, 1.0]}, TypeError,
         "Expected `targets` to hold integer class indices, but got dtype torch.float32."),
        ({"targets": "cat"}, TypeError, "Expected `targets` to be a tensor or nested sequence"),
        ({"methods": ["normgrad"]}, ValueError,
         "Expected `methods` to hold methods in ['grad_cam', 'gradient', 'linear_approx', 'lrp', 'norm_grad', "
         "'norm_grad_conv', 'norm_grad_selective', 'salient_relevance'] or 'extract:aggregation' with extract in "
         "['bias', 'scaling', 'conv1x1', 'conv3x3', 'conv3x3_depthwise', 'conv'] and aggregation in "
         "['sum', 'max', 'maxabs', 'norm', 'filter_norm'], but got 'normgrad'."),
        ({"methods": ["conv5x5:norm"]}, ValueError, "but got 'conv5x5:norm'."),
        ({"methods": []}, ValueError, "Expected `methods` to name at least one method, but got an empty list."),
        ({"methods": ["norm_grad", "norm_grad"]}, ValueError,
         "Expected distinct `methods`, but got duplicates: ['norm_grad']."),
        ({"methods": ["norm_grad_conv"], "layers": ["layer1"]}, ValueError,
         "Expected a torch.nn.Conv2d layer for ['norm_grad_conv'], but layer 'layer1' is Sequential."),
        ({"methods": ["conv:sum"], "layers": ["input"]}, ValueError,
         "Expected a torch.nn.Conv2d layer for ['conv:sum'], but layer 'input' is the input image."),
        ({"output_size": 0}, ValueError,
         "Expected `output_size` to be None, a positive int or (h, w), but got 0."),
        ({"output_size": (4, 4, 4)}, ValueError, "but got (4, 4, 4)."),
    ],
)
def test_bad_arguments(resnet: nn.Module, images: torch.Tensor, kwargs: dict, error: type, message: str) -> None:
    call = {"targets": [0, 1], "layers": ["layer2"], "methods": ["norm_grad"], **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        compute_saliency(resnet, images, **call)


@pytest.mark.parametrize(
    ("bad_images", "error", "message"),
    [
        (torch.randn(3, 32, 32), ValueError,
         "Expected `images` to be a 4-D (B, C, H, W) tensor, but got shape (3, 32, 32)."),
        (torch.zeros(2, 3, 32, 32, dtype=torch.bool), TypeError,
         "Expected `images` to be a floating-point or integer tensor, but got torch.bool."),
        ([[0.0]], TypeError, "Expected `images` to be a torch.Tensor, but got list."),
    ],
)
def test_bad_images(resnet: nn.Module, bad_images: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        compute_saliency(resnet, bad_images, [0, 1], ["layer2"])


def test_layer_never_reached(images: torch.Tensor) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    with pytest.raises(ValueError, match=re.escape("but it never ran ['unused']")):
        compute_saliency(Net(), images, [0, 1], ["conv", "unused"])


def test_model_must_return_logits(images: torch.Tensor) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=re.escape(
        "Expected `model` to return (B, C) class logits with B=2, but got shape (2, 4, 30, 30)."
    )):
        compute_saliency(model, images, [0, 1], ["0"])

    class DictModel(nn.Module):
        def forward(self, x: torch.Tensor) -> dict:
            return {"logits": x.mean(dim=(2, 3))}

    with pytest.raises(ValueError, match="class logits with B=2, but got dict"):
        compute_saliency(DictModel(), images, [0, 1], ["input"])


def test_layer_that_does_not_influence_the_logits(images: torch.Tensor) -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(3, 2, 3)
            self.dead = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.dead(x)
            return self.used(x).mean(dim=(2, 3))

    message = "Expected every layer to influence the logits, but ['dead'] do not."
    with pytest.raises(ValueError, match=re.escape(message)):
        compute_saliency(Branch(), images, [0, 1], ["used", "dead"])


def test_detached_layer_output(images: torch.Tensor) -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = self.conv(x)
            return features.mean(dim=(2, 3)) + x.mean() * 0

    with pytest.raises(ValueError, match="Expected the output of layer 'conv' to depend differentiably"):
        compute_saliency(Detached(), images, [0, 1], ["conv"])
