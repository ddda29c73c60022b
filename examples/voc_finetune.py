"""Fine-tune a torchvision ResNet on PASCAL VOC 2007 classification and watch its saliency.

    .ci/venv python examples/voc_finetune.py            # offline default: synthetic VOC, CPU, a few minutes
    .ci/venv python examples/voc_finetune.py --voc-root ~/data --weights DEFAULT --arch resnet50 \\
        --image-size 224 --batch-size 32 --epochs 20 --accelerator gpu

20 classes, multi-hot labels from the annotations, BCE loss; trainval -> test; validation
metrics are torchmetrics' mAP and per-class AP. The `SaliencyMonitor` logs to a WandbLogger
(online when you are logged in to W&B, offline otherwise). Without ``--voc-root`` the script
generates (once, cached) a synthetic data set in the real VOC folder layout and fine-tunes a
small ResNet on it through exactly the same code path; its training split is small enough that
the model overfits within the run, so the train − val meta-correlation gap has something to show.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics.classification import MultilabelAveragePrecision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.voc_data import VOC_CLASSES, VOCDataModule, generate_synthetic_voc, multi_hot
from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor.keys import method_label
from saliency_monitor.monitor.render import save_png

NUM_CLASSES = len(VOC_CLASSES)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saliency-monitor"


class VOCClassifier(pl.LightningModule):
    """A torchvision classifier with a new 20-way head, BCE loss, mAP / per-class AP."""

    def __init__(self, arch: str = "resnet50", weights: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(arch, weights)
        self.train_map = MultilabelAveragePrecision(num_labels=NUM_CLASSES, average="macro")
        self.val_map = MultilabelAveragePrecision(num_labels=NUM_CLASSES, average="macro")
        self.val_ap = MultilabelAveragePrecision(num_labels=NUM_CLASSES, average=None)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, targets = batch
        labels = multi_hot(targets).to(images.device)
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.train_map.update(logits.detach(), labels.long())
        self.log("train/loss", loss, batch_size=len(images), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/mAP", self.train_map.compute())
        self.train_map.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        labels = multi_hot(targets).to(images.device)
        logits = self(images)
        self.log("val/loss", F.binary_cross_entropy_with_logits(logits, labels), batch_size=len(images))
        self.val_map.update(logits, labels.long())
        self.val_ap.update(logits, labels.long())

    def on_validation_epoch_end(self) -> None:
        self.log("val/mAP", self.val_map.compute(), prog_bar=True)
        for name, ap in zip(VOC_CLASSES, self.val_ap.compute()):
            self.log(f"val_AP/{name}", ap)
        self.val_map.reset()
        self.val_ap.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def build_model(arch: str, weights: str | None) -> torch.nn.Module:
    """``torchvision.models.<arch>`` with ImageNet ``weights`` (a torchvision weights name such as
    ``DEFAULT`` or ``IMAGENET1K_V2``; None = random init) and a 20-way head."""
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"Expected `--arch` to name a torchvision classification model, but got {arch!r}.")
    try:
        model = torchvision.models.get_model(arch, weights=weights)
    except Exception as error:  # no network, unknown name: say so, do not fall back silently
        raise SystemExit(
            f"Could not load {arch} weights {weights!r} ({type(error).__name__}: {error}). "
            "Offline, pass --weights none or put the checkpoint in torch's hub cache (TORCH_HOME)."
        ) from error
    head = model.fc if hasattr(model, "fc") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"Expected {arch} to end in a Linear `fc` head (a ResNet-like model), but it does not.")
    model.fc = torch.nn.Linear(head.in_features, NUM_CLASSES)
    return model


class Summary(pl.Callback):
    """Collects train/val mAP and the main saliency metrics after each monitor evaluation."""

    def __init__(self, method: str) -> None:
        """``method``: the saliency method whose combined-map metrics the table shows."""
        label = method_label(method)  # the method's short label in the monitor's keys
        self.keys = {
            "train mAP": "train/mAP",
            "val mAP": "val/mAP",
            "meta corr train": f"Saliency/meta_train_{label}",
            "meta corr val": f"Saliency/meta_val_{label}",
            "gap": f"Saliency/gap_{label}",
            "gap stderr": f"stderr/Saliency_gap_{label}",
            "class sens. val": f"Saliency/sensitivity_{label}",
            "pointing val": f"layer_val/pg_{label}_all",
        }
        self.rows: list[dict[str, float]] = []
        self._last: object = None

    def _record(self, trainer: pl.Trainer, epoch: str) -> None:
        metrics = trainer.callback_metrics
        stamp = metrics.get("saliency_run/time_s")
        if stamp is None or stamp is self._last:  # the monitor did not evaluate at this point
            return
        self._last = stamp
        row = {"epoch": epoch, "step": trainer.global_step}
        row.update({name: float(metrics[key]) if key in metrics else math.nan for name, key in self.keys.items()})
        self.rows.append(row)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, "start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, str(trainer.current_epoch + 1))

    def table(self) -> str:
        columns = ["epoch", "step", *self.keys]
        cells = [columns] + [[_fmt(row[c]) for c in columns] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


class EpochCheckpoints(pl.Callback):
    """Saves the wrapped torchvision model's ``state_dict`` before training (``epoch_000.pt``) and
    after every training epoch e (``epoch_{e:03d}.pt``) in ``directory``: plain ``torch.save``
    files that ``torchvision.models.get_model(arch, num_classes=20).load_state_dict`` reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _save(self, pl_module: pl.LightningModule, epoch: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.model.state_dict(), self.directory / f"epoch_{epoch:03d}.pt")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(pl_module, trainer.current_epoch + 1)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def wandb_mode() -> str:
    """"online" when W&B credentials are present and WANDB_MODE does not say otherwise."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return os.environ["WANDB_MODE"]
    import wandb

    try:
        logged_in = bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key)
    except Exception:  # noqa: BLE001 - no settings file: not logged in
        logged_in = False
    return "online" if logged_in else "offline"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    data = parser.add_argument_group("data")
    data.add_argument("--voc-root", type=Path, default=None,
                      help="directory holding VOCdevkit/VOC2007 (default: generate a synthetic set)")
    data.add_argument("--download", action="store_true", help="download VOC2007 into --voc-root (needs internet)")
    data.add_argument("--data-dir", type=Path, default=DEFAULT_CACHE / "synthetic-voc",
                      help="where the synthetic set is generated and cached")
    data.add_argument("--synthetic-sizes", type=int, nargs=3, default=(60, 60, 200), metavar=("TRAIN", "VAL", "TEST"),
                      help="synthetic split sizes (trainval = train + val: small, so the model overfits in the run)")
    model = parser.add_argument_group("model and training")
    model.add_argument("--arch", default=None,
                       help="torchvision model (default: resnet50 on real VOC, resnet18 offline)")
    model.add_argument("--weights", default=None,
                       help="torchvision weights name, e.g. DEFAULT or IMAGENET1K_V2 (default: DEFAULT on real VOC, "
                            "none offline); 'none' = random init")
    model.add_argument("--epochs", type=int, default=None, help="default: 20 on real VOC, 18 offline")
    model.add_argument("--image-size", type=int, default=None, help="default: 224 on real VOC, 64 offline")
    model.add_argument("--batch-size", type=int, default=None, help="default: 32 on real VOC, 16 offline")
    model.add_argument("--lr", type=float, default=1e-3)
    model.add_argument("--accelerator", default="auto")
    model.add_argument("--num-workers", type=int, default=0)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--checkpoint-dir", type=Path, default=None,
                       help="save the model's state_dict before training and after every epoch here "
                            "(epoch_000.pt, epoch_001.pt, ...; default: no checkpoints)")
    monitor = parser.add_argument_group("saliency monitor")
    monitor.add_argument("--num-train-probes", type=int, default=16)
    monitor.add_argument("--num-val-probes", type=int, default=16)
    monitor.add_argument("--every-n-epochs", type=int, default=None, help="default: 1 on real VOC, 2 offline")
    monitor.add_argument("--meta-lr", default="calibrate", help="a number, 'calibrate', 'optimizer' or 'none'")
    monitor.add_argument("--methods", nargs="+", default=["norm_grad_selective", "norm_grad"])
    monitor.add_argument("--num-logged-images", type=int, default=4)
    logging = parser.add_argument_group("logging")
    logging.add_argument("--wandb-project", default="saliency-monitor-voc")
    logging.add_argument("--wandb-dir", type=Path, default=Path("wandb-runs"))
    logging.add_argument("--picture", type=Path, default=Path("voc_saliency.png"),
                         help="where to save the last evaluation's val picture (first method)")
    logging.add_argument("--filmstrip", type=Path, default=Path("voc_filmstrip.png"),
                         help="where to save the val filmstrip (each logged probe's combined map per evaluation)")
    args = parser.parse_args(argv)
    real = args.voc_root is not None
    args.arch = args.arch or ("resnet50" if real else "resnet18")
    args.weights = args.weights if args.weights is not None else ("DEFAULT" if real else "none")
    args.weights = None if args.weights.lower() == "none" else args.weights
    args.epochs = args.epochs or (20 if real else 18)
    args.image_size = args.image_size or (224 if real else 64)
    args.every_n_epochs = args.every_n_epochs or (1 if real else 2)
    args.batch_size = args.batch_size or (32 if real else 16)
    args.meta_lr = _meta_lr(args.meta_lr)
    return args


def _meta_lr(text: str) -> float | str | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        return text


class Result(NamedTuple):
    summary: Summary
    module: VOCClassifier
    monitor: SaliencyMonitor
    data: VOCDataModule


def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    pl.seed_everything(args.seed, verbose=False)
    if args.voc_root is None:
        train, val, test = args.synthetic_sizes
        print(f"Synthetic VOC (train {train}, val {val}, test {test}) in {args.data_dir}", flush=True)
        root = generate_synthetic_voc(args.data_dir, num_train=train, num_val=val, num_test=test,
                                      image_size=max(args.image_size, 64), seed=args.seed)
    else:
        root = args.voc_root
    data = VOCDataModule(root, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
                         download=args.download)
    module = VOCClassifier(args.arch, args.weights, lr=args.lr)

    args.wandb_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=args.wandb_project, save_dir=str(args.wandb_dir), mode=wandb_mode(),
                         config=vars(args) | {"voc_root": str(args.voc_root), "wandb_dir": str(args.wandb_dir),
                                              "data_dir": str(args.data_dir)})
    monitor = SaliencyMonitor(
        num_train_probes=args.num_train_probes, num_val_probes=args.num_val_probes,
        every_n_epochs=args.every_n_epochs, meta_lr=args.meta_lr, methods=args.methods,
        num_logged_images=args.num_logged_images, class_names=VOC_CLASSES,
    )
    summary = Summary(args.methods[0])
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=logger,
        callbacks=[monitor, summary, *([EpochCheckpoints(args.checkpoint_dir)] if args.checkpoint_dir else [])],
        log_every_n_steps=5, enable_checkpointing=False, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|litlogger).*")
        trainer.fit(module, datamodule=data)

    run_dir = Path(logger.experiment.dir).parent
    mode = logger.experiment.settings.mode
    import wandb

    wandb.finish()
    print(f"\nPer evaluation (saliency: {args.methods[0]}, combined map):")
    print(summary.table())
    if args.voc_root is None:  # small synthetic set: cheap to read its labels again
        prevalence = torch.cat([multi_hot([t]) for _, t in data.val_dataset]).mean(0)
        print(f"(chance val mAP, random scores: {float(prevalence[prevalence > 0].mean()):.3f}; "
              "gap = train - val meta correlation, widening as the model overfits)")
    pictures = monitor.last_pictures.get("val") or monitor.last_pictures.get("train")
    if pictures:
        save_png(pictures[0][0], args.picture)
        print(f"\nLast saliency picture ({pictures[0][1]}): {args.picture}")
    filmstrip = monitor.last_filmstrips.get("val")
    if filmstrip is not None:
        save_png(filmstrip, args.filmstrip)
        print(f"Saliency evolution (val filmstrip, {args.methods[0]}, combined map): {args.filmstrip}")
    print(f"\nW&B run ({mode}): {run_dir}")
    print(f"  view offline:  wandb leet {run_dir}")
    if mode == "offline":
        print(f"  upload:        wandb sync {run_dir}")
    return Result(summary, module, monitor, data)


if __name__ == "__main__":
    main()
