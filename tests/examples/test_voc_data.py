"""examples/voc_data.py: the synthetic VOC set in the real layout, the dataset, the data module."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

import saliency_monitor.monitor.probes
from examples.voc_data import (
    CLASS_STYLES,
    COLOURS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MARKER,
    VOC_CLASSES,
    VOCClassification,
    VOCDataModule,
    collate,
    generate_synthetic_voc,
    multi_hot,
)
from saliency_monitor.monitor.probes import parse_batch

SIZES = {"num_train": 12, "num_val": 8, "num_test": 10}
SIZE = 64
SPLITS = ("train", "val", "trainval", "test")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("voc"), **SIZES, image_size=SIZE, seed=0)


def _voc(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2007"


def _split(root: Path, split: str) -> list[str]:
    return (_voc(root) / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(root: Path, image_id: str) -> list[tuple[str, tuple[int, ...], int]]:
    tree = ET.parse(_voc(root) / "Annotations" / f"{image_id}.xml")
    return [
        (
            obj.findtext("name"),
            tuple(int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")),
            int(obj.findtext("difficult")),
        )
        for obj in tree.findall("object")
    ]


def _pixels(image: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (H, W, 3) float in [0, 255]."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _colour_fraction(pixels: np.ndarray, name: str, box: tuple[int, int, int, int] | None = None) -> float:
    """Fraction of pixels (inside ``box``: x1, y1, x2, y2 continuous) near the class's two colours."""
    main = np.asarray(COLOURS[CLASS_STYLES[name][1]], dtype=np.float64)
    other = main + (255 - main) * 0.55 if main.mean() < 100 else main * 0.3
    if box is not None:
        x1, y1, x2, y2 = (round(v) for v in box)
        pixels = pixels[y1:y2, x1:x2]
    near = np.minimum(np.linalg.norm(pixels - main, axis=-1), np.linalg.norm(pixels - other, axis=-1)) < 60
    return float(near.mean())


# --------------------------------------------------------------------------- layout and XML


