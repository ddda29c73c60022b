"""Probe sets: batch parsing of every accepted format (and exact errors for the rest), label
matrices and class regions against hand-computed tensors, and draw_probes / load_probes on
real datasets: deterministic, class-balanced, RNG- and sampler-neutral, bitwise reproducible."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Sampler, TensorDataset
from torchvision import tv_tensors

from saliency_monitor.engine.task import TASKS
from saliency_monitor.monitor.probes import (
    VOC_CLASSES,
    ProbeBatch,
    draw_probes,
    load_probes,
    parse_batch,
)

BATCH_TO_PROBE = "pass `batch_to_probe=` to SaliencyMonitor: a callable that turns a batch into (images, labels)"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, h: int = 4, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=gen(seed))


def zip_collate(batch: list) -> tuple:
    return tuple(zip(*batch))


def raises(error: type[Exception], message: str):
    return pytest.raises(error, match=f"^{re.escape(message)}$")


# --------------------------------------------------------------------------- datasets


class DictDataset(Dataset):
    """Items as dicts, with an extra key that the parser must ignore."""

    def __init__(self, n: int) -> None:
        self.images, self.labels = images(n, seed=1), [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"image": self.images[i], "label": self.labels[i], "path": f"img{i}.jpg"}


def voc_annotation(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> dict:
    """A raw VOCDetection target: every leaf a string, as torchvision's XML parser gives it."""
    return {
        "annotation": {
            "filename": "x.jpg",
            "size": {"width": str(width), "height": str(height), "depth": "3"},
            "object": [
                {
                    "name": name,
                    "pose": "Unspecified",
                    "truncated": "0",
                    "difficult": str(difficult),
                    "bndbox": dict(zip(("xmin", "ymin", "xmax", "ymax"), map(str, box))),
                }
                for name, box, difficult in objects
            ],
        }
    }


