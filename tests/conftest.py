"""Shared models for the reference and peer tests: small, seeded, float64.

``SmallNet`` packs every Conv2d geometry the real-conv extract has to handle into a
32x32-input network: stride 2, dilation 2, groups=2, padding_mode="reflect", padding="same"
with an even kernel (4x4, and 2x2 dilated with circular padding), and an asymmetric
strided / dilated / grouped / replicate-padded conv. It also has BatchNorm with random
statistics and in-place ReLUs, so the engine's clone-on-capture is exercised.

``make_resnet18`` / ``make_vgg11`` are torchvision's architectures with 5 classes, random
(seeded) weights and random BatchNorm statistics; vgg11's 25088x4096x4096 classifier head is
replaced by a narrow one (25088 -> 32 -> 5) so that building and running it stays cheap;
``features`` and ``avgpool`` are torchvision's own (at 32x32 ``avgpool`` upsamples a 1x1 map to
7x7: not a layer of its own, the last 2x2 map is ``features.15``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

NUM_CLASSES = 5


class SmallNet(nn.Module):
    """Every conv geometry; spatial sizes for a 32x32 input in the comments."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # 32x32
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 16x16, stride 2
        self.relu2 = nn.ReLU(inplace=True)
        self.dilated = nn.Conv2d(8, 12, 3, padding=2, dilation=2)  # 16x16, dilation 2
        self.relu3 = nn.ReLU(inplace=True)
        self.grouped = nn.Conv2d(12, 8, 3, padding=1, groups=2)  # 16x16, 2 groups (6 -> 4 each)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu4 = nn.ReLU(inplace=True)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")  # 16x16
        self.relu5 = nn.ReLU(inplace=True)
        self.same4 = nn.Conv2d(8, 8, 4, padding="same")  # 16x16, even kernel: pads 1 left, 2 right
        self.relu6 = nn.ReLU(inplace=True)
        self.same2 = nn.Conv2d(8, 8, 2, padding="same", dilation=3, padding_mode="circular")  # 16x16
        self.relu7 = nn.ReLU(inplace=True)
        self.mixed = nn.Conv2d(  # 8x14: every parameter asymmetric
            8, 8, (3, 5), stride=(2, 1), padding=(1, 3), dilation=(1, 2), groups=4,
            padding_mode="replicate",
        )
        self.relu8 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.down(x))
        x = self.relu3(self.dilated(x))
        x = self.relu4(self.bn2(self.grouped(x)))
        x = self.relu5(self.reflect(x))
        x = self.relu6(self.same4(x))
        x = self.relu7(self.same2(x))
        x = self.relu8(self.mixed(x))
        return self.fc(self.pool(x).flatten(1))


SMALLNET_CONV_LAYERS = ["conv1", "down", "dilated", "grouped", "reflect", "same4", "same2", "mixed"]
SMALLNET_LAYERS = ["input", "conv1", "bn1", "relu1", *SMALLNET_CONV_LAYERS[1:]]


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                k = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(k, generator=generator))
                module.bias.copy_(0.2 * torch.randn(k, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(k, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(k, generator=generator))
    return model


def make_smallnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(SmallNet(), seed).double().eval()


def make_resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    return randomize_batchnorm(model, seed).double().eval()


def make_vgg11(seed: int = 0) -> nn.Module:
    """torchvision vgg11 (features, avgpool) with a narrow classifier head."""
    with torch.device("meta"):  # skip allocating and initialising the 120M-parameter head
        model = torchvision.models.vgg11(num_classes=NUM_CLASSES)
    torch.manual_seed(seed)
    model.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, NUM_CLASSES)
    )
    assert all(p.device.type == "cpu" for p in model.parameters())
    return model.double().eval()


def make_images(batch: int, size: int | tuple[int, int], seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every ``inplace`` flag (ReLU, Dropout, ...) off."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return clone


# (factory, input size, layers for the non-conv methods, Conv2d layers for the "conv" extract)
MODEL_SPECS = {
    "smallnet": (make_smallnet, 32, SMALLNET_LAYERS, SMALLNET_CONV_LAYERS),
    "resnet18": (
        make_resnet18, 48,
        ["input", "relu", "layer1", "layer1.0.bn2", "layer2.0.conv1", "layer2.0.downsample.0", "layer4"],
        ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.1.conv2"],
    ),
    "vgg11": (
        make_vgg11, 32,
        ["input", "features.3", "features.8", "features.15"],
        ["features.0", "features.3", "features.8"],
    ),
}


@pytest.fixture(scope="session")
def smallnet() -> nn.Module:
    return make_smallnet()


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return make_resnet18()


@pytest.fixture(scope="session")
def vgg11() -> nn.Module:
    return make_vgg11()


@pytest.fixture
def wandb_env(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Offline W&B whose every file (artifact staging, cache, config) lands in tmp_path."""
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path
