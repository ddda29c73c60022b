"""The names the monitor logs under: one value type, one formatting function.

A number is named by a :class:`MetricKey` (split, metric, method, layer); :func:`format_key`
is the only place that turns one into the string a logger sees, and nothing parses those
strings back. The layout (W&B and TensorBoard group panels by the text before the first ``/``):

====================================================  ==========================================
key                                                   value
====================================================  ==========================================
``saliency/{split}/{metric}/{method}/{layer}``        mean over the probes of one split
``saliency/{split}/{metric}_stderr/{method}/{layer}``  its standard error
``saliency/meta_correlation_gap/{method}/{layer}``    train − val meta correlation
``saliency/meta_correlation_gap_stderr/...``          its standard error
``saliency/{split}/prediction_difference``            forward smoothing's change of predictions
``saliency/time_s``, ``saliency/meta_lr``,            per evaluation: seconds, the meta step,
``saliency/errors``                                   faults caught so far
``saliency_maps/{split}``                             pictures
``saliency_probes/{split}``                           the per-probe table
====================================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PREFIX = "saliency"
SPLITS = ("train", "val")
COMBINED = "combined"
"""The layer name of the layer-combined map."""
GAP = "meta_correlation_gap"
"""The metric name of train − val meta correlation (a key with no split)."""


@dataclass(frozen=True)
class MetricKey:
    """What one logged number is: a ``metric`` of a ``method``'s maps at a ``layer`` on a ``split``.

    ``split`` is None for numbers about both splits (the gap) or about the run (``time_s``);
    ``method`` and ``layer`` are None for numbers about no method (``prediction_difference``).
    """

    split: str | None
    metric: str
    method: str | None = None
    layer: str | None = None
    stderr: bool = False
    """The standard error of the mean the same key without ``stderr`` names."""

    def on(self, split: str | None) -> MetricKey:
        """The same number for ``split``."""
        return replace(self, split=split)

    def error(self) -> MetricKey:
        """The key of this mean's standard error."""
        return replace(self, stderr=True)


def format_key(key: MetricKey) -> str:
    """The string a logger receives for ``key`` (see the module docstring for the layout)."""
    metric = f"{key.metric}_stderr" if key.stderr else key.metric
    parts = [PREFIX, key.split, metric, key.method, key.layer]
    return "/".join(part for part in parts if part is not None)


def is_scalar_key(name: object) -> bool:
    """Whether ``name`` (e.g. an ``EarlyStopping``'s ``monitor``) names one of the monitor's scalars."""
    return isinstance(name, str) and name.startswith(f"{PREFIX}/")


def column_name(key: MetricKey) -> str:
    """A per-probe table's column for ``key`` (its split is the table's): ``metric/method/layer``."""
    return "/".join(part for part in (key.metric, key.method, key.layer) if part is not None)


def pictures_key(split: str) -> str:
    return f"{PREFIX}_maps/{split}"


def table_key(split: str) -> str:
    return f"{PREFIX}_probes/{split}"