def test_layout_and_split_files(voc_root: Path) -> None:
    voc = _voc(voc_root)
    total = sum(SIZES.values())
    ids = [f"{i:06d}" for i in range(1, total + 1)]
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == ids
    assert sorted(p.stem for p in (voc / "Annotations").glob("*.xml")) == ids
    splits = {split: _split(voc_root, split) for split in SPLITS}
    for split in SPLITS:
        assert splits[split] == sorted(splits[split])
    assert [len(splits[s]) for s in ("train", "val", "test")] == list(SIZES.values())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ids
    assert splits["trainval"] == sorted(splits["train"] + splits["val"])
    assert splits["test"] != ids[-len(splits["test"]) :]  # interleaved, as in VOC
    with Image.open(voc / "JPEGImages" / "000001.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SIZE, SIZE))


def test_voc_detection_reads_every_split(voc_root: Path) -> None:
    for split in SPLITS:
        dataset = torchvision.datasets.VOCDetection(str(voc_root), year="2007", image_set=split)
        assert len(dataset) == len(_split(voc_root, split))
        image, target = dataset[0]
        annotation = target["annotation"]
        assert image.size == (SIZE, SIZE)
        assert annotation["filename"] == f"{_split(voc_root, split)[0]}.jpg"
        assert annotation["size"] == {"width": str(SIZE), "height": str(SIZE), "depth": "3"}
        for obj in annotation["object"]:
            assert set(obj) == {"name", "pose", "truncated", "difficult", "bndbox"}
            assert obj["name"] in VOC_CLASSES and obj["pose"] == "Unspecified" and obj["truncated"] == "0"


def test_xml_objects(voc_root: Path) -> None:
    counts = []
    for image_id in _split(voc_root, "trainval") + _split(voc_root, "test"):
        objects = _objects(voc_root, image_id)
        counts.append(len(objects))
        boxes = []
        for name, (xmin, ymin, xmax, ymax), difficult in objects:
            assert name in VOC_CLASSES
            assert 1 <= xmin <= xmax <= SIZE and 1 <= ymin <= ymax <= SIZE
            assert difficult == int(max(xmax - xmin + 1, ymax - ymin + 1) < 0.12 * SIZE)
            boxes.append((xmin, ymin, xmax, ymax))
        for a, b in itertools.combinations(boxes, 2):  # objects never overlap
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
    assert min(counts) >= 1 and max(counts) <= 3


def test_box_holds_the_object(voc_root: Path) -> None:
    """The mean colour in a box differs from the ring around it, and the class's colours fill
    much more of the box than of the same box in the other images."""
    dataset = VOCClassification(voc_root, "trainval", SIZE, train=False)
    items = [dataset[index] for index in range(len(dataset))]
    pixels = [_pixels(image) for image, _ in items]
    checked = 0
    for index, (_, target) in enumerate(items):
        for label, box, difficult in zip(target["labels"], target["boxes"].tolist(), target["difficult"]):
            if difficult:
                continue
            x1, y1, x2, y2 = (round(v) for v in box)
            ring = np.zeros((SIZE, SIZE), dtype=bool)
            ring[max(y1 - 4, 0) : y2 + 4, max(x1 - 4, 0) : x2 + 4] = True
            ring[y1:y2, x1:x2] = False
            inside = pixels[index][y1:y2, x1:x2].reshape(-1, 3).mean(0)
            assert np.linalg.norm(inside - pixels[index][ring].mean(0)) > 25
            name = VOC_CLASSES[label]
            elsewhere = np.mean([_colour_fraction(p, name, box) for j, p in enumerate(pixels) if j != index])
            assert _colour_fraction(pixels[index], name, box) > elsewhere + 0.15
            checked += 1
    assert checked >= len(items)


def test_class_styles_are_distinct() -> None:
    assert list(CLASS_STYLES) == list(VOC_CLASSES)
    for a, b in itertools.combinations(CLASS_STYLES.values(), 2):
        assert sum(x != y for x, y in zip(a, b)) >= 2


# --------------------------------------------------------------------------- determinism and cache


def test_deterministic(tmp_path: Path, voc_root: Path) -> None:
    again = generate_synthetic_voc(tmp_path / "a", **SIZES, image_size=SIZE, seed=0)
    first, second = _files(voc_root), _files(again)
    assert list(first) == list(second)
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    other = generate_synthetic_voc(tmp_path / "b", **SIZES, image_size=SIZE, seed=1)
    jpeg = "VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    assert _files(other)[jpeg].read_bytes() != first[jpeg].read_bytes()


def test_cached(voc_root: Path) -> None:
    before = {name: path.stat().st_mtime_ns for name, path in _files(voc_root).items()}
    assert generate_synthetic_voc(str(voc_root), **SIZES, image_size=SIZE, seed=0) == voc_root
    assert {name: path.stat().st_mtime_ns for name, path in _files(voc_root).items()} == before
    marker = json.loads((_voc(voc_root) / MARKER).read_text())
    assert marker == {
        "generator": "examples.voc_data.generate_synthetic_voc", "version": 1, **SIZES, "image_size": SIZE, "seed": 0
    }


def test_changed_parameter_regenerates(tmp_path: Path) -> None:
    generate_synthetic_voc(tmp_path, num_train=3, num_val=2, num_test=4, image_size=32, seed=0)
    generate_synthetic_voc(tmp_path, num_train=3, num_val=2, num_test=2, image_size=32, seed=0)
    assert len(_files(tmp_path)) == 2 * 7 + 4 + 1  # no stale images, annotations or partial folders
    assert json.loads((_voc(tmp_path) / MARKER).read_text())["num_test"] == 2
    assert [p.name for p in (tmp_path / "VOCdevkit").iterdir()] == ["VOC2007"]
    sibling = tmp_path.with_name(tmp_path.name + "-fresh")
    fresh = generate_synthetic_voc(sibling, num_train=3, num_val=2, num_test=2, image_size=32, seed=0)
    assert [p.read_bytes() for p in _files(tmp_path).values()] == [p.read_bytes() for p in _files(fresh).values()]


def test_leaves_a_foreign_voc_alone(tmp_path: Path) -> None:
    real = tmp_path / "VOCdevkit" / "VOC2007"
    real.mkdir(parents=True)
    (real / "keep.txt").write_text("real data")
    with pytest.raises(ValueError) as error:
        generate_synthetic_voc(tmp_path, num_train=1, num_val=1, num_test=1, image_size=32)
    assert str(error.value) == (
        "Expected `root` to hold no VOCdevkit/VOC2007 or a synthetic one written by generate_synthetic_voc "
        f"(with its synthetic_voc.json), but got {str(tmp_path)!r} whose VOC2007 has no marker: it may be the "
        "real data set, so it is left alone. Pass another `root`."
    )
    assert [p.name for p in real.iterdir()] == ["keep.txt"]
    assert [p.name for p in real.parent.iterdir()] == ["VOC2007"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": 0}, "Expected `num_train` to be a positive int, but got 0."),
        ({"num_test": True}, "Expected `num_test` to be a positive int, but got True."),
        ({"image_size": 16}, "Expected `image_size` to be an int >= 32, but got 16."),
        ({"seed": -1}, "Expected `seed` to be an int >= 0, but got -1."),
    ],
)
def test_generate_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        generate_synthetic_voc(tmp_path, **kwargs)
    assert str(error.value) == message
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- VOCClassification