class FakeVOC(Dataset):
    """(image tensor resized to 5x10, raw annotation of a 20x10 picture); item i holds class
    i % 4 (and "person" too when i % 3 == 0)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        objects = [(VOC_CLASSES[i % 4], (1, 1, 20, 10), 0)]
        if i % 3 == 0:
            objects.append(("person", (3, 5, 8, 6), 1))
        return torch.full((3, 5, 10), float(i)), voc_annotation(20, 10, objects)


class Stream(IterableDataset):
    """n images (with a random brightness, from torch's global RNG), labels i % 3."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for i in range(self.n):
            yield torch.full((3, 4, 4), float(i)) + torch.rand(()), i % 3


class Augmented(Dataset):
    """Images through a random "augmentation" drawing from torch, random and numpy; counts reads."""

    def __init__(self, labels: list[int]) -> None:
        self.labels, self.reads = labels, 0
        self.base = images(len(labels), seed=2)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        shift = torch.rand(()) + random.random() + float(np.random.rand())
        flipped = self.base[i].flip(-1) if torch.rand(()) < 0.5 else self.base[i]
        return flipped + shift, self.labels[i]


class NoIterSampler(Sampler):
    """A sampler that fails if anyone iterates it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("the sampler must not be iterated")


def rng_states(*generators: torch.Generator) -> list[object]:
    return [torch.get_rng_state(), torch.initial_seed(), random.getstate(), np.random.get_state(),
            *(g.get_state() for g in generators)]


def assert_same_states(before: list[object], after: list[object]) -> None:
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert after[1] == before[1] and after[2] == before[2]
    np_before, np_after = before[3], after[3]
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1]) and np_before[2:] == np_after[2:]
    for a, b in zip(before[4:], after[4:]):
        assert torch.equal(a, b)


def reference_spread(classes: list[tuple[int, ...]], count: int) -> list[int]:
    """Literal round-robin: per round, per class ascending, the first unused candidate having it."""
    chosen: list[int] = []
    all_classes = sorted({c for cs in classes for c in cs})
    while len(chosen) < min(count, len(classes)):
        for c in all_classes:
            for k, cs in enumerate(classes):
                if k not in chosen and c in cs and len(chosen) < count:
                    chosen.append(k)
                    break
    return chosen


# --------------------------------------------------------------------------- parse_batch: accepted


def test_voc_classes_and_tasks() -> None:
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[:3] == ("aeroplane", "bicycle", "bird") and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor" and TASKS == ("multiclass", "multilabel")


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([2, 0, 1]),
        torch.tensor([2, 0, 1], dtype=torch.uint8),
        [2, 0, 1],
        (np.int64(2), np.int64(0), np.int64(1)),
        (torch.tensor(2), torch.tensor(0), torch.tensor(1)),  # zip-collated 0-dim labels
        np.array([2, 0, 1]),
    ],
    ids=["int64", "uint8", "list", "numpy-ints", "0-dim-tensors", "ndarray"],
)
def test_index_labels_are_multiclass(labels: object) -> None:
    x = images(3)
    probe = parse_batch((x, labels, ["a.jpg", "b.jpg", "c.jpg"]))  # extra items are ignored
    assert probe.task == "multiclass" and probe.classes == ((2,), (0,), (1,)) and len(probe) == 3
    assert probe.boxes is None and probe.box_classes is None and probe.masks is None
    assert torch.equal(probe.images, x) and probe.images.data_ptr() != x.data_ptr()  # a copy


def test_images_list_is_stacked_and_detached() -> None:
    x = images(2).requires_grad_()
    probe = parse_batch(([x[0], x[1]], [1, 0]))
    assert not probe.images.requires_grad and probe.images.shape == (2, 3, 4, 6)
    assert torch.equal(probe.images, x.detach())
    probe = parse_batch((x.double(), [1, 0]))
    assert probe.images.dtype == torch.float64 and not probe.images.requires_grad


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int64, torch.uint8])
def test_multi_hot_labels_are_multilabel(dtype: torch.dtype) -> None:
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]]).to(dtype)
    probe = parse_batch((images(3), labels))
    assert probe.task == "multilabel" and probe.classes == ((0, 2), (3,), (0, 1, 2, 3))
    # zip-collated (C,) rows are stacked
    assert parse_batch((images(3), tuple(labels))).classes == probe.classes


@pytest.mark.parametrize("image_key", ["image", "images", "input", "inputs", "x"])
@pytest.mark.parametrize("label_key", ["label", "labels", "target", "targets", "y"])
def test_dict_batches(image_key: str, label_key: str) -> None:
    x = images(2)
    probe = parse_batch({image_key: x, label_key: torch.tensor([4, 1]), "index": torch.tensor([7, 9])})
    assert probe.classes == ((4,), (1,)) and torch.equal(probe.images, x)


def test_detection_targets_convert_boxes_to_voc_convention() -> None:
    x = images(2, h=4, w=6)
    targets = [
        {"labels": torch.tensor([2, 0, 2]), "boxes": torch.tensor([[0.0, 1, 4, 3], [1.5, 0, 6, 4], [5, 2, 6, 3]]),
         "image_id": 7, "iscrowd": torch.zeros(3)},
        {"labels": [1], "boxes": [[0.0, 0.0, 1.0, 1.0]]},
    ]
    probe = parse_batch((x, targets))
    assert probe.task == "multilabel" and probe.classes == ((0, 2), (1,)) and probe.masks is None
    expected = torch.tensor([[1.0, 2, 4, 3], [2.5, 1, 6, 4], [6, 3, 6, 3]], dtype=torch.float64)
    torch.testing.assert_close(probe.boxes[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(probe.boxes[1], torch.tensor([[1.0, 1, 1, 1]], dtype=torch.float64), rtol=0, atol=0)
    assert probe.box_classes[0].tolist() == [2, 0, 2] and probe.box_classes[0].dtype == torch.int64
    # hand-drawn regions (rows = y, cols = x): box (1, 2, 4, 3) covers rows 1..2, cols 0..3;
    # (2.5, 1, 6, 4): cols 2..5 (pixel 1 is only half inside), rows 0..3; (6, 3, 6, 3): pixel (2, 5)
    masks = probe.class_masks(3)
    expected_masks = torch.zeros(2, 3, 4, 6, dtype=torch.bool)
    expected_masks[0, 2, 1:3, 0:4] = True
    expected_masks[0, 2, 2, 5] = True
    expected_masks[0, 0, :, 2:6] = True
    expected_masks[1, 1, 0, 0] = True
    assert torch.equal(masks, expected_masks)


def test_detection_targets_with_instance_masks_and_without_boxes() -> None:
    x = images(2, h=3, w=3)
    instance = torch.zeros(2, 3, 3, dtype=torch.uint8)
    instance[0, 0, 0] = instance[1, 2, 1] = 1  # 0/1 integer masks as Mask R-CNN targets hold them
    targets = [
        {"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.0, 0, 1, 1], [1, 2, 2, 3]]), "masks": instance},
        {"labels": torch.tensor([0])},  # labels only: image-level classes, no region
    ]
    probe = parse_batch((x, targets))
    assert probe.classes == ((1,), (0,))
    assert probe.masks[0].dtype == torch.bool and torch.equal(probe.masks[0], instance.bool())
    assert probe.boxes[1].shape == (0, 4) and probe.masks[1].shape == (0, 3, 3)
    expected = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    expected[0, 1, 0, 0] = expected[0, 1, 2, 1] = True
    assert torch.equal(probe.class_masks(2), expected)
    assert parse_batch((x, [{"labels": [1]}, {"labels": [0]}])).boxes is None


@pytest.mark.parametrize(
    ("fmt", "boxes"),
    [("XYXY", [[1.0, 0, 4, 2]]), ("XYWH", [[1.0, 0, 3, 2]]), ("CXCYWH", [[2.5, 1, 3, 2]])],
)
def test_tv_tensor_boxes_in_any_format(fmt: str, boxes: list[list[float]]) -> None:
    box = tv_tensors.BoundingBoxes(boxes, format=fmt, canvas_size=(4, 6))
    probe = parse_batch((images(1), [{"labels": torch.tensor([0]), "boxes": box}]))
    assert probe.boxes[0].tolist() == [[2.0, 1.0, 4.0, 2.0]]


def test_voc_annotations_rescaled_to_the_image() -> None:
    # picture 20x10 (width x height), tensor 5x10 (H x W): both scales 1/2
    objects = [("dog", (1, 1, 20, 10), 0), ("person", (3, 5, 8, 6), 1), ("dog", (11, 3, 12, 4), 0)]
    target = voc_annotation(20, 10, objects)
    single = voc_annotation(20, 10, [("cat", (2, 2, 4, 4), 0)])
    single["annotation"]["object"] = single["annotation"]["object"][0]  # one object as a dict
    probe = parse_batch(zip_collate([(torch.zeros(3, 5, 10), target), (torch.ones(3, 5, 10), single)]))
    assert probe.task == "multilabel" and probe.classes == ((11, 14), (7,)) and probe.masks is None
    # xmin' = (xmin - 1) / 2 + 1, xmax' = xmax / 2: the whole picture maps to the whole tensor
    expected = torch.tensor([[1.0, 1, 10, 5], [2, 3, 4, 3], [6, 2, 6, 2]], dtype=torch.float64)
    torch.testing.assert_close(probe.boxes[0], expected, rtol=0, atol=0)
    assert probe.box_classes[0].tolist() == [11, 14, 11]
    torch.testing.assert_close(probe.boxes[1], torch.tensor([[1.5, 1.5, 2, 2]], dtype=torch.float64), rtol=0, atol=0)
    masks = probe.class_masks(20)
    assert masks.shape == (2, 20, 5, 10) and masks[0, 11].all()
    person = torch.zeros(5, 10, dtype=torch.bool)
    person[2, 1:4] = True
    assert torch.equal(masks[0, 14], person)
    cat = torch.zeros(5, 10, dtype=torch.bool)
    cat[1, 1] = True  # (1.5, 1.5, 2, 2): only pixel (1, 1) lies wholly inside
    assert torch.equal(masks[1, 7], cat) and masks.sum() == 50 + 3 + 1


def test_voc_annotations_with_custom_class_names() -> None:
    target = voc_annotation(4, 4, [("zebra", (1, 1, 2, 2), 0)])
    probe = parse_batch(([torch.zeros(3, 4, 4)], [target]), class_names=["horse", "zebra"])
    assert probe.classes == ((1,),) and probe.boxes[0].tolist() == [[1.0, 1.0, 2.0, 2.0]]


def test_probe_batch_passes_through() -> None:
    probe = ProbeBatch(images(2), ((1,), (0,)), "multiclass")
    assert parse_batch(probe) is probe


# --------------------------------------------------------------------------- parse_batch: rejected


IMAGES_HINT = (
    "Convert images to tensors in the dataset's transform (e.g. torchvision.transforms.ToTensor()), or pass "
    "`batch_to_probe=` to SaliencyMonitor."
)
IMAGES_EXPECTED = (
    "Expected `images` to be a floating-point or integer tensor (B, C, H, W) with B >= 1, or a list of (C, H, W) "
    "such tensors, but got"
)
LABELS_EXPECTED = (
    "Expected `labels` to be class indices (an integer tensor (B,) or a list of ints), multi-hot labels (B, C), or a "
    "list of target dicts (torchvision detection or VOCDetection; collate them with "
    "`collate_fn=lambda b: tuple(zip(*b))`), but got"
)
BATCH_EXPECTED = (
    "Expected `batch` to be a tuple (images, labels, ...) or a dict with one image key in "
    "['image', 'images', 'input', 'inputs', 'x'] and one label key in ['label', 'labels', 'target', 'targets', 'y'], "
    "but got"
)


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        (images(2), TypeError,
         f"{BATCH_EXPECTED} a torch.float32 tensor of shape (2, 3, 4, 6). Otherwise {BATCH_TO_PROBE}."),
        ((images(2),), TypeError, f"{BATCH_EXPECTED} a tuple of 1 items (torch.float32 tensor of shape (2, 3, 4, 6)). "
         f"Otherwise {BATCH_TO_PROBE}."),
        ({"pixels": images(1), "label": [0]}, TypeError, f"{BATCH_EXPECTED} a dict with keys ['pixels', 'label']. "
         f"Otherwise {BATCH_TO_PROBE}."),
        ({"image": images(1), "x": images(1), "y": [0]}, TypeError, f"{BATCH_EXPECTED} a dict with keys "
         f"['image', 'x', 'y']. Otherwise {BATCH_TO_PROBE}."),
        (([Image.new("RGB", (4, 4))], [0]), TypeError,
         f"{IMAGES_EXPECTED} a list of 1 items (PIL.Image.Image). {IMAGES_HINT}"),
        ((torch.zeros(2, 3, 4, 4, dtype=torch.bool), [0, 1]), TypeError,
         f"{IMAGES_EXPECTED} a torch.bool tensor of shape (2, 3, 4, 4). {IMAGES_HINT}"),
        ((torch.zeros(3, 4, 4), [0]), TypeError,
         f"{IMAGES_EXPECTED} a torch.float32 tensor of shape (3, 4, 4). {IMAGES_HINT}"),
        ((torch.zeros(0, 3, 4, 4), []), TypeError,
         f"{IMAGES_EXPECTED} a torch.float32 tensor of shape (0, 3, 4, 4). {IMAGES_HINT}"),
        (([torch.zeros(1, 4, 4), torch.zeros(3, 5, 4)], [0, 1]), ValueError,
         "Expected all probe images to have one shape (C, H, W) and dtype, but got (1, 4, 4) torch.float32 and "
         "(3, 5, 4) torch.float32. Give every image one number of channels and one dtype in the dataset's transform "
         "(sizes are evened out when probes are read), or pass `batch_to_probe=` to SaliencyMonitor."),
        ((images(2), torch.tensor([0.5, 1.0])), ValueError,
         "Expected `labels` of shape (B,) or (B, 1) to be integer class indices or binary labels (every value 0 or "
         "1), but got a torch.float32 tensor of shape (2,). Other float labels (regression or soft targets) do not "
         "say which class to explain: pass `batch_to_probe=` to SaliencyMonitor, returning integer class indices or "
         "multi-hot (B, C) labels."),
        ((images(2), torch.tensor([[0.7, 0.3], [0.0, 1.0]])), ValueError,
         "Expected `labels` of shape (B, C) to be multi-hot (every value 0 or 1), but got a torch.float32 tensor of "
         "shape (2, 2) holding 0.699999988079071. Soft labels (mixup, cutmix, label smoothing) do not say which "
         "classes are present: pass `batch_to_probe=` to SaliencyMonitor, returning the hard labels."),
        ((images(2), torch.tensor([[2, 0], [0, 1]])), ValueError,
         "Expected `labels` of shape (B, C) to be multi-hot (every value 0 or 1), but got a torch.int64 tensor of "
         "shape (2, 2) holding 2. Soft labels (mixup, cutmix, label smoothing) do not say which "
         "classes are present: pass `batch_to_probe=` to SaliencyMonitor, returning the hard labels."),
        ((images(3), torch.tensor([[1, 0], [0, 0], [0, 0]])), ValueError,
         "Expected every row of multi-hot `labels` to mark at least one class, but got none in rows [1, 2]."),
        ((images(2), torch.tensor([0, -100])), ValueError, "Expected `labels` to be class indices >= 0, but got -100."),
        ((images(2), torch.tensor([0, 1, 2])), ValueError, "Expected `labels` for 2 images, but got 3."),
        ((images(2), torch.tensor(1)), ValueError, "Expected `labels` of shape (B,) or (B, C), but got shape ()."),
        ((images(2), "cat"), TypeError, f"{LABELS_EXPECTED} a str. Otherwise {BATCH_TO_PROBE}."),
        ((images(2), [0, "cat"]), TypeError,
         f"{LABELS_EXPECTED} a list of 2 items (int, str). Otherwise {BATCH_TO_PROBE}."),
        ((images(2), {"labels": torch.zeros(2, 3), "boxes": torch.zeros(2, 3, 4)}), TypeError,
         f"{LABELS_EXPECTED} a dict with keys ['labels', 'boxes']. Otherwise {BATCH_TO_PROBE}."),
    ],
    ids=lambda v: "" if not isinstance(v, str) else v[:40],
)
def test_rejected_batches(batch: object, error: type[Exception], message: str) -> None:
    with raises(error, message):
        parse_batch(batch)


def test_pil_images_error_reaches_the_user_batch() -> None:
    # (image, label) batch whose images were never turned into tensors
    with raises(TypeError, f"{IMAGES_EXPECTED} a tuple of 2 items (PIL.Image.Image). {IMAGES_HINT}"):
        parse_batch(zip_collate([(Image.new("RGB", (4, 4)), 0), (Image.new("RGB", (4, 4)), 1)]))


NO_OBJECT = "Expected target 0 to hold at least one object, but got none."


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"boxes": torch.zeros(1, 4)}, "Expected each target dict to hold 'labels' (torchvision detection style) or "
         "'annotation' (torchvision VOCDetection), but got keys ['boxes'] in target 0."),
        ({"labels": torch.tensor([], dtype=torch.int64)}, NO_OBJECT),
        ({"labels": torch.tensor([[1]])}, "Expected 'labels' of target 0 to be a (K,) integer tensor or a list of "
         "ints, "
         "but got a torch.int64 tensor of shape (1, 1)."),
        ({"labels": torch.tensor([1.0])}, "Expected 'labels' of target 0 to be a (K,) integer tensor or a list of "
         "ints, "
         "but got a torch.float32 tensor of shape (1,)."),
        ({"labels": [-1]}, "Expected the labels of target 0 to be class indices >= 0, but got [-1]."),
        ({"labels": [1, 2], "boxes": torch.zeros(1, 4)}, "Expected 'boxes' of target 0 to be a (2, 4) tensor (one box "
         "per label), but got a torch.float32 tensor of shape (1, 4)."),
        ({"labels": [1], "boxes": [[0.0, 0, 7, 2]]}, "Expected 'boxes' of target 0 to be (x1, y1, x2, y2) with "
         "0 <= x1 < x2 <= W=6 and 0 <= y1 < y2 <= H=4, but got [0.0, 0.0, 7.0, 2.0]."),
        ({"labels": [1], "boxes": [[2.0, 0, 2, 2]]}, "Expected 'boxes' of target 0 to be (x1, y1, x2, y2) with "
         "0 <= x1 < x2 <= W=6 and 0 <= y1 < y2 <= H=4, but got [2.0, 0.0, 2.0, 2.0]."),
        ({"labels": [1], "masks": torch.ones(1, 4, 6, dtype=torch.bool)},
         "Expected 'boxes' alongside 'masks' in target 0, but got keys ['labels', 'masks']."),
        ({"labels": [1], "boxes": [[0.0, 0, 1, 1]], "masks": torch.ones(1, 4, 5, dtype=torch.bool)},
         "Expected 'masks' of target 0 to be a bool or 0/1 integer tensor of shape (1, 4, 6) (one mask per label, at "
         "the image's size), but got a torch.bool tensor of shape (1, 4, 5)."),
        ({"labels": [1], "boxes": [[0.0, 0, 1, 1]], "masks": torch.full((1, 4, 6), 0.5)},
         "Expected 'masks' of target 0 to be a bool or 0/1 integer tensor of shape (1, 4, 6) (one mask per label, at "
         "the image's size), but got a torch.float32 tensor of shape (1, 4, 6)."),
        ({"labels": [1], "boxes": tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(8, 8))},
         "Expected 'boxes' of target 0 to have canvas_size equal to the image's (H, W)=(4, 6), but got (8, 8)."),
        (voc_annotation(6, 4, [("unicorn", (1, 1, 2, 2), 0)]),
         f"Expected object names in target 0 to be one of {list(VOC_CLASSES)}, but got 'unicorn'."),
        (voc_annotation(6, 4, []), NO_OBJECT),
        ({"annotation": {"size": {"width": "6", "height": "4"}}}, NO_OBJECT),
        (voc_annotation(6, 4, [("cat", (1, 1, 7, 2), 0)]),
         "Expected the annotation of target 0['object'][0]['bndbox'] to satisfy 1 <= xmin <= xmax <= width=6 and "
         "1 <= ymin <= ymax <= height=4, but got {'xmin': '1', 'ymin': '1', 'xmax': '7', 'ymax': '2'}."),
        ({"annotation": {"object": []}},
         "Expected the annotation of target 0 to be a dict with key 'size', but got keys ['object']."),
        ({"annotation": {"size": {"width": "six", "height": "4"}}},
         "Expected the annotation of target 0['size']['width'] to be a number, but got 'six'."),
        ({"annotation": {"size": {"width": "6", "height": "4"}, "object": [{"name": "cat"}]}},
         "Expected the annotation of target 0['object'][0] to be a dict with key 'bndbox', but got keys ['name']."),
    ],
    ids=lambda v: "" if not isinstance(v, str) else v[:40],
)
def test_rejected_targets(target: dict, message: str) -> None:
    with raises(ValueError, message):
        parse_batch((images(1), [target]))


def test_rejected_class_names() -> None:
    with raises(ValueError, "Expected class indices < len(class_names)=2, but got class 2."):
        parse_batch((images(2), [0, 2]), class_names=["a", "b"])
    expected = "Expected `class_names` to be a non-empty sequence of distinct strings, but got"
    with raises(ValueError, f"{expected} ['a', 'a']."):
        parse_batch((images(1), [0]), class_names=["a", "a"])
    with raises(ValueError, f"{expected} 'ab'."):
        parse_batch((images(1), [0]), class_names="ab")


# --------------------------------------------------------------------------- ProbeBatch


def probe_with_boxes() -> ProbeBatch:
    return ProbeBatch(
        images(2, h=3, w=4),
        ((0, 2), (1,)),
        "multilabel",
        boxes=(torch.tensor([[1.0, 1, 2, 2], [3, 2, 4, 3]]), torch.tensor([[2.0, 3, 2, 3]])),
        box_classes=(torch.tensor([2, 2]), torch.tensor([1])),
    )


def test_label_matrix_and_class_masks_by_hand() -> None:
    probe = probe_with_boxes()
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    assert torch.equal(probe.label_matrix(4), expected) and probe.label_matrix(4).dtype == torch.float32
    masks = probe.class_masks(4)
    expected_masks = torch.zeros(2, 4, 3, 4, dtype=torch.bool)
    expected_masks[0, 2, 0:2, 0:2] = True  # box (1, 1, 2, 2)
    expected_masks[0, 2, 1:3, 2:4] = True  # box (3, 2, 4, 3)
    expected_masks[1, 1, 2, 1] = True  # box (2, 3, 2, 3): one pixel
    assert torch.equal(masks, expected_masks)  # class 0 of image 0 has no box: empty region
    assert ProbeBatch(images(1), ((3,),), "multiclass").class_masks(4) is None
    with raises(ValueError, "Expected every probe class to be < `num_classes`=2, but got class 2."):
        probe.label_matrix(2)
    with raises(ValueError, "Expected every probe class to be < `num_classes`=2, but got class 2."):
        probe.class_masks(2)
    with raises(ValueError, "Expected `num_classes` to be a positive int, but got 0."):
        probe.label_matrix(0)


def test_select_and_cat() -> None:
    probe = probe_with_boxes()
    picked = probe.select([1, 1, 0])
    assert picked.classes == ((1,), (1,), (0, 2)) and torch.equal(picked.images, probe.images[[1, 1, 0]])
    assert torch.equal(picked.boxes[2], probe.boxes[0]) and len(probe.select([])) == 0
    plain = ProbeBatch(images(1, h=3, w=4, seed=5), ((3,),), "multilabel")
    joined = ProbeBatch.cat([probe, plain])
    assert joined.classes == ((0, 2), (1,), (3,)) and joined.boxes[2].shape == (0, 4) and joined.masks is None
    assert torch.equal(joined.images, torch.cat([probe.images, plain.images]))
    assert ProbeBatch.cat([plain, plain]).boxes is None
    # one batch with instance masks: the others' boxes become instance masks, same regions
    masked = ProbeBatch(images(1, h=3, w=4), ((1,),), "multilabel", (torch.tensor([[1.0, 1, 1, 1]]),),
                        (torch.tensor([1]),), (torch.ones(1, 3, 4, dtype=torch.bool),))
    mixed = ProbeBatch.cat([probe, masked, plain])
    assert [m.shape for m in mixed.masks] == [(2, 3, 4), (1, 3, 4), (1, 3, 4), (0, 3, 4)]
    assert torch.equal(mixed.class_masks(4)[:2], probe.class_masks(4)) and mixed.class_masks(4)[2, 1].all()
    with raises(ValueError, "Expected `indices` to be a sequence of ints in [0, 2), but got [2]."):
        probe.select([2])
    with raises(ValueError, "Expected all probe images to have one shape (C, H, W) and dtype, but got (3, 3, 4) "
                "torch.float32 and (3, 4, 6) torch.float32. Give every image one number of channels and one dtype in "
                "the dataset's transform (sizes are evened out when probes are read), or pass `batch_to_probe=` to "
                "SaliencyMonitor."):
        ProbeBatch.cat([probe, ProbeBatch(images(1), ((0,),), "multilabel")])
    with raises(ValueError, "Expected all batches to have one task, but got 'multilabel' and 'multiclass'."):
        ProbeBatch.cat([probe, ProbeBatch(images(1, h=3, w=4), ((0,),), "multiclass")])
    with raises(TypeError, "Expected `batches` to be a non-empty sequence of ProbeBatch, but got a list of 0 items."):
        ProbeBatch.cat([])


def test_probe_batch_validation() -> None:
    with raises(ValueError, "Expected `task` to be one of ['multiclass', 'multilabel'], but got 'binary'."):
        ProbeBatch(images(1), ((0,),), "binary")
    with raises(ValueError, "Expected each entry of `classes` to hold exactly one class index >= 0 (multiclass), "
                "but got (0, 1)."):
        ProbeBatch(images(1), ((0, 1),), "multiclass")
    with raises(ValueError, "Expected each entry of `classes` to hold class indices >= 0, at least one (multilabel), "
                "but got ()."):
        ProbeBatch(images(1), ((),), "multilabel")
    with raises(ValueError, "Expected `box_classes[0]` to be among the image's classes [0], but got [3]."):
        ProbeBatch(images(1), ((0,),), "multilabel", (torch.ones(1, 4),), (torch.tensor([3]),))
    with raises(TypeError, "Expected `images` to be a floating-point or integer tensor of shape (N, C, H, W), but "
                "got a torch.bool tensor of shape (1, 3, 2, 2)."):
        ProbeBatch(torch.zeros(1, 3, 2, 2, dtype=torch.bool), ((0,),), "multiclass")
    with raises(ValueError, "Expected `boxes` and `box_classes` to be both None or both set (and `masks` only with "
                "them), but got boxes=a NoneType, box_classes=a tuple of 1 items (torch.int64 tensor of shape (1,)), "
                "masks=a NoneType."):
        ProbeBatch(images(1), ((0,),), "multilabel", box_classes=(torch.tensor([0]),))
    with raises(ValueError, "Expected `boxes` to be a sequence of 1 tensors (one per image), but got a tuple of 0 "
                "items."):
        ProbeBatch(images(1), ((0,),), "multilabel", (), ())
    # classes are normalised to sorted distinct tuples
    assert ProbeBatch(images(1), ([2, 0, 2],), "multilabel").classes == ((0, 2),)


# --------------------------------------------------------------------------- draw_probes / load_probes


def test_draw_spreads_across_classes_deterministically() -> None:
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    loader = DataLoader(TensorDataset(images(100), labels), batch_size=16, shuffle=True)
    probes, identities = draw_probes(loader, 6, seed=3, max_candidates=100)
    assert probes.classes == ((0,), (1,), (2,), (0,), (1,), (2,)) and probes.task == "multiclass"
    order = torch.randperm(100, generator=gen(3)).tolist()
    expected = [order[k] for k in reference_spread([(int(labels[i]),) for i in order], 6)]
    assert identities == expected
    assert torch.equal(probes.images, images(100)[expected])
    again, again_ids = draw_probes(loader, 6, seed=3, max_candidates=100)
    assert again_ids == identities and torch.equal(again.images, probes.images)
    assert draw_probes(loader, 6, seed=4, max_candidates=100)[1] != identities


def test_draw_multilabel_voc_round_robin_and_reload() -> None:
    loader = DataLoader(FakeVOC(24), batch_size=4, collate_fn=zip_collate)
    probes, identities = draw_probes(loader, 7, seed=1)
    order = torch.randperm(24, generator=gen(1)).tolist()
    classes = [tuple(sorted({i % 4} | ({14} if i % 3 == 0 else set()))) for i in order]
    assert identities == [order[k] for k in reference_spread(classes, 7)]
    assert [probes.images[n, 0, 0, 0].item() for n in range(7)] == [float(i) for i in identities]
    reloaded = load_probes(loader, identities, seed=1)
    assert reloaded.classes == probes.classes and torch.equal(reloaded.images, probes.images)
    for a, b in zip(reloaded.boxes, probes.boxes):
        assert torch.equal(a, b)
    assert torch.equal(reloaded.class_masks(20), probes.class_masks(20))


def test_draw_leaves_rng_and_sampler_untouched() -> None:
    dataset = Augmented([i % 3 for i in range(40)])
    sampler_gen = gen(11)
    loader = DataLoader(dataset, batch_size=4, sampler=RandomSampler(dataset, generator=sampler_gen))
    next(iter(loader))  # training has started: states are not the initial ones
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    before = rng_states(sampler_gen)
    probes, identities = draw_probes(loader, 5, seed=0, max_candidates=20)
    load_probes(loader, identities)
    assert_same_states(before, rng_states(sampler_gen))
    # a sampler that fails when iterated: draw_probes never uses it
    trap = DataLoader(dataset, batch_size=4, sampler=NoIterSampler(len(dataset)))
    trap_probes, trap_ids = draw_probes(trap, 5, seed=0, max_candidates=20)
    assert trap_ids == identities and torch.equal(trap_probes.images, probes.images)


def test_random_transforms_give_identical_probes_and_reloads() -> None:
    dataset = Augmented([i % 4 for i in range(30)])
    loader = DataLoader(dataset, batch_size=8, shuffle=True)
    probes, identities = draw_probes(loader, 6, seed=2, max_candidates=30)
    torch.manual_seed(99)  # whatever the global states, probes come out the same
    random.seed(99)
    np.random.seed(99)
    again, again_ids = draw_probes(loader, 6, seed=2, max_candidates=30)
    assert again_ids == identities and torch.equal(again.images, probes.images)
    assert torch.equal(load_probes(loader, identities, seed=2).images, probes.images)
    assert torch.equal(load_probes(loader, identities[::-1], seed=2).images, probes.images.flip(0))
    # the transform is random: another seed, other images for the same items
    other = load_probes(loader, identities, seed=3)
    assert not torch.equal(other.images, probes.images)
    # and the same seed without isolation gives other images too (the seeding is what fixes them)
    assert not torch.equal(torch.stack([dataset[i][0] for i in identities]), probes.images)


def test_never_reads_more_than_max_candidates() -> None:
    dataset = Augmented([i % 5 for i in range(100)])
    loader = DataLoader(dataset, batch_size=8)
    draw_probes(loader, 3, max_candidates=10)
    assert dataset.reads == 10
    dataset.reads = 0
    probes, identities = draw_probes(loader, 2)  # default max(8 * count, 64)
    assert dataset.reads == 64 and len(probes) == 2
    dataset.reads = 0
    load_probes(loader, identities)
    assert dataset.reads == 2


def test_fewer_images_than_count_returns_all() -> None:
    dataset = DictDataset(4)
    loader = DataLoader(dataset, batch_size=2)
    probes, identities = draw_probes(loader, 10)
    assert sorted(identities) == [0, 1, 2, 3] and len(probes) == 4
    assert probes.classes == tuple((i % 3,) for i in identities)
    assert torch.equal(probes.images, dataset.images[identities])


def test_iterable_dataset_stream() -> None:
    loader = DataLoader(Stream(50), batch_size=4)
    before = rng_states()
    probes, identities = draw_probes(loader, 4, max_candidates=9)
    assert_same_states(before, rng_states())
    assert identities == reference_spread([(i % 3,) for i in range(9)], 4) == [0, 1, 2, 3]
    assert probes.classes == ((0,), (1,), (2,), (0,))
    assert torch.equal(probes.images.floor()[:, 0, 0, 0], torch.tensor(identities, dtype=torch.float32))
    again, _ = draw_probes(loader, 4, max_candidates=9)
    assert torch.equal(again.images, probes.images)
    reloaded = load_probes(loader, [3, 1])
    assert torch.equal(reloaded.images, probes.images[[3, 1]])
    short = DataLoader(Stream(2), batch_size=4)
    assert draw_probes(short, 5)[1] == [0, 1]
    with raises(ValueError, "Expected the dataset to yield at least 4 images, as when the probes were drawn, but it "
                "yielded 2."):
        load_probes(short, [3])


def test_batch_to_probe() -> None:
    x = images(6)
    soft = torch.rand(6, 3, generator=gen(0))
    loader = DataLoader(TensorDataset(x, soft, torch.arange(6) % 3), batch_size=3)
    probes, identities = draw_probes(loader, 3, batch_to_probe=lambda b: (b[0], b[2]))
    assert probes.classes == tuple((i % 3,) for i in identities) and len(set(probes.classes)) == 3

    def to_probe(batch: list[torch.Tensor]) -> ProbeBatch:
        return ProbeBatch(batch[0], tuple((int(c), 3) for c in batch[2]), "multilabel")

    probes, identities = draw_probes(loader, 2, batch_to_probe=to_probe)
    assert probes.classes == tuple((i % 3, 3) for i in identities)
    assert load_probes(loader, identities, batch_to_probe=to_probe).classes == probes.classes
    first = int(torch.randperm(6, generator=gen(0))[0])
    with raises(ValueError, "Expected `labels` of shape (B, C) to be multi-hot (every value 0 or 1), but got a "
                f"torch.float32 tensor of shape (1, 3) holding {soft[first, 0].item()!r}. "
                "Soft labels (mixup, cutmix, label smoothing) do not say which classes are present: pass "
                "`batch_to_probe=` to SaliencyMonitor, returning the hard labels."):
        draw_probes(loader, 2, batch_to_probe=lambda b: (b[0], b[1]))


def test_draw_argument_errors() -> None:
    loader = DataLoader(TensorDataset(images(4), torch.arange(4)), batch_size=2)
    with raises(ValueError, "Expected `count` to be a positive int, but got 0."):
        draw_probes(loader, 0)
    with raises(ValueError, "Expected `max_candidates` to be >= `count`=5, but got 3."):
        draw_probes(loader, 5, max_candidates=3)
    with raises(ValueError, "Expected `seed` to be an int in [0, 2**63), but got -1."):
        draw_probes(loader, 2, seed=-1)
    with raises(TypeError, "Expected `dataloader` to be a torch DataLoader, but got a "
                "torch.utils.data.dataset.TensorDataset."):
        draw_probes(loader.dataset, 2)
    with raises(ValueError, "Expected `identities` to be a non-empty sequence of ints in [0, 4), but got [4]."):
        load_probes(loader, [4])
    with raises(ValueError, "Expected `dataloader.dataset` to hold at least one item, but it is empty."):
        draw_probes(DataLoader(TensorDataset(images(0), torch.arange(0))), 2)
    with raises(ValueError, "Expected `dataloader` to batch samples (batch_size or batch_sampler set), but got a "
                "DataLoader with batch_size=None. Probes are drawn one dataset item at a time: give the monitor a "
                "loader whose dataset yields single images, or an IterableDataset."):
        draw_probes(DataLoader(loader.dataset, batch_size=None), 2)
    pairs = DataLoader(loader.dataset, batch_size=2, collate_fn=lambda items: (images(2), torch.arange(2)))
    first = torch.randperm(4, generator=gen(0))[0].item()
    with raises(ValueError, f"Expected dataset item {first}, collated alone, to give one image, but got 2."):
        draw_probes(pairs, 2)
