"""Fixed probe sets for the monitor: parse the user's batches, draw and re-load probe images.

- :class:`ProbeBatch`: probe images with their classes and, when known, object regions
  (boxes in PASCAL VOC's convention, optional instance masks).
- :func:`parse_batch`: the default reader of a batch as the user's DataLoader yields it
  (tuples, dicts, index / multi-hot labels, torchvision detection targets, raw
  ``torchvision.datasets.VOCDetection`` annotations).
- :func:`draw_probes`: draw a class-balanced probe set once, deterministically from a seed,
  without advancing any RNG or sampler that training uses; :func:`load_probes` re-reads the
  same items (bitwise the same images, random transforms included).

No Lightning, no wandb: torch, torchvision (lazily, for ``tv_tensors`` boxes) and the
standard library; numpy's global RNG is saved and restored when numpy is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from .meta import TASKS
from .metrics import voc_boxes_to_masks

try:  # numpy is optional for torch; its global RNG is isolated when it is there
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed wherever the tests run
    np = None  # type: ignore[assignment]

__all__ = [
    "TASKS",
    "VOC_CLASSES",
    "ProbeBatch",
    "draw_probes",
    "load_probes",
    "parse_batch",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 PASCAL VOC classes in the standard (alphabetical, devkit) order."""


IMAGE_KEYS = ("image", "images", "input", "inputs", "x")
LABEL_KEYS = ("label", "labels", "target", "targets", "y")

_BATCH_TO_PROBE = (
    "pass `batch_to_probe=` to SaliencyMonitor: a callable that turns a batch into (images, labels)"
)


# --------------------------------------------------------------------------- ProbeBatch


@dataclass(frozen=True, eq=False)
class ProbeBatch:
    """Probe images with their classes and, when known, the regions of their objects.

    Construction validates and normalises every field (``batch_to_probe`` may return one):
    images are detached and moved to the CPU, ``classes`` become sorted tuples of distinct
    ints, boxes float64 and box classes int64.
    """

    images: Tensor
    """(N, C_in, H, W) floating point, CPU, detached."""
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

    def __post_init__(self) -> None:
        images = _check_probe_images(self.images)
        num = images.shape[0]
        object.__setattr__(self, "images", images)
        if self.task not in TASKS:
            raise ValueError(f"Expected `task` to be one of {list(TASKS)}, but got {self.task!r}.")
        classes = _check_probe_classes(self.classes, num, self.task)
        object.__setattr__(self, "classes", classes)
        boxes, box_classes, masks = _check_regions(self, classes, tuple(images.shape[-2:]))
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
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4:
        raise TypeError(
            f"Expected `images` to be a floating-point tensor of shape (N, C, H, W), but got {_describe(images)}."
        )
    return images.detach().cpu()


def _check_probe_classes(classes: object, num: int, task: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(classes, Sequence) or len(classes) != num:
        raise ValueError(f"Expected `classes` to be a sequence of {num} class sequences, but got {classes!r}.")
    out = []
    for row in classes:
        values = _int_list(row)
        if values is None or not values or min(values) < 0 or (task == "multiclass" and len(set(values)) != 1):
            expected = "exactly one class index >= 0" if task == "multiclass" else "class indices >= 0, at least one"
            raise ValueError(f"Expected each entry of `classes` to hold {expected} ({task}), but got {row!r}.")
        out.append(tuple(sorted(set(values))))
    return tuple(out)


def _int_list(values: object) -> list[int] | None:
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
            f"boxes={_describe(boxes)}, box_classes={_describe(box_classes)}, masks={_describe(masks)}."
        )
    for name, value in (("boxes", boxes), ("box_classes", box_classes), ("masks", masks)):
        if value is not None and (not isinstance(value, Sequence) or len(value) != num):
            raise ValueError(
                f"Expected `{name}` to be a sequence of {num} tensors (one per image), but got {_describe(value)}."
            )
    out_boxes, out_classes, out_masks = [], [], []
    for n in range(num):
        box = torch.as_tensor(boxes[n]).detach().cpu()
        labels = torch.as_tensor(box_classes[n]).detach().cpu()
        if box.is_complex() or box.dtype == torch.bool or box.ndim != 2 or box.shape[1] != 4:
            raise ValueError(f"Expected `boxes[{n}]` to be a real (K, 4) tensor, but got {_describe(boxes[n])}.")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (box.shape[0],):
            raise ValueError(
                f"Expected `box_classes[{n}]` to be a ({box.shape[0]},) integer tensor, but got "
                f"{_describe(box_classes[n])}."
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
                    f"{_describe(masks[n])}."
                )
            out_masks.append(mask)
    return tuple(out_boxes), tuple(out_classes), tuple(out_masks) if masks is not None else None


def _check_indices(indices: object, num: int) -> list[int]:
    picked = _int_list(indices)
    if picked is None or any(not 0 <= i < num for i in picked):
        raise ValueError(f"Expected `indices` to be a sequence of ints in [0, {num}), but got {indices!r}.")
    return picked


def _check_cat(batches: object) -> list[ProbeBatch]:
    if not isinstance(batches, Sequence) or not batches or not all(isinstance(b, ProbeBatch) for b in batches):
        raise TypeError(f"Expected `batches` to be a non-empty sequence of ProbeBatch, but got {_describe(batches)}.")
    first = batches[0]
    for batch in batches[1:]:
        if batch.task != first.task:
            raise ValueError(f"Expected all batches to have one task, but got {first.task!r} and {batch.task!r}.")
        if batch.images.shape[1:] != first.images.shape[1:] or batch.images.dtype != first.images.dtype:
            raise ValueError(
                "Expected all probe images to have one shape (C, H, W) and dtype, but got "
                f"{tuple(first.images.shape[1:])} {first.images.dtype} and "
                f"{tuple(batch.images.shape[1:])} {batch.images.dtype}. Resize images to one size in the "
                "dataset's transform, or pass `batch_to_probe=` to SaliencyMonitor."
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


# --------------------------------------------------------------------------- parse_batch


def parse_batch(batch: object, class_names: Sequence[str] | None = None) -> ProbeBatch:
    """Read images and labels from one batch as the user's DataLoader yields it.

    Accepted batches:

    - a tuple or list ``(images, labels, *rest)``: items after the first two (sample indices,
      file paths, ...) are ignored;
    - a mapping with one image key among ``IMAGE_KEYS`` ("image", "images", "input",
      "inputs", "x") and one label key among ``LABEL_KEYS`` ("label", "labels", "target",
      "targets", "y"); its other keys are ignored;
    - a :class:`ProbeBatch`, returned unchanged (so ``batch_to_probe`` may build one).

    ``images``: a (B, C, H, W) floating tensor, or a list / tuple of (C, H, W) floating
    tensors of one size (``collate_fn=lambda b: tuple(zip(*b))``), which are stacked. They
    are copied to the CPU and detached.

    ``labels``:

    - class indices, an integer tensor (B,) or a list of ints -> "multiclass";
    - multi-hot (B, C) labels, every value 0 or 1 (any dtype), at least one 1 per row ->
      "multilabel" (a list of (C,) tensors is stacked first);
    - a list of B target dicts -> "multilabel" with regions, either
        * torchvision detection style ``{"labels": (K,) int, "boxes": (K, 4), "masks":
          (K, H, W)}`` ("boxes" and "masks" optional, "masks" only with "boxes"; other keys
          such as "image_id" or "iscrowd" are ignored). Boxes are torchvision's ``x1, y1, x2,
          y2`` in continuous pixel coordinates (0 <= x1 < x2 <= W), converted to PASCAL VOC's
          1-based inclusive convention: ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``.
          ``tv_tensors.BoundingBoxes`` in another format are converted to XYXY first. Masks
          are binary instance masks at the image resolution;
        * a raw ``torchvision.datasets.VOCDetection`` target ``{"annotation": {"size":
          {"width", "height"}, "object": [{"name", "bndbox": {"xmin", ...}}, ...]}}`` (strings;
          "object" may be a single dict). Class index = position of "name" in ``class_names``
          (default :data:`VOC_CLASSES`). Boxes are rescaled from the annotation's size to the
          image tensor's (H, W) as continuous intervals: ``xmin' = (xmin - 1) * W / width + 1``,
          ``xmax' = xmax * W / width`` (likewise y), so a box covering the whole annotated image
          covers the whole tensor. Only a resize is accounted for: transforms that crop or flip
          must move the boxes themselves (torchvision transforms v2 with a detection target) or
          go through ``batch_to_probe``. "difficult" objects are kept, as in TorchRay.

    Args:
        batch: the batch.
        class_names: the classifier's class names; when given, every class index must be
            smaller than ``len(class_names)``, and VOC object names are looked up in it.

    Raises:
        TypeError / ValueError: for anything else, saying what was given; pass
            ``batch_to_probe=`` to SaliencyMonitor to read other formats.
    """
    names = _check_class_names(class_names)
    if isinstance(batch, ProbeBatch):
        return batch
    images, labels = _split_batch(batch)
    images = _parse_images(images)
    probe = _parse_labels(labels, images, VOC_CLASSES if names is None else names)
    if names is not None:
        largest = max(c[-1] for c in probe.classes)
        if largest >= len(names):
            raise ValueError(
                f"Expected class indices < len(class_names)={len(names)}, but got class {largest}."
            )
    return probe


def _check_class_names(class_names: object) -> tuple[str, ...] | None:
    if class_names is None:
        return None
    if (
        isinstance(class_names, (str, bytes))
        or not isinstance(class_names, Sequence)
        or not class_names
        or not all(isinstance(name, str) for name in class_names)
        or len(set(class_names)) != len(class_names)
    ):
        raise ValueError(
            f"Expected `class_names` to be a non-empty sequence of distinct strings, but got {class_names!r}."
        )
    return tuple(class_names)


def _split_batch(batch: object) -> tuple[object, object]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        image_keys = [k for k in IMAGE_KEYS if k in batch]
        label_keys = [k for k in LABEL_KEYS if k in batch]
        if len(image_keys) == 1 and len(label_keys) == 1:
            return batch[image_keys[0]], batch[label_keys[0]]
    raise TypeError(
        f"Expected `batch` to be a tuple (images, labels, ...) or a dict with one image key in {list(IMAGE_KEYS)} "
        f"and one label key in {list(LABEL_KEYS)}, but got {_describe(batch)}. Otherwise {_BATCH_TO_PROBE}."
    )


def _parse_images(images: object) -> Tensor:
    if isinstance(images, (list, tuple)) and images and all(_is_float_tensor(x, 3) for x in images):
        shapes = sorted({tuple(x.shape) for x in images})
        if len(shapes) > 1:
            raise ValueError(
                f"Expected the (C, H, W) images of a batch to have one shape, but got shapes {shapes}. Resize them "
                "to one size in the dataset's transform, or pass `batch_to_probe=` to SaliencyMonitor."
            )
        images = torch.stack([x.detach().cpu() for x in images])
    if not _is_float_tensor(images, 4) or images.shape[0] == 0:
        raise TypeError(
            "Expected `images` to be a floating-point tensor (B, C, H, W) with B >= 1, or a list of (C, H, W) "
            f"floating-point tensors, but got {_describe(images)}. Convert images to float tensors in the "
            "dataset's transform (e.g. torchvision.transforms.ToTensor()), or pass `batch_to_probe=` to "
            "SaliencyMonitor."
        )
    return images.detach().to("cpu", copy=True)


def _is_float_tensor(x: object, ndim: int) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point() and x.ndim == ndim


def _parse_labels(labels: object, images: Tensor, names: tuple[str, ...]) -> ProbeBatch:
    num = images.shape[0]
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(t, Mapping) for t in labels):
        _check_count(len(labels), num)
        return ProbeBatch.cat([_parse_target(t, images[i : i + 1], i, names) for i, t in enumerate(labels)])
    tensor = _labels_tensor(labels)
    if tensor is None:
        raise TypeError(
            "Expected `labels` to be class indices (an integer tensor (B,) or a list of ints), multi-hot labels "
            "(B, C), or a list of target dicts (torchvision detection or VOCDetection; collate them with "
            f"`collate_fn=lambda b: tuple(zip(*b))`), but got {_describe(labels)}. Otherwise {_BATCH_TO_PROBE}."
        )
    if tensor.ndim not in (1, 2):
        raise ValueError(f"Expected `labels` of shape (B,) or (B, C), but got shape {tuple(tensor.shape)}.")
    _check_count(tensor.shape[0], num)
    if tensor.ndim == 1:
        return ProbeBatch(images, _index_classes(tensor), "multiclass")
    return ProbeBatch(images, _multi_hot_classes(tensor), "multilabel")


def _labels_tensor(labels: object) -> Tensor | None:
    """``labels`` as a tensor: tensors and numpy arrays as they are, a list of numbers or of
    same-shape tensors stacked; None for anything else."""
    if isinstance(labels, Tensor):
        return labels.detach().cpu()
    if np is not None and isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
        return torch.from_numpy(labels)
    if not isinstance(labels, (list, tuple)) or not labels:
        return None
    if all(isinstance(x, Tensor) for x in labels):
        if len({tuple(x.shape) for x in labels}) != 1 or labels[0].ndim > 1:
            return None
        return torch.stack([x.detach().cpu() for x in labels])
    numbers = (int, float) if np is None else (int, float, np.integer, np.floating, np.bool_)
    if all(isinstance(x, numbers) for x in labels):
        return torch.tensor([x.item() if hasattr(x, "item") else x for x in labels])
    return None


def _check_count(count: int, num: int) -> None:
    if count != num:
        raise ValueError(f"Expected `labels` for {num} images, but got {count}.")


def _index_classes(labels: Tensor) -> tuple[tuple[int, ...], ...]:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"Expected `labels` of shape (B,) to be integer class indices, but got {_describe(labels)}. Float or "
            "bool labels of shape (B,) (regression, soft or binary targets) do not say which class to explain: "
            "pass `batch_to_probe=` to SaliencyMonitor, returning integer class indices or multi-hot (B, C) labels."
        )
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"Expected `labels` to be class indices >= 0, but got {int(labels.min())}.")
    return tuple((int(c),) for c in labels.tolist())


