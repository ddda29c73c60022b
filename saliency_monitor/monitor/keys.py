"""The names the monitor logs under: one value type, one layout.

A number is named by a :class:`MetricKey` (split, metric, method, layer); a :class:`KeyLayout`,
settled from the plan, is the only place that turns one into the string a logger sees, and
nothing parses those strings back. W&B and TensorBoard make one panel section per text before
the first ``/``, and ``wandb leet`` titles a chart with its key cut to ~30 characters, sorting
keys byte-wise (capitals first). So every key has exactly one ``/`` and only letters, digits and
``_``; the headline keys fit in 30 characters; the section names sort the headline first.

=============================================  ================================================
key                                            value (means over the probes of a split)
=============================================  ================================================
``Saliency/gap_{M}``                           train − val meta correlation of the combined map:
                                               the overfitting signal
``Saliency/gap_loss``                          val − train mean label-class loss, beside it
``Saliency/meta_train_{M}``, ``meta_val_{M}``  its two sides (meta correlation, combined map)
``Saliency/sensitivity_{M}``                   class sensitivity of the combined map (val
                                               probes; train without val data)
``Saliency/stability_{M}``                     ρ of the label map now vs the last evaluation (val)
``layer_{split}/{code}_{M}_{L}``               every metric of every layer (``L`` = ``all``:
                                               the combined map); codes in :data:`CODES`
                                               (``start_{M}_all``: ρ of the label map now vs
                                               at fit start)
``layer_{split}/loss``                         the probes' mean label-class loss (the meta
                                               step's own loss)
``layer_gap/gap_{M}_{L}``                      train − val meta correlation per layer
``layer_{split}/lossr_{M}_all``                ρ across probes of the loss and 1 − meta correlation
``stderr/{key with / as _}``                   the standard error of each mean above
``saliency_run/{name}``                        ``time_s``, ``meta_lr``, ``errors``,
                                               ``prediction_difference_{split}``
``saliency_maps/{split}``                      pictures; ``saliency_evolution/{split}`` the
                                               filmstrip; ``saliency_probes/{split}`` the table
=============================================  ================================================

``M`` is the method's short label (:func:`method_label`: ``NGsel`` for norm_grad_selective, ``NG``
for norm_grad, ...), ``L`` the layer's name without the common dotted prefix of the monitored
layers, dots as ``_`` (``model.layer4`` -> ``layer4``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..engine.methods import Method, get_method

PREFIX = "saliency"
HEADLINE = "Saliency"
"""The headline section (a capital sorts it before lowercase sections in ``wandb leet``)."""
SPLITS = ("train", "val")
COMBINED = "combined"
"""The layer name of the layer-combined map."""
GAP = "meta_correlation_gap"
"""The metric name of train − val meta correlation (a key with no split)."""
LOSS = "loss"
"""The probes' mean label-class loss (a key with no method)."""
LOSS_GAP = "loss_gap"
"""val − train mean label-class loss (no split, no method): the loss's overfitting signal."""
LOSS_AGREEMENT = "loss_rank_correlation"
"""Spearman ρ across a split's probes between the label-class loss and 1 − meta correlation."""
ALL_LAYERS = "all"
"""The combined map's layer label in keys."""
STDERR = "stderr"
RUN = f"{PREFIX}_run"

CODES = {
    "class_sensitivity": "cs",
    "meta_class_sensitivity": "mcs",
    "meta_correlation": "mc",
    "drift": "drift",
    "drift_from_start": "start",
    "total_variation": "tv",
    "pointing_game": "pg",
    "relevance_ssim": "ssim",
    GAP: "gap",
    LOSS_AGREEMENT: "lossr",
}
"""The breakdown's short metric codes (chart titles stay distinguishable in leet's width)."""

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


def method_label(method: str | Method) -> str:
    """A method's short label in keys (:attr:`~saliency_monitor.engine.methods.Method.label`)."""
    return get_method(method).label


