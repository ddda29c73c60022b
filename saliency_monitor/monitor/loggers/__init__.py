"""Adapters from Lightning loggers to the :class:`SaliencyLogger` protocol the callback logs through.

==========================  ===================  ==============================================
Lightning logger            adapter              images / tables
==========================  ===================  ==============================================
``WandbLogger``             :class:`WandbAdapter`       ``wandb.Image`` lists / ``wandb.Table``
``TensorBoardLogger``       :class:`TensorBoardAdapter` one image tag per picture / markdown text
``CSVLogger``               :class:`CSVAdapter`         PNG files / CSV files under ``log_dir``
any other ``Logger``        :class:`GenericAdapter`     none (``supports_images`` is False)
==========================  ===================  ==============================================

Beyond the steps' values: ``log_config`` (the monitor's settled configuration at fit start: W&B run
config, CSV ``hparams.yaml``, TensorBoard a text table), ``log_summary`` (summary-only values: W&B
only) and ``log_charts`` (keys drawn on one chart: TensorBoard's custom scalars only).

Both Lightning packages are recognised, ``pytorch_lightning`` and ``lightning.pytorch`` (separate
class trees); neither is required.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from .base import LoggerAdapter, SaliencyLogger
from .csv import CSVAdapter
from .generic import GenericAdapter
from .tensorboard import TensorBoardAdapter
from .wandb import WandbAdapter, offline_history, read_offline_run, read_offline_summary

__all__ = [
    "CSVAdapter",
    "GenericAdapter",
    "LoggerAdapter",
    "SaliencyLogger",
    "TensorBoardAdapter",
    "WandbAdapter",
    "adapt_loggers",
    "is_placeholder",
    "offline_history",
    "read_offline_run",
    "read_offline_summary",
]

_NAMESPACES = ("pytorch_lightning", "lightning.pytorch")
_ADAPTERS: tuple[tuple[str, type[LoggerAdapter]], ...] = (
    ("WandbLogger", WandbAdapter),
    ("TensorBoardLogger", TensorBoardAdapter),
    ("CSVLogger", CSVAdapter),
)


def _loggers_modules(submodule: str = "loggers") -> list[ModuleType]:
    """The ``loggers`` module (or ``submodule``) of each Lightning namespace that is already imported.

    A logger object's class comes from an imported module, so a namespace not in ``sys.modules``
    cannot have made one: it is skipped rather than imported (``lightning`` costs seconds to import).
    """
    modules = []
    for namespace in _NAMESPACES:
        if namespace not in sys.modules:
            continue
        try:
            modules.append(importlib.import_module(f"{namespace}.{submodule}"))
        except ImportError:
            continue
    return modules


def is_placeholder(logger: object) -> bool:
    """Whether ``logger`` is Lightning's ``DummyLogger``, which stands in for the user's loggers
    under ``fast_dev_run`` and stores nothing."""
    return any(isinstance(logger, module.DummyLogger) for module in _loggers_modules("loggers.logger"))


def _adapt(logger: object, index: int) -> LoggerAdapter:
    """The adapter for one Lightning logger (W&B, TensorBoard, CSV, else the generic fallback)."""
    for module in _loggers_modules():
        if not isinstance(logger, module.Logger):
            continue
        for class_name, adapter in _ADAPTERS:
            if isinstance(logger, getattr(module, class_name)):
                return adapter(logger)
        return GenericAdapter(logger)
    raise TypeError(
        f"Expected `loggers[{index}]` to be a Lightning logger (a pytorch_lightning.loggers.Logger or"
        f" lightning.pytorch.loggers.Logger), but got {logger!r}."
    )


def adapt_loggers(loggers: Sequence[object]) -> list[SaliencyLogger]:
    """One adapter per Lightning logger (e.g. ``trainer.loggers``), in order.

    The adapters do not touch ``logger.experiment`` until they first log.
    """
    if isinstance(loggers, (str, bytes)) or not isinstance(loggers, Sequence):
        raise TypeError(f"Expected `loggers` to be a sequence of Lightning loggers, but got {loggers!r}.")
    return [_adapt(logger, i) for i, logger in enumerate(loggers)]
