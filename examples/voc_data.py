"""PASCAL VOC 2007 classification data for the examples: real VOC, or a synthetic set in its layout.

- :func:`generate_synthetic_voc` writes a small synthetic data set in the real VOC 2007 folder
  layout (JPEG images, XML annotations, split files), so that it is read by the very code that
  reads real VOC (``torchvision.datasets.VOCDetection``). Each of the 20 VOC classes is a
  distinct object (shape x colour x texture, see :data:`CLASS_STYLES`) drawn on a cluttered
  background; a model learns them within a few epochs, and saliency maps can localise them.
- :class:`VOCClassification` reads either as (normalised image, target dict with boxes).
- :func:`multi_hot`, :func:`collate` and :class:`VOCDataModule` make batches for multi-label
  training that :func:`saliency_monitor.monitor.probes.parse_batch` reads with their boxes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from saliency_monitor.monitor.probes import VOC_CLASSES

__all__ = [
    "CLASS_STYLES",
    "VOC_CLASSES",
    "VOCClassification",
    "VOCDataModule",
    "collate",
    "generate_synthetic_voc",
    "multi_hot",
]

IMAGE_SETS = ("train", "val", "trainval", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- synthetic VOC

SYNTHETIC_VERSION = 1
"""Bump when the drawing changes: cached sets of an older version are regenerated."""
MARKER = "synthetic_voc.json"
"""Written last into ``VOC2007/``: its presence means a complete synthetic set."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 225), "yellow": (245, 215, 25),
    "magenta": (215, 40, 205), "cyan": (30, 205, 220), "orange": (250, 135, 15), "purple": (115, 35, 165),
    "white": (248, 248, 248), "black": (15, 15, 15),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring", "cross", "hexagon", "ellipse", "crescent")
TEXTURES = ("solid", "stripes", "dots", "checker")

CLASS_STYLES: dict[str, tuple[str, str, str]] = {
    "aeroplane": ("circle", "red", "solid"),
    "bicycle": ("square", "green", "stripes"),
    "bird": ("triangle", "blue", "dots"),
    "boat": ("diamond", "yellow", "checker"),
    "bottle": ("star", "magenta", "solid"),
    "bus": ("ring", "cyan", "stripes"),
    "car": ("cross", "orange", "dots"),
    "cat": ("hexagon", "purple", "checker"),
    "chair": ("ellipse", "white", "solid"),
    "cow": ("crescent", "black", "stripes"),
    "diningtable": ("circle", "yellow", "stripes"),
    "dog": ("square", "cyan", "checker"),
    "horse": ("triangle", "orange", "solid"),
    "motorbike": ("diamond", "purple", "stripes"),
    "person": ("star", "white", "dots"),
    "pottedplant": ("ring", "black", "checker"),
    "sheep": ("cross", "red", "checker"),
    "sofa": ("hexagon", "green", "solid"),
    "train": ("ellipse", "blue", "checker"),
    "tvmonitor": ("crescent", "magenta", "dots"),
}
"""Class name -> (shape, colour, texture). Each shape and each colour serves two classes, which
differ in the other two attributes: any two classes differ in at least two of the three."""

NUM_OBJECTS_P = (0.5, 0.35, 0.15)  # probability of 1, 2, 3 objects per image
SMALL_P = 0.12  # probability that an object is small (7-12 % of the side): marked difficult
SIZE_RANGE = (0.15, 0.45)  # side of a regular object's canvas, as a fraction of the image side
SMALL_RANGE = (0.07, 0.115)
DIFFICULT_BELOW = 0.12  # an object whose box's longer side is below this fraction is difficult
MIN_IMAGE_SIZE = 32


