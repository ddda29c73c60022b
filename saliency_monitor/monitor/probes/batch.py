"""A probe set: images with their classes and, when known, the regions of their objects.

:class:`ProbeBatch` is what every reader of the user's data produces (:mod:`.parsing`) and
what the evaluation consumes; :func:`probe_chunks` and :func:`label_max_min_targets` put a
probe set in front of the model.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import torch
from torch import Tensor, nn

from ..._checks import describe
from ...engine.model_io import device_and_dtype
from ...engine.task import check_task, class_probabilities
from ...metrics import voc_boxes_to_masks


@dataclass(frozen=True)
class Resizing:
    """How probes of different sizes were brought to one size (:mod:`.sizing`)."""

    count: int
    """Images resized."""
    total: int
    """Images in the probe set."""
    size: tuple[int, int]
    """The common (H, W) they were resized to."""
    sizes: tuple[tuple[int, int], ...]
    """Every (H, W) the images had, ascending."""

    def message(self, split: str) -> str:
        """The warning fit start issues once."""
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        height, width = self.size
        return (
            f"SaliencyMonitor: the {split} probes have different sizes ({sizes}); {self.count} of {self.total} were "
            f"resized (bilinear, antialiased; boxes and masks with them) to the most common size {height}x{width}. "
            "Resize images to one size in the dataset's transform to choose how."
        )


@dataclass(frozen=True, eq=False)
class ProbeBatch:
    """Probe images with their classes and, when known, the regions of their objects.

    Construction validates and normalises every field (``batch_to_probe`` may return one):
    images are detached and moved to the CPU, ``classes`` become sorted tuples of distinct
    ints, boxes float64 and box classes int64.
    """

    images: Tensor
    """(N, C_in, H, W) floating point or integer (e.g. uint8, kept as given), CPU, detached."""
    classes: tuple[tuple[int, ...], ...]
    """Per image its classes, ascending and distinct, at least one (exactly one for "multiclass")."""
    task: str
    """"multiclass" (index labels) or "multilabel" (multi-hot labels or target dicts)."""
    boxes: tuple[Tensor, ...] | None = None
    """Per image (K, 4) float64 ``xmin, ymin, xmax, ymax`` in PASCAL VOC's convention (1-based,
    inclusive pixels, see :func:`~saliency_monitor.metrics.voc_boxes_to_masks`) at the
    resolution of ``images``; ``None``: no regions known."""
    box_classes: tuple[Tensor, ...] | None = None
    """Per image (K,) int64 class of each box (one of the image's ``classes``)."""
    masks: tuple[Tensor, ...] | None = None
    """Per image (K, H, W) bool instance masks, one per box (same order); ``None``: boxes only."""
    resized: Resizing | None = field(default=None, kw_only=True)
    """Set when images of different sizes were brought to one size as they were read
    (:func:`~.sizing.one_size`); :meth:`select` and :meth:`cat` drop it."""

    def __post_init__(self) -> None:
        images = _check_probe_images(self.images)
        num = images.shape[0]
        object.__setattr__(self, "images", images)
        check_task(self.task)
        classes = _check_probe_classes(self.classes, num, self.task)
        object.__setattr__(self, "classes", classes)
        boxes, box_classes, masks = _check_regions(self, classes, (images.shape[-2], images.shape[-1]))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "box_classes", box_classes)
        object.__setattr__(self, "masks", masks)

    def __len__(self) -> int:
        return self.images.shape[0]

    def label_matrix(self, num_classes: int) -> Tensor:
        """(N, num_classes) float32 multi-hot of :attr:`classes`."""
        self._check_num_classes(num_classes)
        out = torch.zeros(len(self), num_classes, dtype=torch.float32)
        for n, classes in enumerate(self.classes):
            out[n, list(classes)] = 1.0
        return out

    def class_masks(self, num_classes: int) -> Tensor | None:
        """(N, num_classes, H, W) bool region of each class in each image; ``None`` without regions.

        A class's region is the union of its instance masks when :attr:`masks` is set, else the
        union of its boxes (:func:`~saliency_monitor.metrics.voc_boxes_to_masks`); a class with
        no box (or absent) has an empty region.
        """
        self._check_num_classes(num_classes)
        if self.boxes is None or self.box_classes is None:
            return None
        height, width = self.images.shape[-2:]
        out = torch.zeros(len(self), num_classes, height, width, dtype=torch.bool)
        for n, (boxes, labels) in enumerate(zip(self.boxes, self.box_classes)):
            if self.masks is not None:
                counts = torch.zeros(num_classes, height, width, dtype=torch.int32)
                out[n] = counts.index_add_(0, labels, self.masks[n].int()) > 0
            else:
                out[n] = voc_boxes_to_masks(boxes, labels, num_classes, (height, width))
        return out

    def select(self, indices: Sequence[int]) -> ProbeBatch:
        """The probes at ``indices`` (in that order, repeats allowed)."""
        picked = _check_indices(indices, len(self))
        return ProbeBatch(
            images=self.images[picked],
            classes=tuple(self.classes[i] for i in picked),
            task=self.task,
            boxes=None if self.boxes is None else tuple(self.boxes[i] for i in picked),
            box_classes=None if self.box_classes is None else tuple(self.box_classes[i] for i in picked),
            masks=None if self.masks is None else tuple(self.masks[i] for i in picked),
        )

    @staticmethod
    def cat(batches: Sequence[ProbeBatch]) -> ProbeBatch:
        """Concatenate probe batches of one task and one image shape and dtype.

        When only some batches know regions, the images of the others get none (K = 0); when
        only some have instance masks, the others' boxes are rasterised into instance masks
        (the same region :meth:`class_masks` gives them).
        """
        batches = _check_cat(batches)
        with_boxes = any(b.boxes is not None for b in batches)
        with_masks = any(b.masks is not None for b in batches)
        boxes, box_classes, masks = [], [], []
        for batch in batches:
            for n in range(len(batch) if with_boxes else 0):
                box, labels = _image_boxes(batch, n)
                boxes.append(box)
                box_classes.append(labels)
                if with_masks:
                    masks.append(batch.masks[n] if batch.masks is not None else _box_masks(box, batch.images))
        return ProbeBatch(
            images=torch.cat([b.images for b in batches]),
            classes=tuple(c for b in batches for c in b.classes),
            task=batches[0].task,
            boxes=tuple(boxes) if with_boxes else None,
            box_classes=tuple(box_classes) if with_boxes else None,
            masks=tuple(masks) if with_masks else None,
        )

    def _check_num_classes(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"Expected `num_classes` to be a positive int, but got {num_classes!r}.")
        largest = max((c[-1] for c in self.classes), default=-1)
        if largest >= num_classes:
            raise ValueError(
                f"Expected every probe class to be < `num_classes`={num_classes}, but got class {largest}."
            )


