"""Tiny stand-ins for what the documentation's snippets leave to the reader or download.

- ``resnet18`` / ``resnet50``: torchvision's ResNet architectures (the same blocks, the same
  module names, so every layer name a snippet uses exists) at 1/8 of the width, random init,
  1000 classes; ``weights=`` is accepted and ignored (nothing is downloaded).
- ``model`` and ``datamodule``, the names the snippets call "your LightningModule" and "your
  LightningDataModule": the 16-px, 3-class classifier of the callback tests
  (``tests/_fits.py``) and 32 + 16 images of its data.
- ``model`` on the architectures page, which names a ViT's and a staged model's layers: a
  module with those attributes (``blocks``, ``stage2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tests._fits import Classifier, DataModule

WIDTH = 8
"""Channels of the first stage (torchvision: 64)."""


class NarrowResNet(torchvision.models.ResNet):
    """torchvision's ResNet with every stage ``WIDTH / 64`` as wide; forward is torchvision's."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = WIDTH, 1, 1, 64
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, WIDTH, layers[0])
        self.layer2 = self._make_layer(block, 2 * WIDTH, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * WIDTH, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * WIDTH, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * WIDTH * block.expansion, num_classes)


def resnet18(*, weights: Any = None, progress: bool = True, num_classes: int = 1000) -> nn.Module:
    return NarrowResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(*, weights: Any = None, progress: bool = True, num_classes: int = 1000) -> nn.Module:
    return NarrowResNet(Bottleneck, [3, 4, 6, 3], num_classes)


RESNETS = {"resnet18": resnet18, "resnet50": resnet50}


class LayerNames(nn.Module):
    """The layer attributes the architectures page declares layouts on (timm's ViT ``blocks``,
    a staged model's ``stage2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(12))
        self.stage2 = nn.Identity()


PAGE_STAND_INS: dict[str, Callable[[], dict[str, Any]]] = {
    "docs/pages/architectures.md": lambda: {"model": LayerNames()},
}
"""Per page, names that replace the default stand-ins."""


def lightning_stand_ins() -> dict[str, Any]:
    """``model`` and ``datamodule``: enough images for the monitor's default 16 + 16 probes."""
    return {"model": Classifier(), "datamodule": DataModule(num_train=32, num_val=16)}
