"""Inputs that used to stop a fit at step 0: uint8 image batches, single-logit
binary classifiers and probes of different sizes; unit tests, then one real fit per case."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine.compute import saliency_options
from saliency_monitor.monitor import SaliencyMonitorWarning
from saliency_monitor.monitor.evaluation import EvaluationPlan, evaluate_probes
from saliency_monitor.monitor.inputs import fit_options
from saliency_monitor.monitor.probes import (
    ProbeBatch,
    Resizing,
    draw_probes,
    load_probes,
    one_size,
    parse_batch,
    probe_chunks,
)
from saliency_monitor.monitor.render import GridRow, saliency_grid, to_uint8_images
from tests._fits import Classifier, SpyLogger, TinyNet, class_images, is_saliency_key, trainer

LAYERS = ("net.stem", "net.stage2")
pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")


def is_meta_correlation(key: str) -> bool:
    """Whether ``key`` holds a mean meta correlation (headline or breakdown) or a gap of them."""
    section, name = key.split("/")
    return (section == "Saliency" and name.startswith(("meta_train_", "meta_val_", "gap_"))) or (
        section in ("layer_train", "layer_val", "layer_gap") and name.startswith(("mc_", "gap_")))


def raises(error: type[Exception], message: str) -> Any:
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def to_pixels(images: Tensor) -> Tensor:
    return (images * 40 + 128).round().clamp(0, 255).to(torch.uint8)


class Uint8Classifier(Classifier):
    """Takes raw uint8 pixels and converts them in ``forward`` (as GPU-side transforms do)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.float() / 255 - 0.5) / 0.25)


# --------------------------------------------------------------------------- uint8 images


def test_uint8_images_are_parsed_and_chunked_as_they_are() -> None:
    pixels = to_pixels(class_images(torch.tensor([0, 1]), 0))
    probe = parse_batch((pixels, torch.tensor([0, 1])))
    assert probe.images.dtype == torch.uint8 and torch.equal(probe.images, pixels)
    _, chunk = next(probe_chunks(TinyNet().double(), probe, 2))
    assert chunk.dtype == torch.uint8  # the model converts them itself
    assert next(probe_chunks(TinyNet().double(), parse_batch((pixels.float(), [0, 1])), 2))[1].dtype == torch.float64


def test_uint8_probes_are_evaluated_with_their_regions() -> None:
    model = Uint8Classifier()
    boxes = (torch.tensor([[3.0, 3, 6, 6]]), torch.tensor([[11.0, 3, 14, 6]]))
    probes = ProbeBatch(to_pixels(class_images(torch.tensor([0, 1]), 0)), ((0,), (1,)), "multilabel", boxes,
                        (torch.tensor([0]), torch.tensor([1])))
    plan = EvaluationPlan.of(saliency_options(LAYERS, ("norm_grad",), task="multilabel"), meta_lr=0.05)
    result = evaluate_probes(model, probes, plan)
    assert result.maps["norm_grad"]["combined"].shape == (2, 16, 16)
    for key, value in result.values.items():
        assert value.shape == (2,) and (value.isfinite().all() or key.metric == "class_sensitivity"), key


