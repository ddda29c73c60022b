"""Localisation: the pointing game (Zhang et al. 2016, as TorchRay implements it; "There and
Back Again" supp. A), its "difficult" subset, and PASCAL VOC boxes as class regions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int, check_number, describe, normalize_size
from .maps import check_maps, resize_maps


def voc_boxes_to_masks(
    boxes: Tensor | Sequence[Sequence[float]],
    labels: Tensor | Sequence[int],
    num_classes: int,
    image_size: tuple[int, int],
) -> Tensor:
    """Ground-truth regions of one image: the union of each class's boxes, as TorchRay does.

    Args:
        boxes: (K, 4) ``xmin, ymin, xmax, ymax`` in PASCAL VOC's convention: 1-based,
            inclusive pixel coordinates (box (1, 1, 2, 2) is the image's top-left 2×2
            pixels). Pixel (row r, col c), 0-based, is inside iff
            ``xmin − 1 <= c <= xmax − 1`` and ``ymin − 1 <= r <= ymax − 1``, so boxes rescaled
            to a resized image may be fractional. Drop PASCAL "difficult" boxes beforehand
            if they should not count.
        labels: (K,) class index of each box, in [0, num_classes).
        num_classes: number of classes C.
        image_size: (H, W) of the image the boxes refer to.

    Returns:
        (C, H, W) bool; an absent class's mask is all False.
    """
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    size = normalize_size(image_size, "image_size") if image_size is not None else None
    if size is None:
        raise ValueError(f"Expected `image_size` to be a positive int or (H, W), but got {image_size!r}.")
    height, width = size
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if labels.numel() == 0:
        labels = labels.long()
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"Expected `boxes` of shape (K, 4), but got shape {tuple(boxes.shape)}.")
    if labels.is_floating_point() or labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"Expected `labels` to be {boxes.shape[0]} integer class indices, but got {labels!r}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Expected `labels` in [0, {num_classes}), but got values in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    rows = torch.arange(height, dtype=torch.float64, device=boxes.device)
    cols = torch.arange(width, dtype=torch.float64, device=boxes.device)
    xmin, ymin, xmax, ymax = (boxes[:, i, None] - 1 for i in range(4))
    inside_rows = (rows >= ymin) & (rows <= ymax)  # (K, H)
    inside_cols = (cols >= xmin) & (cols <= xmax)  # (K, W)
    per_box = inside_rows[:, :, None] & inside_cols[:, None, :]
    counts = torch.zeros(num_classes, height, width, dtype=torch.int32, device=boxes.device)
    return counts.index_add_(0, labels.long().to(boxes.device), per_box.int()) > 0


def pointing_hits(maps: Tensor, masks: Tensor, tolerance: float = 15) -> Tensor:
    """Pointing game test of each map against its ground-truth mask (supp. A, TorchRay).

    The map is upsampled bilinearly (``align_corners=False``) to the mask's (H, W); its
    point is the maximum, the first in row-major order when several pixels tie (torch's
    ``argmax``, TorchRay's convention: a constant map points at the top-left pixel). A hit
    is a mask pixel q with ‖q − point‖₂ < ``tolerance`` (strict, as TorchRay: a pixel
    exactly ``tolerance`` away does not count), or the point itself on the mask (which
    only matters for ``tolerance=0``).

    Args:
        maps: (N, h, w) floating point.
        masks: (N, H, W) bool, the class region in image pixels.
        tolerance: radius in image pixels (15 in the paper), >= 0.

    Returns:
        (N,) bool hits; an empty mask is never hit.
    """
    maps = check_maps(maps, "maps")
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(f"Expected `masks` to be a (N, H, W) bool tensor, but got {describe(masks)}.")
    if maps.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"Expected `maps` of shape (N, h, w) with N={masks.shape[0]}, but got shape {tuple(maps.shape)}."
        )
    tolerance = check_number(tolerance, "tolerance", expected="a number >= 0", valid=lambda v: v >= 0)
    height, width = masks.shape[1:]
    masks = masks.to(maps.device)
    point = resize_maps(maps, (height, width)).flatten(1).argmax(dim=1)
    py, px = point // width, point % width
    dy = (torch.arange(height, device=maps.device) - py[:, None]).double().square()
    dx = (torch.arange(width, device=maps.device) - px[:, None]).double().square()
    near = dy[:, :, None] + dx[:, None, :] < tolerance**2
    on_mask = masks.flatten(1).gather(1, point[:, None]).squeeze(1)
    return (masks & near).flatten(1).any(dim=1) | on_mask


def difficult_pairs(targets: Tensor, masks: Tensor) -> Tensor:
    """Which (image, class) pairs are in the pointing game's "difficult" subset (supp. A).

    A pair is difficult when its class is present, its boxes cover less than 25% of the
    image (area of their union, the mask) and at least one other class is present.

    Args:
        targets: (B, T) class indices.
        masks: (B, C, H, W) bool, every class's region in each image.

    Returns:
        (B, T) bool.
    """
    targets, masks = _check_targets_masks(targets, masks)
    area = masks.flatten(2).float().mean(dim=2)  # (B, C)
    present = masks.flatten(2).any(dim=2)  # (B, C)
    own_present = present.gather(1, targets)
    others = present.sum(dim=1, keepdim=True) - own_present.long()
    return own_present & (area.gather(1, targets) < 0.25) & (others > 0)


@dataclass(frozen=True)
class PointingGameResult:
    """Per-class hit and miss counts; add results of several batches with ``+``."""

    hits: Tensor
    """(C,) int64."""
    misses: Tensor
    """(C,) int64."""

    @property
    def class_accuracy(self) -> Tensor:
        """(C,) float64 hits / (hits + misses); NaN for a class never evaluated."""
        total = self.hits + self.misses
        return torch.where(total > 0, self.hits / total.clamp_min(1), float("nan"))

    @property
    def accuracy(self) -> Tensor:
        """Mean of :attr:`class_accuracy` over the evaluated classes (NaN if none), supp. A."""
        return self.class_accuracy.nanmean()

    def __add__(self, other: PointingGameResult) -> PointingGameResult:
        if not isinstance(other, PointingGameResult) or other.hits.shape != self.hits.shape:
            return NotImplemented
        return PointingGameResult(self.hits + other.hits, self.misses + other.misses)


def pointing_game(
    maps: Tensor,
    targets: Tensor,
    masks: Tensor,
    tolerance: float = 15,
    difficult: bool = False,
) -> PointingGameResult:
    """Pointing game accuracy: hits/(hits + misses) per class, then the mean over classes.

    Args:
        maps: (B, T, h, w) saliency of target ``targets[b, t]`` in image b.
        targets: (B, T) class indices in [0, C).
        masks: (B, C, H, W) bool ground-truth regions (:func:`voc_boxes_to_masks`), at the
            image resolution the tolerance is measured in.
        tolerance: hit radius in pixels (:func:`pointing_hits`).
        difficult: count only the :func:`difficult_pairs`.

    A pair whose class is absent from the image (empty mask) is not evaluated; a class
    never evaluated gets NaN accuracy and is left out of the mean (TorchRay counts it as 0).
    """
    targets, masks = _check_targets_masks(targets, masks)
    maps = check_maps(maps, "maps", min_dim=4)
    if maps.ndim != 4 or maps.shape[:2] != targets.shape:
        raise ValueError(
            f"Expected `maps` of shape (B, T, h, w) with (B, T)={tuple(targets.shape)}, but got "
            f"shape {tuple(maps.shape)}."
        )
    batch, num_targets = targets.shape
    class_masks = masks[torch.arange(batch, device=masks.device)[:, None], targets]  # (B, T, H, W)
    evaluated = class_masks.flatten(2).any(dim=2)
    if difficult:
        evaluated &= difficult_pairs(targets, masks)
    hit = pointing_hits(maps.flatten(0, 1), class_masks.flatten(0, 1), tolerance).view(batch, num_targets)
    num_classes = masks.shape[1]
    evaluated = evaluated.cpu()
    classes = targets.cpu()[evaluated]
    hits = torch.bincount(classes[hit.cpu()[evaluated]], minlength=num_classes)
    return PointingGameResult(hits, torch.bincount(classes, minlength=num_classes) - hits)


def _check_targets_masks(targets: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 4:
        raise ValueError(f"Expected `masks` to be a (B, C, H, W) bool tensor, but got {describe(masks)}.")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"Expected `targets` to be an integer tensor of class indices, but got {describe(targets)}.")
    batch, num_classes = masks.shape[:2]
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"Expected `targets` of shape (B, T) with B={batch}, but got shape {tuple(targets.shape)}."
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"Expected `targets` in [0, {num_classes}), but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]."
        )
    return targets.long().to(masks.device), masks