def _multi_hot_classes(labels: Tensor) -> tuple[tuple[int, ...], ...]:
    binary = (labels == 0) | (labels == 1)
    if labels.is_complex() or not bool(binary.all()):
        bad = labels[~binary][0].item() if not labels.is_complex() else "complex values"
        raise ValueError(
            f"Expected `labels` of shape (B, C) to be multi-hot (every value 0 or 1), but got {_describe(labels)} "
            f"holding {bad!r}. Soft labels (mixup, cutmix, label smoothing) do not say which classes are "
            "present: pass `batch_to_probe=` to SaliencyMonitor, returning the hard labels."
        )
    positive = labels == 1
    empty = (~positive.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Expected every row of multi-hot `labels` to mark at least one class, but got none in rows {empty}."
        )
    return tuple(tuple(row.nonzero().flatten().tolist()) for row in positive)


def _parse_target(target: Mapping, image: Tensor, index: int, names: tuple[str, ...]) -> ProbeBatch:
    """One target dict (torchvision detection or raw VOCDetection) -> a ProbeBatch of one."""
    if "annotation" in target:
        return _parse_voc(target["annotation"], image, index, names)
    if "labels" in target:
        return _parse_detection(target, image, index)
    raise ValueError(
        "Expected each target dict to hold 'labels' (torchvision detection style) or 'annotation' "
        f"(torchvision VOCDetection), but got keys {list(target)!r} in target {index}."
    )


