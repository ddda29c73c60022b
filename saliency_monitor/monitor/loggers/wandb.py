"""Weights & Biases adapter, and :func:`read_offline_run` to read an offline run back.

Everything goes through ``WandbLogger.log_metrics(..., step=step)``, which adds
``trainer/global_step`` to the logged dict (and the logger's ``prefix`` to the keys), exactly as
Lightning's own ``WandbLogger.log_image`` / ``log_table`` do; images are ``wandb.Image`` lists and
tables ``wandb.Table`` objects built here. NaN and infinite scalars are passed to W&B unchanged
(W&B stores them).

Metric definitions: Lightning's ``WandbLogger.experiment`` defines
``define_metric("*", step_metric="trainer/global_step", step_sync=True)``. W&B does not combine
overlapping globs (it picks one of the matching globs at random, and an exact name does not
inherit a glob's settings), so the adapter defines every key it logs by its exact name, once per
run, before the key's first value: ``step_metric="trainer/global_step", step_sync=True`` (the
saliency charts use the trainer step as x-axis even on a run not created by the logger), and
for the standard errors (``stderr/...``) ``summary="none"`` as well: they stay in the history
and their charts, but not in the run summary or the runs table, where a last standard error
without its mean says nothing. Dots in a name are escaped (W&B reads them as nesting). With a
logger ``prefix`` the logged names differ from the defined ones and Lightning's ``*`` applies.

``log_config`` is ``logger.log_hyperparams`` (the run config, nested as given); ``log_summary``
is ``run.summary.update`` (summary-only values: no history, no chart).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..keys import STDERR
from .base import Cell, LoggerAdapter

__all__ = ["STEP_METRIC", "WandbAdapter", "offline_history", "read_offline_run", "read_offline_summary"]

STEP_METRIC = "trainer/global_step"
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DEFINED: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()
"""Names already given to ``define_metric``, per run (adapters may be rebuilt at every log)."""


class WandbAdapter(LoggerAdapter):
    """Logs to a ``WandbLogger`` (``pytorch_lightning`` or ``lightning.pytorch``)."""

    name = "wandb"
    supports_images = True

    def _define_metrics(self, keys: Iterable[str]) -> None:
        """``define_metric(key, step_metric="trainer/global_step", ...)`` once per run and key (see
        the module docstring)."""
        run = self.logger.experiment
        defined = _DEFINED.setdefault(run, set())
        for key in keys:
            if key not in defined:
                summary = {"summary": "none"} if key.startswith(f"{STDERR}/") else {}
                run.define_metric(key.replace(".", "\\."), step_metric=STEP_METRIC, step_sync=True, **summary)
                defined.add(key)

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        self._define_metrics(values)
        self.logger.log_metrics(values, step=step)

    def _log_summary(self, values: dict[str, float | int]) -> None:
        self.logger.experiment.summary.update(values)

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

    return [json.loads(line) for line in _leet_inspect(run_dir).splitlines() if line.strip()]


def read_offline_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A W&B run's final state, via ``wandb leet inspect --summary --json`` (``run_dir`` as for
    :func:`read_offline_run`): ``{"config": {...}, "summary": {...}, "state", "step", "exit_code",
    "run_id", "project", "console": [...], ...}``. The config is merged and nested as logged (the
    monitor's under ``"saliency_monitor"``); the summary maps each key to its final value (a key
    defined with ``summary="none"``, such as the monitor's ``stderr/...``, is absent)."""
    import json

    summary: dict[str, Any] = json.loads(_leet_inspect(run_dir, "--summary"))
    return summary


def _leet_inspect(run_dir: str | os.PathLike[str], *flags: str) -> str:
    """The output of ``python -m wandb leet inspect --json *flags run_dir``."""
    path = os.fspath(run_dir)
    if not os.path.exists(path):
        raise ValueError(
            f"Expected `run_dir` to be an existing W&B run directory, .wandb file or wandb directory, but got {path!r}."
        )
    command = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, "--json", path]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"Expected `{' '.join(command)}` to succeed, but it exited with {result.returncode}:\n{result.stderr}"
        )
    return result.stdout


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
