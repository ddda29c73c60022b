"""The analysed images: a seeded subset of a VOC split or of an ImageFolder, as a ProbeBatch."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from examples.voc_data import IMAGENET_MEAN, IMAGENET_STD, VOCClassification, collate
from saliency_monitor.monitor.probes import ProbeBatch, parse_batch


def voc_probes(root: Path, split: str, image_size: int, num_images: int | None, seed: int) -> ProbeBatch:
    """A seeded subset (sorted indices) of a VOC split, with boxes, as a multilabel ProbeBatch."""
    dataset = VOCClassification(root, split, image_size, train=False)
    items = [dataset[i] for i in _subset(len(dataset), num_images, seed)]
    return parse_batch(collate(items))


def folder_probes(root: Path, image_size: int, num_images: int | None, seed: int) -> ProbeBatch:
    """A seeded subset of an ImageFolder (class sub-folders; label = folder index), multiclass."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize((image_size, image_size)), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    items = [dataset[i] for i in _subset(len(dataset), num_images, seed)]
    images = torch.stack([image for image, _ in items])
    return ProbeBatch(images, tuple((label,) for _, label in items), "multiclass")


def _subset(length: int, num: int | None, seed: int) -> list[int]:
    """``num`` of ``range(length)`` drawn with ``seed``, sorted; all of them when ``num`` is None or too large."""
    if num is None or num >= length:
        return list(range(length))
    return sorted(torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:num].tolist())
