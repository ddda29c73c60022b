"""The small protocol the SaliencyMonitor callback logs through, and the checks every adapter shares.

An adapter wraps one Lightning logger. The callback calls it on global rank 0 only and, before
``log_images`` / ``log_table``, checks ``supports_images``: an adapter whose backend cannot store
pictures or tables (the generic fallback) says ``supports_images = False``, the callback warns once
and does not call those two methods. Three calls describe the run rather than a step:
``log_config`` (the monitor's settled options, at fit start: ``logger.log_hyperparams`` unless the
backend needs otherwise), ``log_summary`` (summary-only numbers, e.g. the largest gap so far: W&B
only, the others store nothing) and ``log_charts`` (keys drawn together on one chart: TensorBoard's
custom scalars only).

Every adapter validates its arguments the same way (:class:`LoggerAdapter`), so a bad call fails
with the same message whichever backend is configured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..._checks import is_int, is_real

__all__ = [
    "Cell",
    "Charts",
    "LoggerAdapter",
    "SaliencyLogger",
    "check_charts",
    "check_config",
    "check_images",
    "check_key",
    "check_scalars",
    "check_step",
    "check_summary",
    "check_table",
]

Cell = str | int | float
"""One table cell: a string or a number (NaN allowed)."""
Charts = Mapping[str, Mapping[str, Sequence[str]]]
"""Charts that draw several scalar keys together: section -> chart title -> the keys, in order."""


@runtime_checkable
class SaliencyLogger(Protocol):
    """What the callback needs from a logging backend."""

    name: str
    """Short backend name: "wandb", "tensorboard", "csv" or "generic(<LoggerClass>)"."""
    supports_images: bool
    """False: ``log_images`` and ``log_table`` store nothing; the caller must check and warn."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log numbers (NaN allowed) at the trainer's global step."""

    def log_images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str], step: int) -> None:
        """Log (H, W, 3) uint8 pictures, one caption each, under ``key``."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int) -> None:
        """Log a table of str/int/float cells (NaN allowed) under ``key``."""

    def log_config(self, config: Mapping[str, object]) -> None:
        """Record the run's configuration: str-keyed nested mappings of lists, strings, numbers, None."""

    def log_summary(self, values: Mapping[str, float]) -> None:
        """Set summary-only numbers (not history, no chart); a name set again replaces its value."""

    def log_charts(self, charts: Charts) -> None:
        """Declare charts that draw several scalar keys together (a backend that cannot ignores it)."""


class LoggerAdapter(ABC):
    """Base of the adapters: validates the arguments, then hands off to ``_log_*``.

    ``logger`` is the wrapped Lightning logger; subclasses set ``name`` and ``supports_images``.
    """

    name: str
    supports_images: bool = True

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        """The wrapped Lightning logger (duck-typed: both Lightning namespaces)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.logger).__name__})"

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log numbers (NaN allowed) at ``step``; see :func:`check_scalars`."""
        self._log_scalars(check_scalars(values), check_step(step))

    def log_images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str], step: int) -> None:
        """Log (H, W, 3) uint8 pictures with one caption each; see :func:`check_images`."""
        pictures, texts = check_images(images, captions)
        self._log_images(check_key(key), pictures, texts, check_step(step))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int) -> None:
        """Log a table of str/int/float cells; see :func:`check_table`."""
        names, cells = check_table(columns, rows)
        self._log_table(check_key(key), names, cells, check_step(step))

    def log_config(self, config: Mapping[str, object]) -> None:
        """Record the run's configuration; see :func:`check_config`."""
        self._log_config(check_config(config))

    def log_summary(self, values: Mapping[str, float]) -> None:
        """Set summary-only numbers; see :func:`check_summary`."""
        self._log_summary(check_summary(values))

    def log_charts(self, charts: Charts) -> None:
        """Declare multi-key charts; see :func:`check_charts`."""
        self._log_charts(check_charts(charts))

    def _log_config(self, config: dict[str, object]) -> None:
        """``logger.log_hyperparams(config)`` (W&B: the run config; CSV: ``hparams.yaml``)."""
        self.logger.log_hyperparams(config)

    def _log_summary(self, values: dict[str, float | int]) -> None:  # noqa: B027 - optional: no-op by default
        """Stores nothing: the backend keeps no run summary apart from its metrics."""

    def _log_charts(self, charts: dict[str, dict[str, list[str]]]) -> None:  # noqa: B027 - optional: no-op
        """Stores nothing: the backend cannot draw several keys on one chart from the log alone."""

    @abstractmethod
    def _log_scalars(self, values: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def _log_images(self, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None: ...

    @abstractmethod
    def _log_table(self, key: str, columns: list[str], rows: list[list[Cell]], step: int) -> None: ...


# --------------------------------------------------------------------------- checks


def check_step(step: object) -> int:
    """An int >= 0 (numpy integers accepted; bools are not)."""
    message = f"Expected `step` to be an int >= 0, but got {step!r}."
    if not is_int(step):
        raise TypeError(message)
    if int(step) < 0:
        raise ValueError(message)
    return int(step)


def check_scalars(values: object) -> dict[str, float]:
    """A non-empty mapping of non-empty str keys to real numbers -> {key: float} (NaN/inf kept)."""
    if not isinstance(values, Mapping) or len(values) == 0:
        raise TypeError(f"Expected `values` to be a non-empty mapping of str keys to numbers, but got {values!r}.")
    checked: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"Expected the keys of `values` to be non-empty strings, but got {key!r}.")
        if not is_real(value):
            raise TypeError(f"Expected `values[{key!r}]` to be a real number (NaN allowed), but got {value!r}.")
        checked[key] = float(value)
    return checked


def check_summary(values: object) -> dict[str, float | int]:
    """As :func:`check_scalars`, but integers stay ``int`` (a step reads as ``12``, not ``12.0``)."""
    checked = check_scalars(values)
    assert isinstance(values, Mapping)
    return {key: int(values[key]) if is_int(values[key]) else value for key, value in checked.items()}


def check_config(config: object) -> dict[str, object]:
    """A non-empty mapping with non-empty str keys -> a dict (the values are the backend's business)."""
    if not isinstance(config, Mapping) or not config or not all(isinstance(k, str) and k for k in config):
        raise TypeError(f"Expected `config` to be a non-empty mapping with non-empty str keys, but got {config!r}.")
    return dict(config)


def check_charts(charts: object) -> dict[str, dict[str, list[str]]]:
    """{section: {title: [key, ...]}} with non-empty strings everywhere and at least one key per chart."""
    message = f"Expected `charts` to map section names to {{chart title: [scalar keys]}}, but got {charts!r}."
    if not isinstance(charts, Mapping):
        raise TypeError(message)
    checked: dict[str, dict[str, list[str]]] = {}
    for section, titled in charts.items():
        if not isinstance(section, str) or not section or not isinstance(titled, Mapping):
            raise TypeError(message)
        checked[section] = {}
        for title, keys in titled.items():
            if (
                not isinstance(title, str) or not title or isinstance(keys, (str, bytes))
                or not isinstance(keys, Sequence) or not keys or not all(isinstance(k, str) and k for k in keys)
            ):
                raise TypeError(message)
            checked[section][title] = list(keys)
    return checked


def check_key(key: object) -> str:
    """A '/'-separated name of non-empty parts other than '.' and '..' (it becomes a path for CSV)."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if any(part in ("", ".", "..") or "\\" in part for part in parts):
        raise ValueError(
            "Expected `key` to be a '/'-separated name of non-empty parts other than '.' and '..'"
            f" (no backslashes), like 'saliency_maps/train', but got {key!r}."
        )
    return str(key)


def check_images(images: object, captions: object) -> tuple[list[np.ndarray], list[str]]:
    """Non-empty (H, W, 3) uint8 arrays and as many str captions -> (contiguous arrays, captions)."""
    if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, Sequence) or len(images) == 0:
        raise TypeError(f"Expected `images` to be a non-empty sequence of numpy arrays, but got {images!r}.")
    pictures = []
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise TypeError(f"Expected `images[{i}]` to be a numpy array, but got {image!r}.")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                f"Expected `images[{i}]` to be a uint8 array of shape (H, W, 3) with H, W > 0,"
                f" but got dtype={image.dtype} and shape={image.shape}."
            )
        pictures.append(np.ascontiguousarray(image))
    if (
        isinstance(captions, (str, bytes))
        or not isinstance(captions, Sequence)
        or len(captions) != len(pictures)
        or not all(isinstance(caption, str) for caption in captions)
    ):
        raise TypeError(
            f"Expected `captions` to be a sequence of {len(pictures)} strings (one per image), but got {captions!r}."
        )
    return pictures, list(captions)


def _check_cell(cell: object, r: int, c: int) -> Cell:
    if isinstance(cell, str):
        return str(cell)
    if is_int(cell):
        return int(cell)
    if is_real(cell):
        return float(cell)
    raise TypeError(f"Expected `rows[{r}][{c}]` to be a str, int or float, but got {cell!r}.")


def check_table(columns: object, rows: object) -> tuple[list[str], list[list[Cell]]]:
    """Unique non-empty str column names and non-empty rows of matching length -> (names, cells).

    Cells become Python str/int/float (numpy scalars are converted); each column holds only
    strings or only numbers (ints and floats may mix, NaN included), so every backend can type it.
    """
    if (
        isinstance(columns, (str, bytes))
        or not isinstance(columns, Sequence)
        or len(columns) == 0
        or not all(isinstance(name, str) and name for name in columns)
        or len(set(columns)) != len(columns)
    ):
        raise TypeError(
            f"Expected `columns` to be a non-empty sequence of unique non-empty strings, but got {columns!r}."
        )
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise TypeError(f"Expected `rows` to be a non-empty sequence of rows, but got {rows!r}.")
    cells: list[list[Cell]] = []
    for r, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != len(columns):
            raise ValueError(f"Expected `rows[{r}]` to be a sequence of {len(columns)} cells, but got {row!r}.")
        cells.append([_check_cell(cell, r, c) for c, cell in enumerate(row)])
    for c, name in enumerate(columns):
        column = [row[c] for row in cells]
        if len({isinstance(cell, str) for cell in column}) != 1:
            raise ValueError(
                f"Expected column {name!r} of `rows` to hold only strings or only numbers, but got {column!r}."
            )
    return list(columns), cells