def short_names(layers: Sequence[str]) -> list[str]:
    """Layer names without their common dotted prefix (``model.layer1`` -> ``layer1``)."""
    parts = [name.split(".") for name in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def layer_labels(layers: Sequence[str]) -> list[str]:
    """:func:`short_names` as key labels: anything but letters, digits and ``_`` as ``_``."""
    return [_sanitize(name) for name in short_names(layers)]


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


@dataclass(frozen=True)
class KeyLayout:
    """The logged names of one fit (settled from its layers, methods and splits)."""

    layers: dict[str, str]
    """Layer name (``"combined"`` included) -> its label in keys."""
    headline_split: str
    """The split the headline's sensitivity, since-start and stability are read on."""

    @classmethod
    def of(cls, layers: Sequence[str], splits: Sequence[str]) -> KeyLayout:
        """Layer labels without the common prefix; the full names (dots as ``_``) when two
        labels, or a label and ``all``, would coincide; an error when those coincide too."""
        for labels in (layer_labels(layers), [_sanitize(name) for name in layers]):
            if len({*labels, ALL_LAYERS}) == len(labels) + 1:
                return cls({**dict(zip(layers, labels)), COMBINED: ALL_LAYERS}, "val" if "val" in splits else "train")
        raise ValueError(
            f"Expected `layers` whose names stay distinct in logged keys (letters, digits and _ only, not "
            f"{ALL_LAYERS!r}), but got {list(layers)}: give one of the clashing layers another name or choose another."
        )

    def name(self, key: MetricKey) -> str:
        """The string a logger receives for ``key`` (see the module docstring for the layout)."""
        if key.stderr:
            return f"{STDERR}/" + self.name(replace(key, stderr=False)).replace("/", "_")
        headline = self.headline(key)
        if key.method is None:
            if headline is not None:
                return f"{HEADLINE}/{headline}"
            if key.metric == LOSS and key.split is not None:
                return f"layer_{key.split}/{LOSS}"
            suffix = "" if key.split is None else f"_{key.split}"
            return f"{RUN}/{key.metric}{suffix}"
        if headline is not None:
            return f"{HEADLINE}/{headline}_{method_label(key.method)}"
        section = "gap" if key.split is None else key.split
        layer = self.layers.get(str(key.layer), _sanitize(str(key.layer)))
        return f"layer_{section}/{CODES[key.metric]}_{method_label(key.method)}_{layer}"

    def headline(self, key: MetricKey) -> str | None:
        """The headline title of ``key`` (combined map only, and the loss), or None when it belongs
        to the breakdown."""
        if key.stderr:
            return None
        if key.metric == LOSS_GAP and key.split is None:
            return "gap_loss"  # sorts right after the meta-correlation gaps
        if key.layer != COMBINED:
            return None
        if key.metric == GAP and key.split is None:
            return "gap"
        if key.metric == "meta_correlation" and key.split is not None:
            return f"meta_{key.split}"
        if key.split == self.headline_split:
            return {"class_sensitivity": "sensitivity", "drift": "stability"}.get(key.metric)
        return None


def is_scalar_key(name: object) -> bool:
    """Whether ``name`` (e.g. an ``EarlyStopping``'s ``monitor``) names one of the monitor's scalars."""
    sections = (HEADLINE, "layer_train", "layer_val", "layer_gap", STDERR, RUN)
    return isinstance(name, str) and name.split("/", 1)[0] in sections and "/" in name


def column_name(key: MetricKey) -> str:
    """A per-probe table's column for ``key`` (its split is the table's): ``metric/method/layer``."""
    return "/".join(part for part in (key.metric, key.method, key.layer) if part is not None)


def pictures_key(split: str) -> str:
    return f"{PREFIX}_maps/{split}"


def evolution_key(split: str) -> str:
    """The filmstrip: each logged probe's combined map at every evaluation."""
    return f"{PREFIX}_evolution/{split}"


def table_key(split: str) -> str:
    return f"{PREFIX}_probes/{split}"
