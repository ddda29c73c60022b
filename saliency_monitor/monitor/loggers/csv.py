"""CSV adapter: scalars in the logger's metrics.csv, pictures as PNG files, tables as CSV files.

Files go under ``logger.log_dir`` (which may be a remote fsspec URL, as for ``CSVLogger``):

- images: ``os.path.join(log_dir, key, f"step{step:07d}_{i}.png")`` ("saliency_maps/train" makes
  nested folders), the caption in the PNG's "Description" text chunk;
- tables: appended to ``os.path.join(log_dir, key + ".csv")``, columns ``step, *columns``, the
  header written when the file is created (an existing file must have the same header).

Paths do not get the logger's ``prefix`` (scalars do, through ``logger.log_metrics``).
"""

from __future__ import annotations

import csv
import os
import posixpath
from typing import Any

import numpy as np

from ..render import save_png
from .base import Cell, LoggerAdapter

__all__ = ["CSVAdapter"]


class CSVAdapter(LoggerAdapter):
    """Logs to a ``CSVLogger`` (``pytorch_lightning`` or ``lightning.pytorch``).

    Scalars go through ``logger.log_metrics(values, step)``: they reach ``metrics.csv`` when the
    logger saves (every ``flush_logs_every_n_steps``, when the trainer saves it, on ``logger.save()``).
    Before writing files, ``logger.experiment`` is created: creating it later would find a non-empty
    ``log_dir`` and make Lightning warn (and delete an existing metrics.csv).
    """

    name = "csv"
    supports_images = True

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics(values, step)

    def _log_dir(self) -> str:
        self.logger.experiment  # noqa: B018 - creates log_dir and the metrics writer first
        return str(self.logger.log_dir)

    def _log_images(self, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
        folder = os.path.join(self._log_dir(), *key.split("/"))
        for i, (image, caption) in enumerate(zip(images, captions)):
            save_png(image, os.path.join(folder, f"step{step:07d}_{i}.png"), caption)

    def _log_table(self, key: str, columns: list[str], rows: list[list[Cell]], step: int) -> None:
        if "step" in columns:
            raise ValueError(
                f"Expected `columns` not to contain 'step' (the CSV adapter adds that column), but got {columns!r}."
            )
        path = os.path.join(self._log_dir(), *key.split("/")) + ".csv"
        fs, local = _filesystem(path)
        header = ["step", *columns]
        exists = fs.exists(local)
        if exists:
            with fs.open(local, "r", newline="") as file:
                existing = next(csv.reader(file), [])
            if existing != header:
                raise ValueError(
                    f"Expected `columns` to match the header of the existing table {path!r} ({existing[1:]!r}),"
                    f" but got {columns!r}."
                )
        else:
            fs.makedirs(posixpath.dirname(local), exist_ok=True)
        with fs.open(local, "a" if exists else "w", newline="") as file:
            writer = csv.writer(file)
            if not exists:
                writer.writerow(header)
            writer.writerows([step, *row] for row in rows)


def _filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a local path or a URL, as Lightning's loggers do."""
    from fsspec.core import url_to_fs

    return url_to_fs(path)
