"""Reading the user's batches: :func:`parse_batch`, the default reader of a batch as a
DataLoader yields it (tuples, dicts, index / multi-hot labels, torchvision detection targets,
raw ``torchvision.datasets.VOCDetection`` annotations)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ..._checks import describe
from .batch import ProbeBatch, int_list, is_image_tensor
from .sizing import one_size, scale_voc_boxes

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


def parse_batch(batch: object, class_names: Sequence[str] | None = None) -> ProbeBatch:
    """Read images and labels from one batch as the user's DataLoader yields it.

    Accepted batches:

    - a tuple or list ``(images, labels, *rest)``: items after the first two (sample indices,
      file paths, ...) are ignored;
    - a mapping with one image key among ``IMAGE_KEYS`` ("image", "images", "input",
      "inputs", "x") and one label key among ``LABEL_KEYS`` ("label", "labels", "target",
      "targets", "y"); its other keys are ignored;
    - a :class:`ProbeBatch`, returned unchanged (so ``batch_to_probe`` may build one).

    ``images``: a (B, C, H, W) tensor, or a list / tuple of (C, H, W) tensors
    (``collate_fn=lambda b: tuple(zip(*b))``), which are stacked; floating point, or integer
    (e.g. uint8, for a model that converts inside ``forward``: kept as they are). They are
    copied to the CPU and detached. Images of a list that differ in size are brought to one
    size (:mod:`.sizing`; the result's ``resized`` says so).

    ``labels``:

    - class indices, an integer tensor (B,) or (B, 1) or a list of ints -> "multiclass";
    - binary labels (a single-logit classifier trained with BCE): a float or bool tensor (B,) or
      (B, 1), every value 0 or 1 -> class indices 0 / 1, "multiclass";
    - multi-hot (B, C) labels with C >= 2, every value 0 or 1 (any dtype), at least one 1 per
      row -> "multilabel" (a list of (C,) tensors is stacked first);
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
    return one_size(parse_parts(batch, class_names))


def parse_parts(batch: object, class_names: Sequence[str] | None = None) -> list[ProbeBatch]:
    """:func:`parse_batch` before images of different sizes are brought to one size: the batch's
    probes, in order, as :class:`ProbeBatch` parts of one size each (one part per image when
    sizes differ or the labels are target dicts)."""
    names = check_class_names(class_names)
    if isinstance(batch, ProbeBatch):
        return [batch]
    images, labels = _split_batch(batch)
    parts = _parse_labels(labels, _parse_images(images), VOC_CLASSES if names is None else names)
    if names is not None:
        largest = max(c[-1] for part in parts for c in part.classes)
        if largest >= len(names):
            raise ValueError(
                f"Expected class indices < len(class_names)={len(names)}, but got class {largest}."
            )
    return parts


def check_class_names(class_names: object) -> tuple[str, ...] | None:
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
        f"and one label key in {list(LABEL_KEYS)}, but got {describe(batch)}. Otherwise {_BATCH_TO_PROBE}."
    )


def _parse_images(images: object) -> list[Tensor]:
    """[(B, C, H, W)] for images of one shape, else one (1, C, H, W) tensor per image; CPU copies."""
    if isinstance(images, (list, tuple)) and images and all(is_image_tensor(x, 3) for x in images):
        if len({(tuple(x.shape), x.dtype) for x in images}) > 1:
            return [x.detach().to("cpu", copy=True)[None] for x in images]
        images = torch.stack([x.detach().cpu() for x in images])
    if not is_image_tensor(images, 4) or images.shape[0] == 0:
        raise TypeError(
            "Expected `images` to be a floating-point or integer tensor (B, C, H, W) with B >= 1, or a list of "
            f"(C, H, W) such tensors, but got {describe(images)}. Convert images to tensors in the dataset's "
            "transform (e.g. torchvision.transforms.ToTensor()), or pass `batch_to_probe=` to SaliencyMonitor."
        )
    return [images.detach().to("cpu", copy=True)]


def _parse_labels(labels: object, parts: list[Tensor], names: tuple[str, ...]) -> list[ProbeBatch]:
    num = sum(part.shape[0] for part in parts)
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(t, Mapping) for t in labels):
        _check_count(len(labels), num)
        images = [image[None] for part in parts for image in part]
        return [_parse_target(t, images[i], i, names) for i, t in enumerate(labels)]
    tensor = _labels_tensor(labels)
    if tensor is None:
        raise TypeError(
            "Expected `labels` to be class indices (an integer tensor (B,) or a list of ints), multi-hot labels "
            "(B, C), or a list of target dicts (torchvision detection or VOCDetection; collate them with "
            f"`collate_fn=lambda b: tuple(zip(*b))`), but got {describe(labels)}. Otherwise {_BATCH_TO_PROBE}."
        )
    if tensor.ndim not in (1, 2):
        raise ValueError(f"Expected `labels` of shape (B,) or (B, C), but got shape {tuple(tensor.shape)}.")
    _check_count(tensor.shape[0], num)
    if tensor.ndim == 2 and tensor.shape[1] == 1:  # one column: class indices or binary labels
        tensor = tensor[:, 0]
    task = "multiclass" if tensor.ndim == 1 else "multilabel"
    classes = _index_classes(tensor) if tensor.ndim == 1 else _multi_hot_classes(tensor)
    out, start = [], 0
    for part in parts:
        out.append(ProbeBatch(part, classes[start : start + part.shape[0]], task))
        start += part.shape[0]
    return out