def _parse_detection(target: Mapping, image: Tensor, index: int) -> ProbeBatch:
    labels = _int_list(target["labels"])
    if labels is None or (isinstance(target["labels"], Tensor) and target["labels"].ndim != 1):
        raise ValueError(
            f"Expected 'labels' of target {index} to be a (K,) integer tensor or a list of ints, but got "
            f"{_describe(target['labels'])}."
        )
    _check_objects(labels, index)
    if "boxes" not in target:
        if "masks" in target:
            raise ValueError(f"Expected 'boxes' alongside 'masks' in target {index}, but got keys {list(target)!r}.")
        return ProbeBatch(image, (labels,), "multilabel")
    height, width = image.shape[-2:]
    boxes = _xyxy_boxes(target["boxes"], len(labels), (height, width), index)
    voc = boxes.clone()
    voc[:, :2] += 1  # x1, y1 (continuous) -> first covered pixel, 1-based; x2, y2 are the last ones
    masks = None
    if "masks" in target:
        masks = (_instance_masks(target["masks"], len(labels), (height, width), index),)
    return ProbeBatch(image, (labels,), "multilabel", (voc,), (torch.tensor(labels),), masks)


def _check_objects(labels: list[int], index: int) -> None:
    if not labels:
        raise ValueError(f"Expected target {index} to hold at least one object, but got none.")
    if min(labels) < 0:
        raise ValueError(f"Expected the labels of target {index} to be class indices >= 0, but got {labels}.")


