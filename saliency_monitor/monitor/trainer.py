"""What the monitor reads from and does around a Lightning Trainer, through its public API only.

No Lightning import: the Trainer is duck-typed, so one implementation serves both
``pytorch_lightning`` and ``lightning.pytorch``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    import pytorch_lightning as pl

_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class SaliencyMonitorWarning(UserWarning):
    """Warnings of the SaliencyMonitor (each one is issued once per monitor)."""


class WarnOnce:
    """Issues each kind of :class:`SaliencyMonitorWarning` once, on global rank 0 only."""

    def __init__(self) -> None:
        self.issued: set[str] = set()

    def __call__(self, trainer: pl.Trainer, kind: str, message: str) -> None:
        if kind in self.issued or not trainer.is_global_zero:
            return
        self.issued.add(kind)
        warnings.warn(message, SaliencyMonitorWarning, stacklevel=3)


class Progress:
    """A transient progress line (tqdm, rank 0, only when the trainer shows a progress bar)."""

    def __init__(self, trainer: pl.Trainer, total: int, step: int) -> None:
        self.bar = None
        if trainer.is_global_zero and getattr(trainer, "progress_bar_callback", None) is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"SaliencyMonitor (step {step})", unit="probe", leave=False,
                            dynamic_ncols=True)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def refuse_sharded_strategy(strategy: object) -> None:
    """FSDP / DeepSpeed / model-parallel strategies shard the parameters: refuse them clearly."""
    name = type(strategy).__name__
    sharded = [cls.__name__ for cls in type(strategy).__mro__ if cls.__name__ in _SHARDED_STRATEGIES]
    if sharded:
        raise ValueError(
            f"Expected a single-device or data-parallel strategy (e.g. 'ddp'), but got {name}: it shards the "
            "parameters across ranks, and the saliency maps need the whole model on each rank. Run the monitor "
            "in a separate evaluation job on a consolidated checkpoint instead."
        )


def eager() -> AbstractContextManager[None]:
    """Compiled (``torch.compile``) modules run their original eager code here, so the
    forward hooks the saliency pass puts on submodules fire as usual."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def first_dataloader(loaders: Any) -> DataLoader | None:
    """The DataLoader itself, or the first of a list/tuple/dict of them (Lightning's
    ``trainer.train_dataloader`` / ``val_dataloaders`` give back what the user passed)."""
    if loaders is None:
        return None
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return first_dataloader(loaders[0]) if loaders else None
    raise TypeError(
        f"Expected the trainer's dataloaders to be torch DataLoaders (or a list/dict of them) to draw probes from, "
        f"but got {type(loaders).__name__}."
    )


def dataset_class_names(names: Sequence[str] | None, loader: DataLoader) -> list[str] | None:
    """``names`` if given, else the loader's dataset's ``classes`` attribute when it is a list of str."""
    if names is not None:
        return list(names)
    classes = getattr(loader.dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def optimizer_lr(trainer: pl.Trainer) -> float:
    """The first optimizer's first learning rate (``meta_lr="optimizer"``)."""
    optimizers = trainer.optimizers
    if not optimizers:
        raise ValueError("Expected an optimizer for meta_lr='optimizer', but the trainer has none.")
    return float(optimizers[0].param_groups[0]["lr"])