def _labels_tensor(labels: object) -> Tensor | None:
    """``labels`` as a tensor: tensors and numpy arrays as they are, a list of numbers or of
    same-shape tensors stacked; None for anything else."""
    if isinstance(labels, Tensor):
        return labels.detach().cpu()
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
        return torch.from_numpy(labels)
    if not isinstance(labels, (list, tuple)) or not labels:
        return None
    if all(isinstance(x, Tensor) for x in labels):
        if len({tuple(x.shape) for x in labels}) != 1 or labels[0].ndim > 1:
            return None
        return torch.stack([x.detach().cpu() for x in labels])
    numbers = (int, float, np.integer, np.floating, np.bool_)
    if all(isinstance(x, numbers) for x in labels):
        return torch.tensor([x.item() if hasattr(x, "item") else x for x in labels])
    return None


def _check_count(count: int, num: int) -> None:
    if count != num:
        raise ValueError(f"Expected `labels` for {num} images, but got {count}.")


def _index_classes(labels: Tensor) -> tuple[tuple[int, ...], ...]:
    binary = not labels.is_complex() and bool(((labels == 0) | (labels == 1)).all())
    if labels.is_complex() or ((labels.is_floating_point() or labels.dtype == torch.bool) and not binary):
        raise ValueError(
            f"Expected `labels` of shape (B,) or (B, 1) to be integer class indices or binary labels (every value 0 "
            f"or 1), but got {describe(labels)}. Other float labels (regression or soft targets) do not say which "
            "class to explain: pass `batch_to_probe=` to SaliencyMonitor, returning integer class indices or "
            "multi-hot (B, C) labels."
        )
    labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"Expected `labels` to be class indices >= 0, but got {int(labels.min())}.")
    return tuple((int(c),) for c in labels.tolist())


def _multi_hot_classes(labels: Tensor) -> tuple[tuple[int, ...], ...]:
    binary = (labels == 0) | (labels == 1)
    if labels.is_complex() or not bool(binary.all()):
        bad = labels[~binary][0].item() if not labels.is_complex() else "complex values"
        raise ValueError(
            f"Expected `labels` of shape (B, C) to be multi-hot (every value 0 or 1), but got {describe(labels)} "
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
    labels = int_list(target["labels"])
    if labels is None or (isinstance(target["labels"], Tensor) and target["labels"].ndim != 1):
        raise ValueError(
            f"Expected 'labels' of target {index} to be a (K,) integer tensor or a list of ints, but got "
            f"{describe(target['labels'])}."
        )
    _check_objects(labels, index)
    if "boxes" not in target:
        if "masks" in target:
            raise ValueError(f"Expected 'boxes' alongside 'masks' in target {index}, but got keys {list(target)!r}.")
        return ProbeBatch(image, (tuple(labels),), "multilabel")
    height, width = image.shape[-2:]
    boxes = _xyxy_boxes(target["boxes"], len(labels), (height, width), index)
    voc = boxes.clone()
    voc[:, :2] += 1  # x1, y1 (continuous) -> first covered pixel, 1-based; x2, y2 are the last ones
    masks = None
    if "masks" in target:
        masks = (_instance_masks(target["masks"], len(labels), (height, width), index),)
    return ProbeBatch(image, (tuple(labels),), "multilabel", (voc,), (torch.tensor(labels),), masks)


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
            f"{describe(boxes)}."
        )
    x1, y1, x2, y2 = tensor.unbind(1)
    valid = (x1 >= 0) & (x1 < x2) & (x2 <= width) & (y1 >= 0) & (y1 < y2) & (y2 <= height)
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

    canvas = tuple(int(s) for s in getattr(boxes, "canvas_size"))  # noqa: B009 - a tv_tensors attribute
    if canvas != tuple(size):
        raise ValueError(
            f"Expected 'boxes' of target {index} to have canvas_size equal to the image's (H, W)={tuple(size)}, "
            f"but got {canvas}."
        )
    box_format = getattr(boxes, "format")  # noqa: B009 - a tv_tensors attribute
    fmt = getattr(box_format, "name", str(box_format)).lower()
    plain = boxes.as_subclass(Tensor)
    if fmt == "xyxy":
        return plain
    if fmt in ("xywh", "cxcywh"):
        return box_convert(plain, in_fmt=fmt, out_fmt="xyxy")
    raise ValueError(
        f"Expected 'boxes' of target {index} in format XYXY, XYWH or CXCYWH, but got {box_format}."
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
        f"label, at the image's size), but got {describe(masks)}."
    )


def _parse_voc(annotation: object, image: Tensor, index: int, names: tuple[str, ...]) -> ProbeBatch:
    where = f"the annotation of target {index}"
    size = _field(annotation, "size", where)
    annotation = cast(Mapping[str, Any], annotation)  # _field checked it is a mapping
    width = _number(_field(size, "width", f"{where}['size']"), f"{where}['size']['width']")
    height = _number(_field(size, "height", f"{where}['size']"), f"{where}['size']['height']")
    if width <= 0 or height <= 0:
        raise ValueError(f"Expected a positive width and height in {where}['size'], but got {size!r}.")
    objects = annotation.get("object", [])
    objects = [objects] if isinstance(objects, Mapping) else objects
    if not isinstance(objects, (list, tuple)):
        raise ValueError(f"Expected {where}['object'] to be a dict or a list of dicts, but got {describe(objects)}.")
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
    voc = scale_voc_boxes(torch.tensor(boxes, dtype=torch.float64), (img_height / height, img_width / width))
    return ProbeBatch(image, (tuple(labels),), "multilabel", (voc,), (torch.tensor(labels),))


def _field(mapping: object, key: str, where: str) -> object:
    if not isinstance(mapping, Mapping) or key not in mapping:
        got = f"keys {list(mapping)!r}" if isinstance(mapping, Mapping) else describe(mapping)
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