def _check_probe_images(images: object) -> Tensor:
    if not is_image_tensor(images, 4):
        raise TypeError(
            f"Expected `images` to be a floating-point or integer tensor of shape (N, C, H, W), but got "
            f"{describe(images)}."
        )
    return images.detach().cpu()


def is_image_tensor(x: object, ndim: int) -> TypeGuard[Tensor]:
    """An ``ndim``-D tensor of floating-point or integer (not bool or complex) values."""
    return isinstance(x, Tensor) and x.ndim == ndim and not x.is_complex() and x.dtype != torch.bool


def _check_probe_classes(classes: object, num: int, task: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(classes, Sequence) or len(classes) != num:
        raise ValueError(f"Expected `classes` to be a sequence of {num} class sequences, but got {classes!r}.")
    out = []
    for row in classes:
        values = int_list(row)
        if values is None or not values or min(values) < 0 or (task == "multiclass" and len(set(values)) != 1):
            expected = "exactly one class index >= 0" if task == "multiclass" else "class indices >= 0, at least one"
            raise ValueError(f"Expected each entry of `classes` to hold {expected} ({task}), but got {row!r}.")
        out.append(tuple(sorted(set(values))))
    return tuple(out)


def int_list(values: object) -> list[int] | None:
    """``values`` as a list of ints (ints, numpy ints, 0-dim integer tensors), or None."""
    if isinstance(values, Tensor):
        if values.ndim > 1 or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            return None
        return [int(v) for v in values.reshape(-1).tolist()]
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        return None
    out = []
    for value in values:
        if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
            return None
        try:
            out.append(operator.index(value))
        except TypeError:
            return None
    return out


def _check_regions(
    probe: ProbeBatch, classes: tuple[tuple[int, ...], ...], size: tuple[int, int]
) -> tuple[tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
    boxes, box_classes, masks = probe.boxes, probe.box_classes, probe.masks
    if boxes is None and box_classes is None and masks is None:
        return None, None, None
    num = len(classes)
    if boxes is None or box_classes is None:
        raise ValueError(
            "Expected `boxes` and `box_classes` to be both None or both set (and `masks` only with them), but got "
            f"boxes={describe(boxes)}, box_classes={describe(box_classes)}, masks={describe(masks)}."
        )
    for name, value in (("boxes", boxes), ("box_classes", box_classes), ("masks", masks)):
        if value is not None and (not isinstance(value, Sequence) or len(value) != num):
            raise ValueError(
                f"Expected `{name}` to be a sequence of {num} tensors (one per image), but got {describe(value)}."
            )
    out_boxes, out_classes, out_masks = [], [], []
    for n in range(num):
        box = torch.as_tensor(boxes[n]).detach().cpu()
        labels = torch.as_tensor(box_classes[n]).detach().cpu()
        if box.is_complex() or box.dtype == torch.bool or box.ndim != 2 or box.shape[1] != 4:
            raise ValueError(f"Expected `boxes[{n}]` to be a real (K, 4) tensor, but got {describe(boxes[n])}.")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (box.shape[0],):
            raise ValueError(
                f"Expected `box_classes[{n}]` to be a ({box.shape[0]},) integer tensor, but got "
                f"{describe(box_classes[n])}."
            )
        extra = sorted(set(labels.tolist()) - set(classes[n]))
        if extra:
            raise ValueError(
                f"Expected `box_classes[{n}]` to be among the image's classes {list(classes[n])}, but got {extra}."
            )
        out_boxes.append(box.to(torch.float64))
        out_classes.append(labels.to(torch.int64))
        if masks is not None:
            mask = masks[n].detach().cpu() if isinstance(masks[n], Tensor) else masks[n]
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (box.shape[0], *size):
                raise ValueError(
                    f"Expected `masks[{n}]` to be a bool tensor of shape {(box.shape[0], *size)}, but got "
                    f"{describe(masks[n])}."
                )
            out_masks.append(mask)
    return tuple(out_boxes), tuple(out_classes), tuple(out_masks) if masks is not None else None


def _check_indices(indices: object, num: int) -> list[int]:
    picked = int_list(indices)
    if picked is None or any(not 0 <= i < num for i in picked):
        raise ValueError(f"Expected `indices` to be a sequence of ints in [0, {num}), but got {indices!r}.")
    return picked


def _check_cat(batches: object) -> list[ProbeBatch]:
    if not isinstance(batches, Sequence) or not batches or not all(isinstance(b, ProbeBatch) for b in batches):
        raise TypeError(f"Expected `batches` to be a non-empty sequence of ProbeBatch, but got {describe(batches)}.")
    first = batches[0]
    for batch in batches[1:]:
        if batch.task != first.task:
            raise ValueError(f"Expected all batches to have one task, but got {first.task!r} and {batch.task!r}.")
        if batch.images.shape[1:] != first.images.shape[1:] or batch.images.dtype != first.images.dtype:
            raise ValueError(
                "Expected all probe images to have one shape (C, H, W) and dtype, but got "
                f"{tuple(first.images.shape[1:])} {first.images.dtype} and "
                f"{tuple(batch.images.shape[1:])} {batch.images.dtype}. Give every image one number of channels "
                "and one dtype in the dataset's transform (sizes are evened out when probes are read), or pass "
                "`batch_to_probe=` to SaliencyMonitor."
            )
    return list(batches)


def _image_boxes(batch: ProbeBatch, n: int) -> tuple[Tensor, Tensor]:
    if batch.boxes is None or batch.box_classes is None:
        return torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    return batch.boxes[n], batch.box_classes[n]


def _box_masks(boxes: Tensor, images: Tensor) -> Tensor:
    """(K, H, W) bool: each VOC-convention box rasterised on its own."""
    size = (images.shape[-2], images.shape[-1])
    num = boxes.shape[0]
    return voc_boxes_to_masks(boxes, torch.arange(num), max(num, 1), size)[:num]


# --------------------------------------------------------------------------- probes in front of the model


def probe_chunks(model: nn.Module, probes: ProbeBatch, batch_size: int) -> Iterator[tuple[ProbeBatch, Tensor]]:
    """Consecutive chunks of ``batch_size`` probes, each with its images on the model's device and
    floating dtype (CPU float32 for a model without parameters); integer images keep their dtype
    (the model converts them itself)."""
    device, dtype = device_and_dtype(model)
    for start in range(0, len(probes), batch_size):
        chunk = probes.select(range(start, min(start + batch_size, len(probes))))
        images = chunk.images
        yield chunk, images.to(device=device, dtype=dtype if images.is_floating_point() else images.dtype)


def label_max_min_targets(logits: Tensor, probes: ProbeBatch, task: str) -> tuple[Tensor, Tensor]:
    """(B, 3) [label, max, min] targets and the class probabilities.

    The label class is the probe's true class (multilabel: the true class the model scores
    highest); max and min are the model's highest- and lowest-scored classes (§4.3).
    """
    labels = probes.label_matrix(logits.shape[1]).to(logits.device).bool()
    label = torch.where(labels, logits, -math.inf).argmax(dim=1)
    targets = torch.stack([label, logits.argmax(dim=1), logits.argmin(dim=1)], dim=1)
    return targets, class_probabilities(logits, task)
