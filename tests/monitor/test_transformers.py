"""The monitor on transformers, zero-config: a torchvision ViT (token layers) and a timm Swin
(channels-last stages) log every metric and picture; a ViT with attention dropout, stochastic
depth and layer norms in train mode trains bitwise as without the monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor import SaliencyMonitorWarning
from saliency_monitor.monitor.keys import layer_labels
from tests._fits import NUM_CLASSES, SIZE, SpyLogger, multiclass_loaders, trainer
from tests._trace import assert_same_training
from tests.monitor.test_callback import check_ranges, expected_keys, picture_is_not_blank

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")


class Wrapped(pl.LightningModule):
    """Any classifier ``net`` trained with SGD on softmax cross-entropy."""

    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def torchvision_vit() -> Wrapped:
    torch.manual_seed(0)
    net = VisionTransformer(image_size=SIZE, patch_size=4, num_layers=3, num_heads=2, hidden_dim=12, mlp_dim=24,
                            num_classes=NUM_CLASSES)
    nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts from a zero head: every gradient 0
    return Wrapped(net)


def timm_swin() -> Wrapped:
    torch.manual_seed(0)
    return Wrapped(timm.models.swin_transformer.SwinTransformer(
        img_size=SIZE, patch_size=2, embed_dim=12, depths=(1, 1), num_heads=(2, 2), window_size=4,
        num_classes=NUM_CLASSES))


def timm_vit_with_dropouts() -> Wrapped:
    torch.manual_seed(0)
    return Wrapped(timm.models.vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=4, embed_dim=12, depth=3, num_heads=2, num_classes=NUM_CLASSES, drop_rate=0.2,
        attn_drop_rate=0.2, proj_drop_rate=0.2, drop_path_rate=0.2))


@pytest.mark.parametrize(
    ("make", "layers"),
    [
        (torchvision_vit, ["net.encoder.layers.encoder_layer_0", "net.encoder.layers.encoder_layer_1"]),
        (timm_swin, ["net.layers.0", "net.norm"]),
    ],
    ids=["torchvision_vit", "timm_swin"],
)
def test_zero_config_fit_logs_every_metric_and_picture(tmp_path: Path, make, layers: list[str]) -> None:
    spy, csv_logger = SpyLogger(), CSVLogger(tmp_path, name="csv")
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, num_logged_images=1)
    trainer(tmp_path, [monitor], logger=[spy, csv_logger], max_epochs=1).fit(make(), *multiclass_loaders())
    csv_logger.save()
    assert monitor.state.plan is not None and list(monitor.state.plan.layers) == layers
    records = spy.saliency()
    assert [step for step, _ in records] == [0, 3]
    labels = (*layer_labels(layers), "all")
    assert set(records[0][1]) == expected_keys(drift=False, layers=labels)
    assert set(records[1][1]) == expected_keys(layers=labels)
    for _, metrics in records:
        check_ranges(metrics)
        assert metrics["saliency_run/errors"] == 0
    for split in ("train", "val"):
        pngs = sorted((Path(csv_logger.log_dir) / "saliency_maps" / split).glob("*.png"))
        assert len(pngs) == 2 * 2  # two evaluations, one picture per method
        assert all(picture_is_not_blank(np.asarray(Image.open(p).convert("RGB"))) for p in pngs)


def test_a_transformer_in_train_mode_trains_bitwise_as_without_the_monitor(tmp_path: Path) -> None:
    def run(callbacks: list) -> tuple[dict, dict, Tensor]:
        pl.seed_everything(7, verbose=False)
        model = timm_vit_with_dropouts()
        fit = trainer(tmp_path, callbacks, max_epochs=2)
        fit.fit(model, *multiclass_loaders())
        return model.state_dict(), fit.optimizers[0].state_dict(), torch.get_rng_state()

    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, every_n_train_steps=2)
    with pytest.warns(SaliencyMonitorWarning, match="no logger"):
        with_monitor = run([monitor])
    without = run([])
    assert monitor.state.evaluations == 4
    assert list(monitor.state.plan.layers) == ["net.blocks.0", "net.blocks.1"]
    assert_same_training(without, with_monitor)
