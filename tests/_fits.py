"""Tiny real Lightning fits for the callback tests (CPU, a few seconds each)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

NUM_CLASSES = 3
SIZE = 16


class TinyNet(nn.Module):
    """conv-bn-relu, two stride-2 stages, pooled linear head: layers at 16, 8 and 4 px."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1))


class Classifier(pl.LightningModule):
    def __init__(self, multilabel: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.net = TinyNet()
        self.multilabel = multilabel
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> Tensor:
        images, labels = batch
        logits = self(images)
        if self.multilabel:
            if isinstance(labels, (list, tuple)):  # detection-style target dicts
                labels = torch.stack([
                    torch.zeros(NUM_CLASSES).index_fill_(0, t["labels"], 1.0) for t in labels
                ])
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def square(c: int) -> tuple[int, int, int, int]:
    """Class c's square: (row0, col0) in quadrant c, 4 px wide."""
    row, col = divmod(c, 2)
    return row * 8 + 2, col * 8 + 2, row * 8 + 6, col * 8 + 6


def draw_images(classes: list[list[int]], seed: int) -> Tensor:
    """Noise plus, for each class present, a bright square in channel c % 3 at square(c)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(len(classes), 3, SIZE, SIZE, generator=generator) * 0.5
    for i, present in enumerate(classes):
        for c in present:
            r0, c0, r1, c1 = square(c)
            images[i, c % 3, r0:r1, c0:c1] += 2.0
    return images


def class_images(labels: Tensor, seed: int) -> Tensor:
    return draw_images([[c] for c in labels.tolist()], seed)


def multiclass_loaders(num_train: int = 24, num_val: int = 12, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    train_labels = torch.arange(num_train) % NUM_CLASSES
    val_labels = torch.arange(num_val) % NUM_CLASSES
    train = TensorDataset(class_images(train_labels, 0), train_labels)
    val = TensorDataset(class_images(val_labels, 1), val_labels)
    generator = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(val, batch_size=batch_size),
    )


class BoxDataset(Dataset):
    """Multilabel images with torchvision-detection-style targets {"labels", "boxes"} (xyxy)."""

    def __init__(self, count: int, seed: int) -> None:
        self.classes = [[i % NUM_CLASSES] + ([(i + 1) % NUM_CLASSES] if i % 2 == 0 else []) for i in range(count)]
        self.images = draw_images(self.classes, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        present = self.classes[index]
        boxes = [[c0, r0, c1, r1] for r0, c0, r1, c1 in map(square, present)]
        return self.images[index], {"labels": torch.tensor(present), "boxes": torch.tensor(boxes, dtype=torch.float32)}


def collate_pairs(batch: list) -> tuple[Tensor, list]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def multilabel_loaders(num_train: int = 24, num_val: int = 12) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(BoxDataset(num_train, 0), batch_size=8, shuffle=True, collate_fn=collate_pairs,
                   generator=torch.Generator().manual_seed(0)),
        DataLoader(BoxDataset(num_val, 1), batch_size=8, collate_fn=collate_pairs),
    )


class SpyLogger(Logger):
    """Records every log_metrics call (a real Lightning Logger, scalars only)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "spy"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def saliency(self) -> list[tuple[int | None, dict[str, float]]]:
        """The records holding saliency keys (those keys only)."""
        return [(s, {k: v for k, v in m.items() if is_saliency_key(k)}) for s, m in self.records
                if any(is_saliency_key(k) for k in m)]


SALIENCY_SECTIONS = ("Saliency/", "layer_train/", "layer_val/", "layer_gap/", "stderr/", "saliency_run/")
"""The sections of the monitor's scalar keys (written out here, not taken from the monitor)."""


def is_saliency_key(key: str) -> bool:
    """Whether ``key`` is one of the monitor's scalars (not a picture or a table)."""
    return key.startswith(SALIENCY_SECTIONS)


def trainer(tmp_path: Any, callbacks: list, logger: Any = None, **kwargs: Any) -> pl.Trainer:
    options = {
        "max_epochs": 2, "accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0, "deterministic": True,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, logger=logger if logger is not None else False, **options)


class DataModule(pl.LightningDataModule):
    """The multiclass loaders as a datamodule (for LightningCLI)."""

    def __init__(self, num_train: int = 24, num_val: int = 12) -> None:
        super().__init__()
        self.num_train, self.num_val = num_train, num_val

    def train_dataloader(self) -> DataLoader:
        return multiclass_loaders(self.num_train, self.num_val)[0]

    def val_dataloader(self) -> DataLoader:
        return multiclass_loaders(self.num_train, self.num_val)[1]


class InjectedFault(nn.Module):
    """Identity, except in a saliency pass (eval mode, autograd on) once armed; with ``rank``, only on
    that process (``LOCAL_RANK``)."""

    def __init__(self, rank: int | None = None, armed: bool = False) -> None:
        super().__init__()
        self.rank, self.armed = rank, armed

    def forward(self, x: Tensor) -> Tensor:
        here = self.rank is None or int(os.environ.get("LOCAL_RANK", 0)) == self.rank
        if self.armed and here and not self.training and torch.is_grad_enabled():
            raise RuntimeError("injected fault" + ("" if self.rank is None else f" on rank {self.rank}"))
        return x


class ArmFaults(pl.Callback):
    """Arms the injected faults after the monitor's fit start (its check and baseline): faults during training."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, InjectedFault):
                module.armed = True

