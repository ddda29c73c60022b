"""Fallback for any other Lightning logger (MLFlow, Comet, Neptune, a custom one): scalars only."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Cell, LoggerAdapter

__all__ = ["GenericAdapter"]


class GenericAdapter(LoggerAdapter):
    """Scalars through ``logger.log_metrics(values, step=step)``; no images, no tables.

    ``supports_images`` is False: by the :class:`~saliency_monitor.monitor.loggers.base.SaliencyLogger`
    contract the caller checks it, warns that this logger gets no pictures or tables, and does not
    call ``log_images`` / ``log_table``. Called anyway, they validate their arguments and store
    nothing.
    """

    supports_images = False

    def __init__(self, logger: Any) -> None:
        super().__init__(logger)
        self.name = f"generic({type(logger).__name__})"

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics(values, step=step)

    def _log_images(self, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
        """Stores nothing: ``supports_images`` is False (see the class docstring)."""

    def _log_table(self, key: str, columns: list[str], rows: list[list[Cell]], step: int) -> None:
        """Stores nothing: ``supports_images`` is False (see the class docstring)."""
