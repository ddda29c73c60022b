"""Sending an evaluation's numbers, pictures and tables to the trainer and every logger."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .keys import MetricKey, format_key, pictures_key, table_key
from .loggers import SaliencyLogger, adapt_loggers, is_placeholder
from .trainer import WarnOnce

if TYPE_CHECKING:
    import pytorch_lightning as pl

Pictures = dict[str, list[tuple[np.ndarray, str]]]
"""Per split, (uint8 (H, W, 3) picture, caption) pairs."""
Tables = dict[str, tuple[list[str], list[list[object]]]]
"""Per split, (columns, rows) of the per-probe table."""


def publish(
    trainer: pl.Trainer, scalars: dict[MetricKey, float], pictures: Pictures, tables: Tables, warn: WarnOnce
) -> None:
    """Scalars into ``trainer.callback_metrics`` (every rank), everything to the loggers (rank 0)."""
    named = {format_key(key): value for key, value in scalars.items()}
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in named.items()})
    if not trainer.is_global_zero:
        return
    adapters = adapt_loggers([logger for logger in trainer.loggers if not is_placeholder(logger)])
    if not adapters and not getattr(trainer, "fast_dev_run", False):
        warn(trainer, "no-logger", "SaliencyMonitor: the trainer has no logger; saliency metrics are only stored in "
             "trainer.callback_metrics.")
    for adapter in adapters:
        _send(trainer, adapter, named, pictures, tables, warn)


def _send(
    trainer: pl.Trainer, adapter: SaliencyLogger, scalars: dict[str, float], pictures: Pictures, tables: Tables,
    warn: WarnOnce,
) -> None:
    step = trainer.global_step
    adapter.log_scalars(scalars, step)
    if not pictures and not tables:
        return
    if not adapter.supports_images:
        warn(trainer, f"images-{adapter.name}", (
            f"SaliencyMonitor: logger {adapter.name} takes scalars only; saliency pictures and tables are not "
            "sent to it."
        ))
        return
    for split, grids in pictures.items():
        adapter.log_images(pictures_key(split), [g for g, _ in grids], [c for _, c in grids], step)
    for split, (columns, rows) in tables.items():
        adapter.log_table(table_key(split), columns, rows, step)