def _xyxy_boxes(boxes: object, num: int, size: tuple[int, int], index: int) -> Tensor:
    height, width = size
    if isinstance(boxes, Tensor) and hasattr(boxes, "canvas_size") and hasattr(boxes, "format"):
        boxes = _plain_xyxy(boxes, size, index)
    try:
        tensor = torch.as_tensor(boxes, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        tensor = None
    if tensor is None or tensor.shape != (num, 4):
        raise ValueError(
            f"Expected 'boxes' of target {index} to be a ({num}, 4) tensor (one box per label), but got "
            f"{_describe(boxes)}."
        )
    x1, y1, x2, y2 = tensor.unbind(1)
    valid = (0 <= x1) & (x1 < x2) & (x2 <= width) & (0 <= y1) & (y1 < y2) & (y2 <= height)
    if not bool(valid.all()):
        bad = tensor[~valid][0].tolist()
        raise ValueError(
            f"Expected 'boxes' of target {index} to be (x1, y1, x2, y2) with 0 <= x1 < x2 <= W={width} and "
            f"0 <= y1 < y2 <= H={height}, but got {bad}."
        )
    return tensor


def _plain_xyxy(boxes: Tensor, size: tuple[int, int], index: int) -> Tensor:
    """A ``tv_tensors.BoundingBoxes`` as a plain XYXY tensor, checked against the image size."""
    from torchvision.ops import box_convert

    canvas = tuple(int(s) for s in boxes.canvas_size)
    if canvas != tuple(size):
        raise ValueError(
            f"Expected 'boxes' of target {index} to have canvas_size equal to the image's (H, W)={tuple(size)}, "
            f"but got {canvas}."
        )
    fmt = getattr(boxes.format, "name", str(boxes.format)).lower()
    plain = boxes.as_subclass(Tensor)
    if fmt == "xyxy":
        return plain
    if fmt in ("xywh", "cxcywh"):
        return box_convert(plain, in_fmt=fmt, out_fmt="xyxy")
    raise ValueError(
        f"Expected 'boxes' of target {index} in format XYXY, XYWH or CXCYWH, but got {boxes.format}."
    )


def _instance_masks(masks: object, num: int, size: tuple[int, int], index: int) -> Tensor:
    shape = (num, *size)
    if (
        isinstance(masks, Tensor)
        and tuple(masks.shape) == shape
        and not masks.is_floating_point()
        and not masks.is_complex()
        and bool(((masks == 0) | (masks == 1)).all())
    ):
        return masks.detach().cpu().to(torch.bool, copy=True)
    raise ValueError(
        f"Expected 'masks' of target {index} to be a bool or 0/1 integer tensor of shape {shape} (one mask per "
        f"label, at the image's size), but got {_describe(masks)}."
    )


def _parse_voc(annotation: object, image: Tensor, index: int, names: tuple[str, ...]) -> ProbeBatch:
    where = f"the annotation of target {index}"
    size = _field(annotation, "size", where)
    width = _number(_field(size, "width", f"{where}['size']"), f"{where}['size']['width']")
    height = _number(_field(size, "height", f"{where}['size']"), f"{where}['size']['height']")
    if width <= 0 or height <= 0:
        raise ValueError(f"Expected a positive width and height in {where}['size'], but got {dict(size)!r}.")
    objects = annotation.get("object", [])
    objects = [objects] if isinstance(objects, Mapping) else objects
    if not isinstance(objects, (list, tuple)):
        raise ValueError(f"Expected {where}['object'] to be a dict or a list of dicts, but got {_describe(objects)}.")
    labels, boxes = [], []
    for j, obj in enumerate(objects):
        place = f"{where}['object'][{j}]"
        name = _field(obj, "name", place)
        if name not in names:
            raise ValueError(f"Expected object names in target {index} to be one of {list(names)}, but got {name!r}.")
        labels.append(names.index(name))
        boxes.append(_voc_box(_field(obj, "bndbox", place), (width, height), f"{place}['bndbox']"))
    _check_objects(labels, index)
    img_height, img_width = image.shape[-2:]
    scale = torch.tensor([img_width / width, img_height / height] * 2, dtype=torch.float64)
    voc = torch.tensor(boxes, dtype=torch.float64)
    voc[:, :2] -= 1  # to continuous intervals [xmin - 1, xmax], scaled, and back to 1-based inclusive
    voc = voc * scale
    voc[:, :2] += 1
    return ProbeBatch(image, (labels,), "multilabel", (voc,), (torch.tensor(labels),))


def _field(mapping: object, key: str, where: str) -> object:
    if not isinstance(mapping, Mapping) or key not in mapping:
        got = f"keys {list(mapping)!r}" if isinstance(mapping, Mapping) else _describe(mapping)
        raise ValueError(f"Expected {where} to be a dict with key {key!r}, but got {got}.")
    return mapping[key]


def _number(value: object, where: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"Expected {where} to be a number, but got {value!r}.") from None


def _voc_box(bndbox: object, size: tuple[float, float], where: str) -> list[float]:
    keys = ("xmin", "ymin", "xmax", "ymax")
    xmin, ymin, xmax, ymax = (_number(_field(bndbox, k, where), f"{where}[{k!r}]") for k in keys)
    width, height = size
    if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
        raise ValueError(
            f"Expected {where} to satisfy 1 <= xmin <= xmax <= width={width:g} and 1 <= ymin <= ymax <= "
            f"height={height:g}, but got {dict(bndbox)!r}."  # type: ignore[call-overload]
        )
    return [xmin, ymin, xmax, ymax]


# --------------------------------------------------------------------------- drawing probes


def draw_probes(
    dataloader: DataLoader,
    count: int,
    *,
    seed: int = 0,
    batch_to_probe: Callable[[object], object] | None = None,
    class_names: Sequence[str] | None = None,
    max_candidates: int | None = None,
) -> tuple[ProbeBatch, list[int]]:
    """Draw ``count`` probe images once, deterministically from ``seed``, spread across classes.

    Candidates:

    - map-style dataset: the first ``max_candidates`` indices of
      ``torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))``; each item
      ``dataset[i]`` is collated alone with the loader's ``collate_fn([item])`` (in this process)
      and must give one image. Identity = dataset index.
    - :class:`~torch.utils.data.IterableDataset`: the first ``max_candidates`` images the
      dataset yields, read through a fresh single-process DataLoader with the loader's
      ``batch_size`` and ``collate_fn`` (the user's loader, its workers and its iterator are
      never touched). Identity = position in that stream.

    Each batch goes through ``batch_to_probe`` (when given) and then :func:`parse_batch`.
    Selection is a greedy round-robin over classes: repeat {for each class in ascending order,
    take the earliest unused candidate having it} until ``count`` are chosen or none is left;
    fewer candidates than ``count`` gives all of them.

    RNG isolation: every read runs with the global torch (CPU, and CUDA when initialised),
    ``random`` and numpy RNGs saved, seeded from ``(seed, identity)`` (from ``seed`` for a
    stream) and restored afterwards, so random transforms give the same images at every call
    and training's RNG streams and samplers are left exactly as they were (the loader's
    sampler and batch sampler are never used). :func:`load_probes` re-reads the same images.

    Args:
        dataloader: the training or validation DataLoader.
        count: number of probes, >= 1.
        seed: int >= 0.
        batch_to_probe: turns a batch into (images, labels) or a :class:`ProbeBatch`.
        class_names: see :func:`parse_batch`.
        max_candidates: most items (images of a stream) read; default ``max(8 * count, 64)``,
            at least ``count``.

    Returns:
        The probes in selection order, and their identities.
    """
    count = _check_positive(count, "count")
    seed = _check_seed(seed)
    limit = max(8 * count, 64) if max_candidates is None else _check_positive(max_candidates, "max_candidates")
    if limit < count:
        raise ValueError(f"Expected `max_candidates` to be >= `count`={count}, but got {max_candidates!r}.")
    reader = _Reader(dataloader, seed, batch_to_probe, class_names)
    if reader.map_style:
        order = torch.randperm(reader.length, generator=torch.Generator().manual_seed(seed))
        identities = order[:limit].tolist()
        candidates = reader.items(identities)
    else:
        candidates = reader.stream(limit)
        identities = list(range(len(candidates)))
    chosen = _spread(candidates.classes, count)
    return candidates.select(chosen), [identities[k] for k in chosen]


def load_probes(
    dataloader: DataLoader,
    identities: Sequence[int],
    *,
    seed: int = 0,
    batch_to_probe: Callable[[object], object] | None = None,
    class_names: Sequence[str] | None = None,
) -> ProbeBatch:
    """Re-read the probes :func:`draw_probes` returned as ``identities`` (same ``seed``).

    Items are read exactly as :func:`draw_probes` read them (same per-item seeding), so the
    images are bitwise the same when the dataset and its transforms are deterministic given
    the global RNGs. A stream is re-read from its start up to ``max(identities) + 1`` images.
    """
    seed = _check_seed(seed)
    reader = _Reader(dataloader, seed, batch_to_probe, class_names)
    wanted = _int_list(identities)
    if wanted is None or not wanted or min(wanted) < 0 or (reader.map_style and max(wanted) >= reader.length):
        bound = f"in [0, {reader.length})" if reader.map_style else ">= 0"
        raise ValueError(f"Expected `identities` to be a non-empty sequence of ints {bound}, but got {identities!r}.")
    if reader.map_style:
        return reader.items(wanted)
    stream = reader.stream(max(wanted) + 1)
    if len(stream) <= max(wanted):
        raise ValueError(
            f"Expected the dataset to yield at least {max(wanted) + 1} images, as when the probes were drawn, "
            f"but it yielded {len(stream)}."
        )
    return stream.select(wanted)


class _Reader:
    """Reads single items (map-style) or the start of a stream (iterable) under isolated RNGs."""

    def __init__(
        self,
        dataloader: object,
        seed: int,
        batch_to_probe: Callable[[object], object] | None,
        class_names: Sequence[str] | None,
    ) -> None:
        if not isinstance(dataloader, DataLoader):
            raise TypeError(f"Expected `dataloader` to be a torch DataLoader, but got {_describe(dataloader)}.")
        if batch_to_probe is not None and not callable(batch_to_probe):
            raise TypeError(f"Expected `batch_to_probe` to be None or a callable, but got {batch_to_probe!r}.")
        self.names = _check_class_names(class_names)
        self.loader, self.seed, self.batch_to_probe = dataloader, seed, batch_to_probe
        dataset = dataloader.dataset
        self.map_style = not isinstance(dataset, IterableDataset)
        if self.map_style:
            if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
                raise TypeError(
                    "Expected `dataloader.dataset` to be a map-style dataset (with __len__ and __getitem__) or an "
                    f"IterableDataset, but got {_describe(dataset)}."
                )
            if dataloader.batch_sampler is None:
                raise ValueError(
                    "Expected `dataloader` to batch samples (batch_size or batch_sampler set), but got a DataLoader "
                    "with batch_size=None. Probes are drawn one dataset item at a time: give the monitor a loader "
                    "whose dataset yields single images, or an IterableDataset."
                )
            self.length = len(dataset)
        if self.map_style and self.length == 0:
            raise ValueError("Expected `dataloader.dataset` to hold at least one item, but it is empty.")

    def parse(self, batch: object) -> ProbeBatch:
        return parse_batch(batch if self.batch_to_probe is None else self.batch_to_probe(batch), self.names)

    def items(self, indices: Sequence[int]) -> ProbeBatch:
        return ProbeBatch.cat([self.item(i) for i in indices])

    def item(self, index: int) -> ProbeBatch:
        with _isolated_rng(_derived_seed(self.seed, index)):
            probe = self.parse(self.loader.collate_fn([self.loader.dataset[index]]))
        if len(probe) != 1:
            raise ValueError(
                f"Expected dataset item {index}, collated alone, to give one image, but got {len(probe)}."
            )
        return probe

    def stream(self, limit: int) -> ProbeBatch:
        loader = DataLoader(
            self.loader.dataset, batch_size=self.loader.batch_size, collate_fn=self.loader.collate_fn, num_workers=0
        )
        batches: list[ProbeBatch] = []
        total = 0
        with _isolated_rng(_derived_seed(self.seed, "stream")):
            for batch in loader:
                probe = self.parse(batch)
                batches.append(probe)
                total += len(probe)
                if total >= limit:
                    break
        if not batches:
            raise ValueError("Expected `dataloader.dataset` to yield at least one item, but it yielded none.")
        stream = ProbeBatch.cat(batches)
        return stream.select(range(min(limit, len(stream))))


def _spread(classes: Sequence[tuple[int, ...]], count: int) -> list[int]:
    """Greedy round-robin over classes (ascending): positions of the chosen candidates, in order."""
    by_class: dict[int, list[int]] = {}
    for position, image_classes in enumerate(classes):
        for c in image_classes:
            by_class.setdefault(c, []).append(position)
    cursor = dict.fromkeys(by_class, 0)
    used = [False] * len(classes)
    chosen: list[int] = []
    target = min(count, len(classes))  # every candidate has a class: each round takes one at least
    while len(chosen) < target:
        for c in sorted(by_class):
            queue, i = by_class[c], cursor[c]
            while i < len(queue) and used[queue[i]]:
                i += 1
            cursor[c] = i
            if i < len(queue) and len(chosen) < target:
                used[queue[i]] = True
                chosen.append(queue[i])
    return chosen


# --------------------------------------------------------------------------- RNG isolation


def _derived_seed(seed: int, key: int | str) -> int:
    """A 63-bit seed from ``(seed, key)``: the same for draw_probes and load_probes."""
    digest = hashlib.sha256(f"saliency_monitor.probes:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU, initialised CUDA devices), ``random`` and numpy; restore them on exit.

    Only the CPU generator and initialised CUDA devices' generators are seeded, never through
    ``torch.manual_seed``: with CUDA not yet initialised that would queue a seed that CUDA
    applies later, outside this block.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    python_state = random.getstate()
    numpy_state = np.random.get_state() if np is not None else None
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for device in cuda:
                torch.cuda.default_generators[device].manual_seed(seed)
            random.seed(seed)
            if np is not None:
                np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(python_state)
        if np is not None:
            np.random.set_state(numpy_state)


def _check_positive(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")
    return value


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"Expected `seed` to be an int in [0, 2**63), but got {seed!r}.")
    return seed


def _describe(x: object) -> str:
    """A short description of ``x`` for error messages (never a huge repr)."""
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys {list(x)!r}"
    if isinstance(x, (list, tuple)):
        kinds = sorted({_kind(v) for v in x})
        shown = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
        return f"a {type(x).__name__} of {len(x)} items" + (f" ({shown})" if kinds else "")
    return f"a {_kind(x)}"


def _kind(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    cls = type(x)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
