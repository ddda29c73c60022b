"""default_layers picks one layer per resolution; layer names are validated."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from saliency_monitor import default_layers
from saliency_monitor.engine.layers import validate_layer_names
from saliency_monitor.engine.model_io import eval_mode


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [
        ("resnet50", 224, ["relu", "layer1", "layer2", "layer3", "layer4"]),
        ("vgg16", 224, ["features.3", "features.8", "features.15", "features.22", "features.29", "avgpool"]),
        # vgg11 at 64 px: avgpool upsamples its 2×2 input to 7×7, left out
        ("vgg11", 64, ["features.1", "features.4", "features.9", "features.14", "features.19", "features"]),
        ("convnext_tiny", 224, ["features.1", "features.3", "features.5", "features"]),
        ("swin_t", 224, ["features.1", "features.3", "features.5", "norm"]),
        ("maxvit_t", 224, ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
        ("vit_b_16", 224, [f"encoder.layers.encoder_layer_{i}" for i in (1, 4, 7, 10)]),
    ],
)
def test_default_layers_on_torchvision_models(arch: str, size: int, expected: list[str]) -> None:
    model = getattr(torchvision.models, arch)()
    model.train()
    assert default_layers(model, torch.randn(2, 3, size, size)) == expected
    assert all(m.training for m in model.modules()), "train flags must be restored"
    assert all(not m._forward_hooks for m in model.modules()), "hooks must be removed"


def test_default_layers_skip_modules_that_run_twice_and_1x1() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.shared = nn.ReLU()
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.shared(self.a(x))
            x = self.shared(self.b(x))  # `shared` runs twice: ambiguous, skipped
            return self.fc(self.pool(self.down(x)).flatten(1))

    assert default_layers(Net(), torch.randn(1, 3, 8, 8)) == ["b", "down"]


def test_default_layers_without_spatial_outputs() -> None:
    with pytest.raises(ValueError, match="at least one module returning a 4-D"):
        default_layers(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2))


def test_validate_layer_names_suggests_close_names() -> None:
    model = torchvision.models.resnet18()
    assert validate_layer_names(model, "layer1") == ["layer1"]
    with pytest.raises(ValueError, match=r"but got 'layer5'\. Did you mean one of \[.*'layer1'"):
        validate_layer_names(model, ["layer5"])
    with pytest.raises(ValueError, match="duplicates: \\['layer1'\\]"):
        validate_layer_names(model, ["layer1", "layer1"])
    with pytest.raises(ValueError, match="at least one layer"):
        validate_layer_names(model, [])
    with pytest.raises(TypeError, match="layer names \\(str\\), but got 3"):
        validate_layer_names(model, [3])


def test_eval_mode_restores_flags_even_when_raising() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Dropout())
    model[1].eval()
    with pytest.raises(KeyError), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise KeyError
    assert [m.training for m in model.modules()] == [True, True, False]