def generate_synthetic_voc(
    root: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 200,
    num_test: int = 300,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic PASCAL VOC 2007 data set under ``root`` and return ``root``.

    Layout (as real VOC): ``root/VOCdevkit/VOC2007/`` with ``JPEGImages/{id}.jpg``,
    ``Annotations/{id}.xml`` and ``ImageSets/Main/{train,val,trainval,test}.txt``; ids are
    ``"000001"`` ... ``f"{N:06d}"`` (N = all images), dealt to the splits by a seeded
    permutation (VOC's splits interleave too), each split file sorted; trainval = train + val.
    Images are ``image_size`` x ``image_size`` RGB JPEGs (quality 90) with 1 to 3 objects.
    Annotations follow VOC's schema; ``bndbox`` is the drawn extent of the object, 1-based
    inclusive pixels; objects never overlap and are never truncated; an object whose box's
    longer side is below 12 % of the image side is ``difficult`` (as VOC marks its tiny objects).

    The output is a function of the arguments only (each image is drawn from its own RNG
    seeded by ``(seed, id)``). Cached: when ``root`` already holds a set generated with the
    same arguments (a JSON marker with them and a format version, written last), nothing is
    written. Otherwise the set is generated in a temporary folder next to ``VOC2007``, which
    then replaces a previous synthetic ``VOC2007`` (never a real one: see Raises).

    Args:
        root: the folder that holds (or will hold) ``VOCdevkit``: what
            ``torchvision.datasets.VOCDetection`` takes as ``root``.
        num_train, num_val, num_test: images per split (each >= 1).
        image_size: side of the square images, >= 32.
        seed: seed of the whole set, >= 0.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for a bad argument, or when ``root/VOCdevkit/VOC2007`` exists but was not
            written by this function (it could be the real data set: it is left alone).
    """
    params = _check_generate_args(num_train, num_val, num_test, image_size, seed)
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2007"
    marker = {"generator": "examples.voc_data.generate_synthetic_voc", "version": SYNTHETIC_VERSION, **params}
    existing = _read_marker(voc)
    if existing == marker:
        return root
    if existing is None and voc.exists():
        raise ValueError(
            f"Expected `root` to hold no VOCdevkit/VOC2007 or a synthetic one written by generate_synthetic_voc "
            f"(with its {MARKER}), but got {str(root)!r} whose VOC2007 has no marker: it may be the real data set, "
            "so it is left alone. Pass another `root`."
        )
    partial = voc.parent / f".VOC2007.partial-{os.getpid()}"
    try:
        _write_set(partial, params)
        (partial / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if voc.exists():
            shutil.rmtree(voc)
        os.replace(partial, voc)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return root


def _check_generate_args(
    num_train: object, num_val: object, num_test: object, image_size: object, seed: object
) -> dict[str, int]:
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")
    if not _is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"Expected `image_size` to be an int >= {MIN_IMAGE_SIZE}, but got {image_size!r}.")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"Expected `seed` to be an int >= 0, but got {seed!r}.")
    return {"num_train": num_train, "num_val": num_val, "num_test": num_test, "image_size": image_size, "seed": seed}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_marker(voc: Path) -> dict[str, object] | None:
    """The marker's content, ``{}`` when unreadable (ours, but broken), None when absent."""
    path = voc / MARKER
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _write_set(voc: Path, params: dict[str, int]) -> None:
    if voc.exists():
        shutil.rmtree(voc)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    counts = {"train": params["num_train"], "val": params["num_val"], "test": params["num_test"]}
    total = sum(counts.values())
    order = np.random.default_rng([params["seed"], 0]).permutation(total) + 1
    splits: dict[str, list[str]] = {}
    start = 0
    for split, count in counts.items():
        splits[split] = [f"{i:06d}" for i in sorted(order[start : start + count].tolist())]
        start += count
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    for split in IMAGE_SETS:
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in splits[split]))
    for number in range(1, total + 1):
        image_id = f"{number:06d}"
        rng = np.random.default_rng([params["seed"], number])
        pixels, objects = draw_image(rng, params["image_size"])
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        _write_annotation(voc / "Annotations" / f"{image_id}.xml", image_id, pixels.shape, objects)


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One synthetic image: (size, size, 3) uint8 and its objects (name, 1-based box, difficult)."""
    canvas = _background(rng, size)
    occupied = np.zeros((size, size), dtype=bool)
    objects = []
    count = rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P) + 1
    for _ in range(count):
        name = VOC_CLASSES[rng.integers(len(VOC_CLASSES))]
        drawn = _place_object(rng, canvas, occupied, name)
        if drawn is not None:
            objects.append(drawn)
    canvas += rng.normal(0.0, 4.0, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted colour gradient + soft blobs + thin lines + noise, float (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)).reshape(size, size, 1)
    t = (t - t.min()) / (t.max() - t.min())
    start, end = (_muted(rng) for _ in range(2))
    canvas = start * (1 - t) + end * t
    for _ in range(rng.integers(1, 4)):  # soft blobs: no edge, no shape
        cy, cx = rng.uniform(0, 1, 2)
        sigma = rng.uniform(0.04, 0.12)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))[..., None]
        canvas = canvas * (1 - 0.8 * weight) + rng.uniform(0, 255, 3) * 0.8 * weight
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 5)):  # thin random lines across the background
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(points, fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(image, dtype=np.float64) + rng.normal(0.0, 10.0, (size, size, 3))


def _muted(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70, 185)
    return grey + 0.45 * (rng.uniform(0, 255, 3) - grey)


def _place_object(rng: np.random.Generator, canvas: np.ndarray, occupied: np.ndarray, name: str) -> dict | None:
    """Draw ``name`` where its box overlaps no other (30 tries); None when it found no room."""
    image_size = canvas.shape[0]
    shape, colour, texture = CLASS_STYLES[name]
    small = rng.uniform() < SMALL_P
    fraction = rng.uniform(*(SMALL_RANGE if small else SIZE_RANGE))
    width = max(4, round(fraction * image_size))
    height = max(3, round(width * 0.5)) if shape == "ellipse" else width
    mask = _shape_mask(shape, width, height)
    pattern = _texture(texture, width, height, COLOURS[colour])
    ys, xs = np.nonzero(mask)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, image_size - width + 1)), int(rng.integers(0, image_size - height + 1))
        top, bottom = y0 + int(ys.min()), y0 + int(ys.max())
        left, right = x0 + int(xs.min()), x0 + int(xs.max())
        if occupied[max(top - 2, 0) : bottom + 3, max(left - 2, 0) : right + 3].any():
            continue
        occupied[top : bottom + 1, left : right + 1] = True
        region = canvas[y0 : y0 + height, x0 : x0 + width]
        region[mask] = pattern[mask]
        box = (left + 1, top + 1, right + 1, bottom + 1)  # VOC: 1-based, inclusive
        difficult = max(right - left + 1, bottom - top + 1) < DIFFICULT_BELOW * image_size
        return {"name": name, "bndbox": box, "difficult": int(difficult)}
    return None


def _shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of ``shape`` filling its canvas (the star and hexagon nearly)."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    w, h = width - 1, height - 1
    cx, cy = w / 2, h / 2
    if shape in ("circle", "ellipse"):
        draw.ellipse((0, 0, w, h), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, w, h), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, 0), (w, h), (0, h)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, 0), (w, cy), (cx, h), (0, cy)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = cx if k % 2 == 0 else 0.42 * cx
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "ring":
        draw.ellipse((0, 0, w, h), fill=255)
        inset = 0.27 * w
        draw.ellipse((inset, inset, w - inset, h - inset), fill=0)
    elif shape == "cross":
        arm = w / 3
        draw.rectangle((cx - arm / 2, 0, cx + arm / 2, h), fill=255)
        draw.rectangle((0, cy - arm / 2, w, cy + arm / 2), fill=255)
    elif shape == "hexagon":
        draw.polygon([(cx + cx * math.cos(a), cy + cx * math.sin(a)) for a in np.arange(6) * math.pi / 3], fill=255)
    elif shape == "crescent":
        draw.ellipse((0, 0, w, h), fill=255)
        draw.ellipse((0.38 * w, -0.05 * h, 1.3 * w, 0.95 * h), fill=0)
    else:  # pragma: no cover - CLASS_STYLES only names SHAPES
        raise ValueError(f"Expected a shape in {list(SHAPES)}, but got {shape!r}.")
    return np.asarray(image) > 0


def _texture(texture: str, width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    """(height, width, 3) float: ``colour`` alternating with a darker (or, if dark, lighter) shade."""
    main = np.asarray(colour, dtype=np.float64)
    dark = main.mean() < 100
    other = main + (255 - main) * 0.55 if dark else main * 0.3
    period = max(4, round(max(width, height) / 4))
    yy, xx = np.mgrid[0:height, 0:width]
    if texture == "solid":
        second = np.zeros((height, width), dtype=bool)
    elif texture == "stripes":
        second = ((xx + yy) // max(2, period // 2)) % 2 == 1
    elif texture == "dots":
        offset = (period - 1) / 2
        second = (xx % period - offset) ** 2 + (yy % period - offset) ** 2 <= (0.3 * period) ** 2
    elif texture == "checker":
        second = ((xx // max(2, period // 2)) + (yy // max(2, period // 2))) % 2 == 1
    else:  # pragma: no cover - CLASS_STYLES only names TEXTURES
        raise ValueError(f"Expected a texture in {list(TEXTURES)}, but got {texture!r}.")
    return np.where(second[..., None], other, main)


def _write_annotation(path: Path, image_id: str, shape: tuple[int, ...], objects: list[dict]) -> None:
    annotation = ET.Element("annotation")
    _leaf(annotation, "folder", "VOC2007")
    _leaf(annotation, "filename", f"{image_id}.jpg")
    source = ET.SubElement(annotation, "source")
    _leaf(source, "database", "Synthetic VOC2007 (saliency-monitor examples)")
    size = ET.SubElement(annotation, "size")
    for tag, value in zip(("width", "height", "depth"), (shape[1], shape[0], shape[2])):
        _leaf(size, tag, value)
    _leaf(annotation, "segmented", 0)
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        _leaf(node, "name", obj["name"])
        _leaf(node, "pose", "Unspecified")
        _leaf(node, "truncated", 0)
        _leaf(node, "difficult", obj["difficult"])
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bndbox"]):
            _leaf(bndbox, tag, value)
    tree = ET.ElementTree(annotation)
    ET.indent(tree)
    tree.write(path, encoding="utf-8")


def _leaf(parent: ET.Element, tag: str, value: object) -> None:
    ET.SubElement(parent, tag).text = str(value)


# --------------------------------------------------------------------------- dataset


class VOCClassification(Dataset):
    """VOC 2007 (real or synthetic) as (normalised image, target dict) for multi-label training.

    Wraps ``torchvision.datasets.VOCDetection(root, year="2007", image_set=image_set,
    download=download)``. Each item:

    - image: float32 (3, S, S), the image resized (bilinear) to S = ``image_size`` (aspect
      ratio not kept), normalised with ImageNet's mean and std;
    - target: ``{"labels": (K,) int64 class index in VOC_CLASSES, "boxes": (K, 4) float32,
      "difficult": (K,) bool}``, one row per annotated object. Boxes are torchvision's
      ``x1, y1, x2, y2`` in continuous pixel coordinates of the resized image: the VOC box
      (1-based inclusive ``xmin..xmax``) covers ``[xmin - 1, xmax]``, scaled by ``S / width``
      (likewise y), so ``0 <= x1 < x2 <= S``.

    ``train=True`` flips the image horizontally with probability 1/2 (torch's global RNG, so
    DataLoader workers and the monitor's probe loading seed it), boxes flipped with it:
    ``x1' = S - x2``, ``x2' = S - x1``.
    """

    def __init__(
        self, root: str | Path, image_set: str, image_size: int, train: bool, download: bool = False
    ) -> None:
        if image_set not in IMAGE_SETS:
            raise ValueError(f"Expected `image_set` to be one of {list(IMAGE_SETS)}, but got {image_set!r}.")
        if not _is_int(image_size) or image_size < 1:
            raise ValueError(f"Expected `image_size` to be a positive int, but got {image_size!r}.")
        if not isinstance(train, bool):
            raise TypeError(f"Expected `train` to be a bool, but got {train!r}.")
        if not isinstance(download, bool):
            raise TypeError(f"Expected `download` to be a bool, but got {download!r}.")
        self.voc = torchvision.datasets.VOCDetection(str(root), year="2007", image_set=image_set, download=download)
        self.image_set = image_set
        self.image_size = image_size
        self.train = train
        self.classes: list[str] = list(VOC_CLASSES)
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, annotation = self.voc[index]
        width, height = image.size
        size = self.image_size
        target = _voc_target(annotation["annotation"], self.voc.annotations[index])
        boxes = target["boxes"]
        boxes[:, 0::2] = (boxes[:, 0::2] - torch.tensor([1.0, 0.0])) * size / width
        boxes[:, 1::2] = (boxes[:, 1::2] - torch.tensor([1.0, 0.0])) * size / height
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        if self.train and bool(torch.rand(()) < 0.5):
            pixels = pixels.flip(-1)
            boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
        target["boxes"] = boxes.clamp_(0.0, float(size))  # float rounding only: VOC boxes lie inside
        return (pixels - self._mean) / self._std, target


def _voc_target(annotation: dict[str, object], path: str) -> dict[str, Tensor]:
    """VOCDetection's parsed XML -> labels, 1-based inclusive boxes (float32), difficult."""
    objects = annotation.get("object", [])
    objects = [objects] if isinstance(objects, dict) else objects
    labels, boxes, difficult = [], [], []
    for obj in objects:
        if obj["name"] not in VOC_CLASSES:
            raise ValueError(f"Expected object names in {list(VOC_CLASSES)}, but got {obj['name']!r} in {path}.")
        labels.append(VOC_CLASSES.index(obj["name"]))
        box = obj["bndbox"]
        boxes.append([float(box[key]) for key in ("xmin", "ymin", "xmax", "ymax")])
        difficult.append(obj.get("difficult", "0") == "1")
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


def multi_hot(targets: Sequence[dict[str, Tensor]], num_classes: int = 20) -> Tensor:
    """(B, num_classes) float32 labels: 1 where the image holds an object of the class.

    VOC's classification ground truth is 1 for a class with a non-difficult object, -1 for an
    absent class and 0 ("difficult", ignored by the evaluation) for a class present only as
    difficult objects. Here those difficult-only classes are 1 as well: the object is in the
    image, so training it as a negative would teach the model to suppress a visible object,
    while VOC's evaluation ignores such pairs whatever the label. (An evaluation that wants
    the protocol exactly masks them with the targets' ``"difficult"``.)
    """
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be a positive int, but got {num_classes!r}.")
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        kind = type(targets).__name__
        raise TypeError(f"Expected `targets` to be a sequence of dicts with 'labels', but got {kind}.")
    for row, target in enumerate(targets):
        if not isinstance(target, Mapping) or "labels" not in target:
            shown = f"keys {list(target)!r}" if isinstance(target, Mapping) else type(target).__name__
            raise TypeError(f"Expected `targets` to be dicts with 'labels', but got {shown} in target {row}.")
    out = torch.zeros(len(targets), num_classes, dtype=torch.float32)
    for row, target in enumerate(targets):
        labels = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Expected labels in [0, {num_classes}), but got {labels.tolist()} in target {row}."
            )
        out[row, labels] = 1.0
    return out


def collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack the images (B, 3, S, S); keep the targets as a list of B dicts."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


# --------------------------------------------------------------------------- data module


class VOCDataModule(pl.LightningDataModule):
    """VOC 2007 (real or synthetic) for multi-label classification.

    ``train_dataloader``: ``train_split`` with flips, shuffled; ``val_dataloader``:
    ``val_split`` without augmentation. Both yield ``(images, targets)`` through
    :func:`collate`; :func:`multi_hot` turns targets into the training labels. With
    ``download=True``, :meth:`prepare_data` downloads VOC 2007 (once, on one process).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        download: bool = False,
        train_split: str = "trainval",
        val_split: str = "test",
    ) -> None:
        super().__init__()
        positive = (("image_size", image_size, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0))
        for name, value, low in positive:
            if not _is_int(value) or value < low:
                raise ValueError(f"Expected `{name}` to be an int >= {low}, but got {value!r}.")
        for name, value in (("train_split", train_split), ("val_split", val_split)):
            if value not in IMAGE_SETS:
                raise ValueError(f"Expected `{name}` to be one of {list(IMAGE_SETS)}, but got {value!r}.")
        if not isinstance(download, bool):
            raise TypeError(f"Expected `download` to be a bool, but got {download!r}.")
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.download = download
        self.train_split = train_split
        self.val_split = val_split
        self.classes: list[str] = list(VOC_CLASSES)
        self.train_dataset: VOCClassification | None = None
        self.val_dataset: VOCClassification | None = None

    def prepare_data(self) -> None:
        if self.download:
            for split in {self.train_split, self.val_split}:
                torchvision.datasets.VOCDetection(str(self.root), year="2007", image_set=split, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = VOCClassification(self.root, self.train_split, self.image_size, train=True)
        if self.val_dataset is None:
            self.val_dataset = VOCClassification(self.root, self.val_split, self.image_size, train=False)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_dataset, shuffle=False)

    def _loader(self, dataset: VOCClassification | None, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )
