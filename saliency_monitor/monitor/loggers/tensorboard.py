"""TensorBoard adapter: scalars, one image tag per picture, tables and captions as markdown text,
multi-key charts as a custom-scalars layout."""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence

import numpy as np

from .base import Cell, LoggerAdapter

__all__ = ["CONFIG_TAG", "TensorBoardAdapter", "flatten_config", "markdown_table"]

CONFIG_TAG = "config"
"""The text tag of the run's configuration."""
_LAYOUTS: weakref.WeakKeyDictionary[object, dict[str, dict[str, list[str]]]] = weakref.WeakKeyDictionary()
"""The custom-scalars layout last written, per SummaryWriter (adapters may be rebuilt at every log)."""


class TensorBoardAdapter(LoggerAdapter):
    """Logs to a ``TensorBoardLogger`` (``pytorch_lightning`` or ``lightning.pytorch``).

    - scalars: ``logger.log_metrics(values, step)`` (one ``add_scalar`` per key, with the
      logger's ``prefix``, as Lightning logs its own metrics);
    - images: ``SummaryWriter.add_image(f"{key}/{i}", image, step, dataformats="HWC")``, one tag
      per picture (stable across steps, so TensorBoard's step slider works), and the captions as
      one markdown table (image tag, caption) under ``f"{key}/captions"``;
    - tables: ``add_text(key, markdown_table(columns, rows), step)``;
    - the configuration: one markdown table (name, value) of :func:`flatten_config` under the
      text tag ``config``. Not ``log_hyperparams``: TensorBoard keeps a run's first hparams
      session only, and the Trainer writes one (the module's hparams, even empty ones) before
      any callback runs; ``hparams.yaml`` is written once, at that time, too;
    - charts: ``add_custom_scalars`` (the Custom Scalars dashboard), one ``Multiline`` chart per
      title whose tags are the keys as anchored regexes (``^key$``: TensorBoard searches), written
      once per writer (again only when the charts change).

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

    def _log_config(self, config: dict[str, object]) -> None:
        rows: list[list[Cell]] = [[name, str(value)] for name, value in flatten_config(config).items()]
        self.logger.experiment.add_text(CONFIG_TAG, markdown_table(["name", "value"], rows))

    def _log_charts(self, charts: dict[str, dict[str, list[str]]]) -> None:
        writer = self.logger.experiment
        if _LAYOUTS.get(writer) == charts:
            return
        writer.add_custom_scalars({
            section: {title: ["Multiline", [f"^{re.escape(key)}$" for key in keys]] for title, keys in titled.items()}
            for section, titled in charts.items()
        })
        _LAYOUTS[writer] = charts


def flatten_config(config: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings as one level, names joined with ``/`` (``{"a": {"b": 1}}`` -> ``{"a/b": 1}``)."""
    flat: dict[str, object] = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _markdown_cell(cell: Cell) -> str:
    """str(cell) (floats as repr: 0.25, nan, inf) with '|' escaped and newlines as spaces."""
    return str(cell).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub-style markdown table, which TensorBoard's text plugin renders."""
    lines = [[_markdown_cell(name) for name in columns], ["---"] * len(columns)]
    lines += [[_markdown_cell(cell) for cell in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
