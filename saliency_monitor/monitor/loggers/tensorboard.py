"""TensorBoard adapter: scalars, one image tag per picture, tables and captions as markdown text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Cell, LoggerAdapter

__all__ = ["TensorBoardAdapter", "markdown_table"]


class TensorBoardAdapter(LoggerAdapter):
    """Logs to a ``TensorBoardLogger`` (``pytorch_lightning`` or ``lightning.pytorch``).

    - scalars: ``logger.log_metrics(values, step)`` (one ``add_scalar`` per key, with the
      logger's ``prefix``, as Lightning logs its own metrics);
    - images: ``SummaryWriter.add_image(f"{key}/{i}", image, step, dataformats="HWC")``, one tag
      per picture (stable across steps, so TensorBoard's step slider works), and the captions as
      one markdown table (image tag, caption) under ``f"{key}/captions"``;
    - tables: ``add_text(key, markdown_table(columns, rows), step)``.

    Images and text are written to ``logger.experiment`` directly, without the logger's
    ``prefix``. The writer flushes on its own schedule (``flush_secs``) and on ``logger.save()``.
    """

    name = "tensorboard"
    supports_images = True

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics(values, step=step)

    def _log_images(self, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
        writer = self.logger.experiment
        tags = [f"{key}/{i}" for i in range(len(images))]
        for tag, image in zip(tags, images):
            writer.add_image(tag, image, global_step=step, dataformats="HWC")
        rows: list[list[Cell]] = [[tag, caption] for tag, caption in zip(tags, captions)]
        writer.add_text(f"{key}/captions", markdown_table(["image", "caption"], rows), global_step=step)

    def _log_table(self, key: str, columns: list[str], rows: list[list[Cell]], step: int) -> None:
        self.logger.experiment.add_text(key, markdown_table(columns, rows), global_step=step)


def _markdown_cell(cell: Cell) -> str:
    """str(cell) (floats as repr: 0.25, nan, inf) with '|' escaped and newlines as spaces."""
    return str(cell).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub-style markdown table, which TensorBoard's text plugin renders."""
    lines = [[_markdown_cell(name) for name in columns], ["---"] * len(columns)]
    lines += [[_markdown_cell(cell) for cell in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
