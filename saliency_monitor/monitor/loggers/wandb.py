"""Weights & Biases adapter, and :func:`read_offline_run` to read an offline run back.

Everything goes through ``WandbLogger.log_metrics(..., step=step)``, which adds
``trainer/global_step`` to the logged dict (and the logger's ``prefix`` to the keys), exactly as
Lightning's own ``WandbLogger.log_image`` / ``log_table`` do; images are ``wandb.Image`` lists and
tables ``wandb.Table`` objects built here. Lightning's ``WandbLogger.experiment`` defines
``trainer/global_step`` and ``define_metric("*", step_metric="trainer/global_step", step_sync=True)``
when it creates the run; the adapter adds ``define_metric("<top>/*", ...)`` for the top-level part of
every key it logs (``saliency/*``, ``saliency_maps/*``, ...) the first time it sees it, so the
saliency panels use the trainer step as x-axis even on a run not created by the logger
(``wandb.run`` reused). NaN and infinite scalars are passed to W&B unchanged (W&B stores them).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import weakref
from collections.abc import Iterable

import numpy as np

from .base import Cell, LoggerAdapter

__all__ = ["STEP_METRIC", "WandbAdapter", "offline_history", "read_offline_run"]

STEP_METRIC = "trainer/global_step"
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DEFINED: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()
"""Globs already given to ``define_metric``, per run (adapters may be rebuilt at every log)."""


class WandbAdapter(LoggerAdapter):
    """Logs to a ``WandbLogger`` (``pytorch_lightning`` or ``lightning.pytorch``)."""

    name = "wandb"
    supports_images = True

    def _define_metrics(self, keys: Iterable[str]) -> None:
        """``define_metric(glob, step_metric="trainer/global_step")`` once per run and top-level key part."""
        run = self.logger.experiment
        defined = _DEFINED.setdefault(run, set())
        for key in keys:
            glob = key.split("/", 1)[0] + "/*" if "/" in key else key
            if glob not in defined:
                run.define_metric(glob, step_metric=STEP_METRIC, step_sync=True)
                defined.add(glob)

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        self._define_metrics(values)
        self.logger.log_metrics(values, step=step)

    def _log_images(self, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
        import wandb

        self._define_metrics([key])
        pictures = [wandb.Image(image, caption=caption) for image, caption in zip(images, captions)]
        self.logger.log_metrics({key: pictures}, step=step)

    def _log_table(self, key: str, columns: list[str], rows: list[list[Cell]], step: int) -> None:
        import wandb

        self._define_metrics([key])
        table = wandb.Table(columns=list[str | int](columns), data=rows)
        self.logger.log_metrics({key: table}, step=step)


def read_offline_run(run_dir: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Every record of a W&B run's ``.wandb`` log, via ``wandb leet inspect --json``.

    ``run_dir``: an ``offline-run-*`` directory (``os.path.dirname(run.dir)``; ``run.dir`` is its
    ``files/`` folder), its ``run-<id>.wandb`` file, or a ``wandb/`` directory (its latest run).
    Finish the run first (``wandb.finish()``): records still buffered are not in the file yet.

    Runs ``python -m wandb`` with this interpreter (``sys.executable``), so the CLI is the one of
    the installed ``wandb`` package (it needs the ``leet inspect`` command: wandb 0.31 has it); the
    ``bin/wandb`` script is not used (its shebang breaks when a virtual environment is moved).

    Returns one dict per record, in order: ``{"num": int, "type": str, <type>: {...}}``. Types
    include "run", "metric" (``{"metric": {"glob_name" | "name": ..., "step_metric": ...}}`` from
    ``define_metric``), "history", "summary", "files", "artifact", "output_raw", "exit". A
    "history" record is one ``run.log`` call: ``{"history": {"item": {...}, "step": {"num": n}}}``
    where ``item`` maps flat keys to JSON values: scalars (NaN/inf as the strings "NaN",
    "Infinity", "-Infinity"; see :func:`offline_history`), ``"trainer/global_step"``, ``"_step"``,
    ``"_runtime"``, ``"_timestamp"``; a list of ``wandb.Image`` under ``key`` appears as
    ``key._type = "images/separated"``, ``key.captions``, ``key.filenames`` (paths relative to
    ``<run dir>/files``), ``key.count``, ``key.width``, ``key.height``, ``key.format``; a
    ``wandb.Table`` as ``key._type = "table-file"``, ``key.path`` (a JSON file under
    ``<run dir>/files``: ``{"columns": [...], "data": [[...], ...]}`` with bare ``NaN``, which
    ``json.load`` reads), ``key.ncols``, ``key.nrows``.
    """
    import json

    path = os.fspath(run_dir)
    if not os.path.exists(path):
        raise ValueError(
            f"Expected `run_dir` to be an existing W&B run directory, .wandb file or wandb directory, but got {path!r}."
        )
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", path]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"Expected `{' '.join(command)}` to succeed, but it exited with {result.returncode}:\n{result.stderr}"
        )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def offline_history(records: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    """The ``item`` of each "history" record, in order, with "NaN"/"Infinity"/"-Infinity" as floats."""
    items = []
    for record in records:
        if record.get("type") == "history":
            item = record["history"]["item"]  # type: ignore[index]
            items.append({key: _finite_or_float(value) for key, value in item.items()})
    return items


def _finite_or_float(value: object) -> object:
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value
