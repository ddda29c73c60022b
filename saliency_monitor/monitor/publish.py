"""Sending an evaluation's numbers, pictures and tables to the trainer and every logger; the run's
configuration, multi-key charts and summary to every logger."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import OPTION_NAMES
from .keys import COMBINED, GAP, KeyLayout, MetricKey, evolution_key, method_label, pictures_key, table_key
from .loggers import SaliencyLogger, adapt_loggers, is_placeholder
from .trainer import WarnOnce
from .workspace import overlay_charts

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from .config import MonitorConfig
    from .state import MonitorState

Pictures = dict[str, list[tuple[np.ndarray, str]]]
"""Per split, (uint8 (H, W, 3) picture, caption) pairs."""
Tables = dict[str, tuple[list[str], list[list[object]]]]
"""Per split, (columns, rows) of the per-probe table."""


def publish(
    trainer: pl.Trainer, layout: KeyLayout, scalars: dict[MetricKey, float], pictures: Pictures, tables: Tables,
    warn: WarnOnce,
) -> None:
    """Scalars (named by ``layout``) into ``trainer.callback_metrics`` (every rank), everything to
    the loggers (rank 0)."""
    named = {layout.name(key): value for key, value in scalars.items()}
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in named.items()})
    if not trainer.is_global_zero:
        return
    adapters = adapt_loggers([logger for logger in trainer.loggers if not is_placeholder(logger)])
    if not adapters and not getattr(trainer, "fast_dev_run", False):
        warn(trainer, "no-logger", "SaliencyMonitor: the trainer has no logger; saliency metrics are only stored in "
             "trainer.callback_metrics.")
    for adapter in adapters:
        _send(trainer, adapter, named, pictures, tables, warn)


def _send(
    trainer: pl.Trainer, adapter: SaliencyLogger, scalars: dict[str, float], pictures: Pictures, tables: Tables,
    warn: WarnOnce,
) -> None:
    step = trainer.global_step
    adapter.log_scalars(scalars, step)
    if not pictures and not tables:
        return
    if not adapter.supports_images:
        warn(trainer, f"images-{adapter.name}", (
            f"SaliencyMonitor: logger {adapter.name} takes scalars only; saliency pictures and tables are not "
            "sent to it."
        ))
        return
    for split, grids in pictures.items():
        adapter.log_images(pictures_key(split), [g for g, _ in grids], [c for _, c in grids], step)
    for split, (columns, rows) in tables.items():
        adapter.log_table(table_key(split), columns, rows, step)


def publish_filmstrips(trainer: pl.Trainer, filmstrips: dict[str, tuple[np.ndarray, str]], warn: WarnOnce) -> None:
    """Each split's (filmstrip, caption) to every logger that takes pictures, under
    ``saliency_evolution/{split}`` (rank 0; a scalar-only logger is warned about once, as for the pictures)."""
    if not filmstrips or not trainer.is_global_zero:
        return
    for adapter in adapt_loggers([logger for logger in trainer.loggers if not is_placeholder(logger)]):
        if not adapter.supports_images:
            warn(trainer, f"images-{adapter.name}", (
                f"SaliencyMonitor: logger {adapter.name} takes scalars only; saliency pictures and tables are not "
                "sent to it."
            ))
            continue
        for split, (strip, caption) in filmstrips.items():
            adapter.log_images(evolution_key(split), [strip], [caption], trainer.global_step)


# --------------------------------------------------------------------------- the run: config, charts, summary

CONFIG_KEY = "saliency_monitor"
"""The run config's one top-level key the monitor writes under."""


def _adapters(trainer: pl.Trainer) -> list[SaliencyLogger]:
    return adapt_loggers([logger for logger in trainer.loggers if not is_placeholder(logger)])


def publish_run(trainer: pl.Trainer, config: MonitorConfig, state: MonitorState) -> None:
    """Once the plan is settled (rank 0): ``{"saliency_monitor": run_config(...)}`` to every logger's
    config and the charts of :func:`~.workspace.overlay_charts` to every logger."""
    plan = state.plan
    if plan is None or not trainer.is_global_zero:
        return
    layout = KeyLayout.of(plan.layers, tuple(state.probes))
    charts = overlay_charts(layout, plan.methods, tuple(state.probes), plan.meta_lr is not None)
    for adapter in _adapters(trainer):
        adapter.log_config({CONFIG_KEY: run_config(config, state, layout)})
        if charts:
            adapter.log_charts(charts)


def run_config(config: MonitorConfig, state: MonitorState, layout: KeyLayout) -> dict[str, object]:
    """The options as given (callables and objects as qualified names), what fit start settled
    (task, meta step and its batching, layers and methods keyed by their labels in the keys) and the probes."""
    plan = state.plan
    assert plan is not None, "the plan is settled at fit start"
    probes = {
        split: {
            "identities": list(state.identities[split]),
            "classes": ["+".join(state.class_name(c) for c in classes) for classes in batch.classes],
        }
        for split, batch in state.probes.items()
    }
    return {
        "options": {name: _plain(getattr(config, name)) for name in OPTION_NAMES},
        "task": plan.task,
        "meta_lr": plan.meta_lr,
        "meta_batching": plan.saliency.meta_batching,
        "layers": {label: layer for layer, label in layout.layers.items()},
        "methods": {method_label(method): method.name for method in plan.methods},
        "probes": probes,
    }


def _plain(value: object) -> object:
    """A config value as plain data: sequences as lists, callables and other objects as names."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    named = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{getattr(named, '__module__', '?')}.{getattr(named, '__qualname__', repr(named))}"


def publish_largest_gap(
    trainer: pl.Trainer, layout: KeyLayout, largest: dict[str, tuple[float, int]], scalars: dict[MetricKey, float]
) -> None:
    """Track each method's largest combined-map gap and its step in ``largest`` (every rank); when
    one grows, send ``{gap key}_max`` and ``{gap key}_max_step`` as run summary (rank 0)."""
    step, changed = trainer.global_step, dict[str, float]()
    for key, value in scalars.items():
        headline_gap = key.metric == GAP and key.split is None and key.layer == COMBINED and not key.stderr
        if not headline_gap or key.method is None or not math.isfinite(value):
            continue
        if key.method not in largest or value > largest[key.method][0]:
            largest[key.method] = (value, step)
            name = layout.name(key)
            changed |= {f"{name}_max": value, f"{name}_max_step": step}
    if changed and trainer.is_global_zero:
        for adapter in _adapters(trainer):
            adapter.log_summary(changed)