def test_uint8_pictures_show_the_pixels_unstretched() -> None:
    pixels = torch.randint(100, 151, (1, 3, 5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    np.testing.assert_array_equal(to_uint8_images(pixels), pixels.permute(0, 2, 3, 1).numpy())
    assert to_uint8_images(pixels.float()).max() == 255  # float images are stretched
    grid = saliency_grid([GridRow(pixels[0], [torch.rand(3, 3)], "a")], ["m"], tile=5)
    tile = grid[grid.shape[0] - 2 - 5: grid.shape[0] - 2, 2:9]  # the image tile: last row, first column
    np.testing.assert_array_equal(tile, pixels[0].permute(1, 2, 0).numpy())


def test_fit_options_refuse_the_input_layer_for_uint8_images() -> None:
    sample = to_pixels(class_images(torch.tensor([0]), 0))
    with raises(TypeError, "Expected floating-point images for layer 'input' (its maps differentiate the images), "
                "but got torch.uint8 images. Choose hidden layers only, or convert the images to float before the "
                "model."):
        fit_options(Uint8Classifier(), sample, saliency_options(("input", "net.stem")))


def test_uint8_fit(tmp_path) -> None:
    labels = torch.arange(24) % 3
    train = TensorDataset(to_pixels(class_images(labels, 0)), labels)
    val = TensorDataset(to_pixels(class_images(labels[:12], 1)), labels[:12])
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr=0.05)
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(
        Uint8Classifier(), DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
    assert monitor.state.probes["train"].images.dtype == torch.uint8
    records = spy.saliency()
    assert [step for step, _ in records] == [0, 3]
    for _, metrics in records:
        assert metrics["saliency_run/errors"] == 0
        assert "Saliency/meta_train_NGsel" in metrics and any(key.startswith("layer_train/mc_") for key in metrics)
        assert all(math.isfinite(v) for k, v in metrics.items() if is_meta_correlation(k))
    assert monitor.last_pictures["train"]


def test_uint8_fit_with_the_input_layer_stops_at_fit_start(tmp_path) -> None:
    labels = torch.arange(8) % 3
    loader = DataLoader(TensorDataset(to_pixels(class_images(labels, 0)), labels), batch_size=8)
    with pytest.raises(TypeError, match="Expected floating-point images for layer 'input'"):
        monitor = SaliencyMonitor(layers=["input", "net.stem"], num_train_probes=4, num_val_probes=0)
        trainer(tmp_path, [monitor]).fit(Uint8Classifier(), loader)


# --------------------------------------------------------------------------- single-logit binary classifiers


@pytest.mark.parametrize("labels", [
    torch.tensor([0.0, 1.0, 1.0]), torch.tensor([[0.0], [1.0], [1.0]]), torch.tensor([[0], [1], [1]]),
    torch.tensor([False, True, True]), [0.0, 1.0, 1.0],
], ids=["float (B,)", "float (B, 1)", "int (B, 1)", "bool (B,)", "list of floats"])
def test_binary_labels_are_class_indices(labels: object) -> None:
    probe = parse_batch((class_images(torch.tensor([0, 1, 1]), 0), labels))
    assert probe.task == "multiclass" and probe.classes == ((0,), (1,), (1,))


def test_a_one_column_of_class_indices_is_class_indices() -> None:
    probe = parse_batch((class_images(torch.tensor([2, 0]), 0), torch.tensor([[2], [0]])))
    assert probe.task == "multiclass" and probe.classes == ((2,), (0,))


@pytest.mark.parametrize("squeeze", [False, True])
def test_fit_options_make_a_single_logit_model_two_classes(squeeze: bool) -> None:
    net = TinyNet(num_classes=1)
    sample = class_images(torch.tensor([0, 1]), 0)

    def model(x: Tensor) -> dict[str, Tensor]:
        logit = net(x)
        return {"logit": logit[:, 0] if squeeze else logit}

    module = torch.nn.Module()
    module.forward = model  # type: ignore[method-assign]
    options = fit_options(module, sample, saliency_options(("net.stem",), output_to_logits=lambda out: out["logit"]))
    assert options.output_to_logits is not None
    z = net(sample).detach()[:, 0]
    torch.testing.assert_close(options.output_to_logits(model(sample)), torch.stack([-z / 2, z / 2], dim=1))
    unchanged = saliency_options(("stem",))
    assert fit_options(TinyNet(), sample, unchanged) is unchanged
    with raises(ValueError, "Expected task='multiclass' or None for a single-logit binary classifier (its logit z "
                "is explained as two classes [-z/2, z/2], whose softmax cross-entropy is the binary cross-entropy), "
                f"but got task='multilabel' with logits of shape {(2,) if squeeze else (2, 1)}."):
        fit_options(module, sample, saliency_options(("net.stem",), task="multilabel",
                                                     output_to_logits=lambda out: out["logit"]))


def binary_dataset(count: int, seed: int) -> TensorDataset:
    labels = torch.arange(count) % 2
    return TensorDataset(class_images(labels, seed), labels.float()[:, None])  # (B, 1) float labels for BCE


def test_binary_fit_with_lightning_pytorch(tmp_path) -> None:
    import lightning.pytorch as L

    from saliency_monitor.lightning import SaliencyMonitor as LightningMonitor

    class Binary(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet(num_classes=1)

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            images, labels = batch
            return F.binary_cross_entropy_with_logits(self(images), labels)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    monitor = LightningMonitor(num_train_probes=4, num_val_probes=4, meta_lr=0.05)
    fit = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[monitor], enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    default_root_dir=str(tmp_path))
    with pytest.warns(SaliencyMonitorWarning, match="no logger"):
        fit.fit(Binary(), DataLoader(binary_dataset(16, 0), batch_size=8),
                DataLoader(binary_dataset(8, 1), batch_size=8))
    assert monitor.state_dict()["task"] == "multiclass"
    assert {c for (c,) in monitor.state.probes["train"].classes} == {0, 1}
    metrics = {k: float(v) for k, v in fit.callback_metrics.items() if is_saliency_key(k)}
    meta = [v for k, v in metrics.items() if is_meta_correlation(k) and not k.startswith(("Saliency/meta_val_",
                                                                                          "layer_val/"))]
    assert meta and all(math.isfinite(v) for v in meta)
    assert metrics.get("saliency_run/errors", 0) == 0
    assert monitor.last_pictures["train"] and monitor.last_pictures["val"]


# --------------------------------------------------------------------------- probes of different sizes


def sized(height: int, width: int, value: float = 0.5, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.full((3, height, width), value).to(dtype)


def test_one_size_takes_the_most_common_size_then_the_largest_area() -> None:
    def probe(h: int, w: int) -> ProbeBatch:
        return ProbeBatch(sized(h, w)[None], ((0,),), "multiclass")

    most = one_size([probe(4, 4), probe(8, 8), probe(4, 4)])
    assert most.images.shape == (3, 3, 4, 4)
    assert most.resized == Resizing(count=1, total=3, size=(4, 4), sizes=((4, 4), (8, 8)))
    tie = one_size([probe(6, 2), probe(2, 7), probe(4, 4)])  # one of each: the largest area
    assert tie.images.shape[-2:] == (4, 4) and tie.resized is not None and tie.resized.count == 2
    assert one_size([probe(4, 4), probe(4, 4)]).resized is None
    assert most.resized.message("val") == (
        "SaliencyMonitor: the val probes have different sizes (4x4, 8x8); 1 of 3 were resized (bilinear, "
        "antialiased; boxes and masks with them) to the most common size 4x4. Resize images to one size in the "
        "dataset's transform to choose how."
    )


def test_resizing_integer_images_rounds_back_to_their_dtype() -> None:
    image = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8).expand(1, 3, 8, 8) * 4
    small = ProbeBatch(image[:, :, :4, :4].to(torch.uint8), ((0,),), "multiclass")
    big = ProbeBatch(image.to(torch.uint8), ((1,),), "multiclass")
    out = one_size([small, big, small])
    expected = F.interpolate(image, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    assert out.images.dtype == torch.uint8
    torch.testing.assert_close(out.images[1], expected[0].round().to(torch.uint8))


def test_parse_batch_resizes_a_list_with_its_boxes_and_masks() -> None:
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    targets = [
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.0, 0, 4, 4]]), "masks": masks},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.0, 0, 2, 2]]), "masks": masks[:, :4, :4]},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[2.0, 2, 4, 4]]), "masks": masks[:, :4, :4]},
    ]
    probe = parse_batch(([sized(8, 8), sized(4, 4), sized(4, 4)], targets))
    assert probe.images.shape == (3, 3, 4, 4) and probe.resized is not None and probe.resized.count == 1
    torch.testing.assert_close(probe.images[0], sized(4, 4))
    assert probe.boxes[0].tolist() == [[1.0, 1.0, 2.0, 2.0]]  # VOC: covered pixels 1..2 at half size
    assert probe.masks is not None and probe.masks[0][0, :2, :2].all() and probe.masks[0].sum() == 4
    assert probe.boxes[1].tolist() == [[1.0, 1.0, 2.0, 2.0]]