def test_item_image_and_target(voc_root: Path) -> None:
    dataset = VOCClassification(voc_root, "test", SIZE, train=False)
    assert len(dataset) == SIZES["num_test"]
    assert dataset.classes == list(VOC_CLASSES) and VOC_CLASSES is saliency_monitor.monitor.probes.VOC_CLASSES
    image, target = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    raw = np.asarray(Image.open(_voc(voc_root) / "JPEGImages" / f"{_split(voc_root, 'test')[0]}.jpg"))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(raw.astype(np.float32)).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(image, expected)
    objects = _objects(voc_root, _split(voc_root, "test")[0])
    assert set(target) == {"labels", "boxes", "difficult"}
    assert (target["labels"].dtype, target["boxes"].dtype, target["difficult"].dtype) == (
        torch.int64, torch.float32, torch.bool
    )  # fmt: skip
    assert target["labels"].tolist() == [VOC_CLASSES.index(name) for name, _, _ in objects]
    assert target["boxes"].tolist() == [[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2), _ in objects]
    assert target["difficult"].tolist() == [bool(d) for _, _, d in objects]
    small = VOCClassification(voc_root, "test", 40, train=False)[0][0]
    assert small.shape == (3, 40, 40)


def test_boxes_rescaled_exactly(tmp_path: Path) -> None:
    """A hand-written annotation: 64x64 image, read at 48x48 (scale 3/4)."""
    root = generate_synthetic_voc(tmp_path, num_train=1, num_val=1, num_test=1, image_size=64)
    image_id = _split(root, "test")[0]
    (_voc(root) / "Annotations" / f"{image_id}.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>64</width><height>64</height><depth>3</depth></size>"
        "<object><name>dog</name><pose>Left</pose><truncated>0</truncated><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>64</xmax><ymax>64</ymax></bndbox></object>"
        "<object><name>cat</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>"
        "<bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    _, target = VOCClassification(root, "test", 48, train=False)[0]
    # x1 = (xmin - 1) * 48 / 64, x2 = xmax * 48 / 64 (likewise y)
    assert target["boxes"].tolist() == [[0.0, 0.0, 48.0, 48.0], [6.75, 14.25, 22.5, 30.0]]
    assert target["labels"].tolist() == [11, 7] and target["difficult"].tolist() == [True, False]
    assert multi_hot([target]).nonzero().tolist() == [[0, 7], [0, 11]]  # difficult-only "dog" is positive


def test_flip_moves_boxes_with_pixels(voc_root: Path) -> None:
    plain = VOCClassification(voc_root, "trainval", SIZE, train=False)
    augmented = VOCClassification(voc_root, "trainval", SIZE, train=True)
    flips = 0
    torch.manual_seed(0)
    for index in range(len(plain)):
        image, target = plain[index]
        flipped, moved = augmented[index]
        torch.testing.assert_close(moved["labels"], target["labels"])
        if torch.equal(flipped, image):
            assert torch.equal(moved["boxes"], target["boxes"])
            continue
        flips += 1
        torch.testing.assert_close(flipped, image.flip(-1))
        x1, y1, x2, y2 = target["boxes"].unbind(1)
        torch.testing.assert_close(moved["boxes"], torch.stack([SIZE - x2, y1, SIZE - x1, y2], 1))
        for label, box, old, difficult in zip(moved["labels"], moved["boxes"], target["boxes"], moved["difficult"]):
            if difficult:
                continue
            pixels, name = _pixels(flipped), VOC_CLASSES[label]
            there = _colour_fraction(pixels, name, box.tolist())
            assert there > 0.2
            if old[0] >= box[2] or old[2] <= box[0]:  # the unflipped place, when apart, lacks the object
                assert there > _colour_fraction(pixels, name, old.tolist()) + 0.15
    assert 0 < flips < len(plain)


def test_item_is_reproducible_under_a_seed(voc_root: Path) -> None:
    dataset = VOCClassification(voc_root, "train", SIZE, train=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([dataset[i][0] for i in range(6)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_set": "trainval2"}, ValueError,
         "Expected `image_set` to be one of ['train', 'val', 'trainval', 'test'], but got 'trainval2'."),
        ({"image_size": 0}, ValueError, "Expected `image_size` to be a positive int, but got 0."),
        ({"train": 1}, TypeError, "Expected `train` to be a bool, but got 1."),
    ],
)  # fmt: skip
def test_dataset_bad_arguments(voc_root: Path, kwargs: dict, error: type, message: str) -> None:
    arguments = {"image_set": "train", "image_size": 32, "train": False, **kwargs}
    with pytest.raises(error) as raised:
        VOCClassification(voc_root, **arguments)
    assert str(raised.value) == message


# --------------------------------------------------------------------------- multi_hot, collate, data module


def test_multi_hot() -> None:
    targets = [
        {"labels": torch.tensor([3, 3, 19]), "difficult": torch.tensor([False, True, True])},
        {"labels": torch.tensor([0]), "difficult": torch.tensor([False])},
    ]
    expected = torch.zeros(2, 20)
    expected[0, [3, 19]] = 1
    expected[1, 0] = 1
    assert torch.equal(multi_hot(targets), expected)
    assert multi_hot(targets, num_classes=21).shape == (2, 21)
    with pytest.raises(ValueError) as error:
        multi_hot([{"labels": torch.tensor([20])}])
    assert str(error.value) == "Expected labels in [0, 20), but got [20] in target 0."
    with pytest.raises(ValueError) as error:
        multi_hot(targets, num_classes=0)
    assert str(error.value) == "Expected `num_classes` to be a positive int, but got 0."


def test_collate(voc_root: Path) -> None:
    dataset = VOCClassification(voc_root, "val", 32, train=False)
    images, targets = collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 32, 32)
    assert torch.equal(images[1], dataset[1][0]) and torch.equal(targets[1]["boxes"], dataset[1][1]["boxes"])


