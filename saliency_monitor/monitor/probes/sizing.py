"""Bringing probes of different sizes to one size (datasets whose images differ in size).

The rule (:func:`one_size`): the target is the most common (H, W) among the probes (ties:
the largest area, then the largest H). Every other image is resized to it with bilinear,
antialiased interpolation (``align_corners=False``); integer images (e.g. uint8) are resized
as float, rounded and clamped back to their dtype. Boxes are scaled as continuous intervals
(``xmin' = (xmin - 1) * W' / W + 1``, ``xmax' = xmax * W' / W``, likewise y), instance masks
resized by nearest neighbour (pixel centres). The aspect ratio is not kept: an image is
stretched to the target. Images must still agree in channels and dtype.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import ProbeBatch, Resizing


def one_size(parts: Sequence[ProbeBatch]) -> ProbeBatch:
    """The probes of ``parts`` (in order) as one batch at one size (see the module docstring).

    When any image was resized, the result's :attr:`ProbeBatch.resized` says how many and to
    what size; otherwise it is ``None``.
    """
    sizes = [_size(part.images) for part in parts for _ in range(len(part))]
    counts = Counter(sizes)
    target = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
    if len(counts) == 1 or len({(part.images.shape[1], part.images.dtype) for part in parts}) > 1:
        return parts[0] if len(parts) == 1 else ProbeBatch.cat(parts)  # cat explains a channel or dtype mismatch
    batch = ProbeBatch.cat([part if _size(part.images) == target else resize_probes(part, target) for part in parts])
    note = Resizing(count=len(sizes) - counts[target], total=len(sizes), size=target, sizes=tuple(sorted(counts)))
    return replace(batch, resized=note)


def resize_probes(probes: ProbeBatch, size: tuple[int, int]) -> ProbeBatch:
    """``probes`` (one size) at ``size``: images, boxes and instance masks (module docstring)."""
    before = _size(probes.images)
    scale = (size[0] / before[0], size[1] / before[1])
    return ProbeBatch(
        images=resize_images(probes.images, size),
        classes=probes.classes,
        task=probes.task,
        boxes=None if probes.boxes is None else tuple(scale_voc_boxes(b, scale) for b in probes.boxes),
        box_classes=probes.box_classes,
        masks=None if probes.masks is None else tuple(_resize_masks(m, size) for m in probes.masks),
    )


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> (N, C, *size), bilinear and antialiased, in the images' dtype."""
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    out = F.interpolate(images.to(work), size=size, mode="bilinear", align_corners=False, antialias=True)
    if images.is_floating_point():
        return out.to(images.dtype)
    limits = torch.iinfo(images.dtype)
    return out.round().clamp(limits.min, limits.max).to(images.dtype)


def scale_voc_boxes(boxes: Tensor, scale: tuple[float, float]) -> Tensor:
    """(K, 4) VOC boxes (1-based, inclusive) of an image stretched by (sy, sx), as continuous intervals."""
    sy, sx = scale
    factors = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    out = boxes.to(torch.float64).clone()
    out[:, :2] -= 1  # to continuous intervals [xmin - 1, xmax], scaled, and back to 1-based inclusive
    out = out * factors
    out[:, :2] += 1
    return out


def _resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    if masks.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.bool)
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0] > 0.5


def _size(images: Tensor) -> tuple[int, int]:
    return int(images.shape[-2]), int(images.shape[-1])