class Sizes(Dataset):
    """Images of three sizes (most of them 16x16), integer labels."""

    sizes = ((16, 16), (12, 20), (16, 16), (20, 12), (16, 16), (16, 16))

    def __init__(self, count: int, seed: int) -> None:
        labels = torch.arange(count) % 3
        generator = torch.Generator().manual_seed(seed)
        self.items = [
            (F.interpolate(class_images(labels[i : i + 1], seed + i), size=self.sizes[i % 6], mode="bilinear")[0]
             + 0.1 * torch.randn(1, generator=generator), int(labels[i]))
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.items[index]


def list_collate(batch: list) -> tuple[list[Tensor], Tensor]:
    images, labels = zip(*batch)
    return list(images), torch.tensor(labels)


def test_draw_and_load_probes_of_different_sizes() -> None:
    loader = DataLoader(Sizes(12, 0), batch_size=4, collate_fn=list_collate)
    probes, identities = draw_probes(loader, 6, seed=3)
    assert probes.images.shape == (6, 3, 16, 16) and probes.resized is not None
    assert probes.resized.size == (16, 16) and probes.resized.sizes == ((12, 20), (16, 16), (20, 12))
    again = load_probes(loader, identities, seed=3)
    assert torch.equal(again.images, probes.images) and again.resized == probes.resized

    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[tuple[Tensor, int]]:
            return iter(Sizes(12, 0).items)

    streamed, _ = draw_probes(DataLoader(Stream(), batch_size=4, collate_fn=list_collate), 12)
    assert streamed.images.shape == (12, 3, 16, 16) and streamed.resized is not None
    assert streamed.resized.count == 4


class ListClassifier(Classifier):
    """Trains on a list of images of different sizes, one forward per image."""

    def _loss(self, batch: Any) -> Tensor:
        images, labels = batch
        return F.cross_entropy(torch.cat([self(image[None]) for image in images]), labels)


def test_fit_on_images_of_different_sizes_warns_once(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=6, num_val_probes=4, meta_lr=0.05)
    train = DataLoader(Sizes(18, 0), batch_size=6, collate_fn=list_collate)
    val = DataLoader(Sizes(12, 1), batch_size=6, collate_fn=list_collate)
    with pytest.warns(SaliencyMonitorWarning) as caught:
        trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(ListClassifier(), train, val)
    resized = [str(w.message) for w in caught if "were resized" in str(w.message)]
    assert len(resized) == 2 and resized[0].startswith("SaliencyMonitor: the train probes have different sizes")
    assert monitor.state.probes["train"].images.shape[-2:] == (16, 16)
    records = spy.saliency()
    assert [step for step, _ in records] == [0, 3] and all(m["saliency_run/errors"] == 0 for _, m in records)