def test_data_module_batches_parse(voc_root: Path) -> None:
    module = VOCDataModule(voc_root, image_size=32, batch_size=4)
    module.setup("fit")
    train, val = module.train_dataloader(), module.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert len(train.dataset) == SIZES["num_train"] + SIZES["num_val"] and len(val.dataset) == SIZES["num_test"]
    assert train.dataset.train and not val.dataset.train
    for loader in (train, val):
        images, targets = batch = next(iter(loader))
        assert images.shape == (4, 3, 32, 32) and len(targets) == 4
        probe = parse_batch(batch, module.classes)
        assert probe.task == "multilabel" and probe.boxes is not None and len(probe) == 4
        for n, target in enumerate(targets):
            voc = target["boxes"].double() + torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
            torch.testing.assert_close(probe.boxes[n], voc)
            assert probe.classes[n] == tuple(multi_hot([target])[0].nonzero().flatten().tolist())


def test_data_module_bad_arguments(voc_root: Path) -> None:
    with pytest.raises(ValueError) as error:
        VOCDataModule(voc_root, val_split="validation")
    assert str(error.value) == (
        "Expected `val_split` to be one of ['train', 'val', 'trainval', 'test'], but got 'validation'."
    )
    with pytest.raises(ValueError) as error:
        VOCDataModule(voc_root, batch_size=0)
    assert str(error.value) == "Expected `batch_size` to be an int >= 1, but got 0."


def test_multi_hot_bad_targets() -> None:
    with pytest.raises(TypeError) as error:
        multi_hot([{"labels": torch.tensor([1])}, {"boxes": torch.zeros(1, 4)}])
    assert str(error.value) == "Expected `targets` to be dicts with 'labels', but got keys ['boxes'] in target 1."
    with pytest.raises(TypeError) as error:
        multi_hot(torch.zeros(2, 20))
    assert str(error.value) == "Expected `targets` to be a sequence of dicts with 'labels', but got Tensor."
