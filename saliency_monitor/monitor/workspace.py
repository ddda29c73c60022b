"""Curated views of the logged keys: charts that draw several keys together, which no backend
makes on its own (W&B and TensorBoard draw one key per automatic chart).

- :func:`overlay_charts`: per method, meta correlation on the train and the val probes on one
  chart. The monitor hands it to every logger at fit start; TensorBoard writes it as its
  Custom Scalars layout (:class:`~saliency_monitor.monitor.loggers.TensorBoardAdapter`).
- :func:`saliency_workspace`: a W&B workspace (``wandb_workspaces.workspaces.Workspace``) with
  the sections a person reads while training: Overfitting (per method the gap, and train and
  val meta correlation together), Class sensitivity, Evolution (stability, since start, the
  filmstrip), Maps. Building it needs no network; ``workspace.save()`` uploads it (once per
  project, with a real entity)::

      from saliency_monitor.monitor.workspace import saliency_workspace
      saliency_workspace("my-team", "voc", layers=["layer3", "layer4"]).save()

Every key comes from :class:`~saliency_monitor.monitor.keys.KeyLayout`, so the views name exactly
what the monitor logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..engine.methods import MONITOR_METHODS, Method, get_method
from .keys import (
    COMBINED,
    GAP,
    LOSS,
    LOSS_GAP,
    SPLITS,
    KeyLayout,
    MetricKey,
    evolution_key,
    method_label,
    pictures_key,
)
from .loggers.wandb import STEP_METRIC

if TYPE_CHECKING:
    from wandb_workspaces.workspaces import Workspace

__all__ = ["OVERLAY_SECTION", "overlay_charts", "saliency_workspace"]

OVERLAY_SECTION = "Saliency"
"""The section (TensorBoard: Custom Scalars category) of :func:`overlay_charts`."""
SECTIONS = ("Overfitting", "Class sensitivity", "Evolution", "Maps")
"""The sections of :func:`saliency_workspace`, top to bottom."""


def _combined(layout: KeyLayout, metric: str, method: str, split: str | None) -> str:
    return layout.name(MetricKey(split, metric, method, COMBINED))


def _meta_title(method: str) -> str:
    return f"{method_label(method)}: meta correlation, train vs val"


def overlay_charts(
    layout: KeyLayout, methods: Sequence[str | Method], splits: Sequence[str], meta: bool
) -> dict[str, dict[str, list[str]]]:
    """``{"Saliency": {title: [meta_train key, meta_val key]}}``, one chart per method; empty
    without meta maps or without both splits (nothing to put together)."""
    if not meta or not set(SPLITS) <= set(splits):
        return {}
    names = [get_method(method).name for method in methods]
    charts = {_meta_title(m): [_combined(layout, "meta_correlation", m, split) for split in SPLITS] for m in names}
    return {OVERLAY_SECTION: charts}


def saliency_workspace(
    entity: str, project: str, *, methods: Sequence[str | Method] = MONITOR_METHODS,
    layers: Sequence[str] | None = None, splits: Sequence[str] = SPLITS, name: str = "Saliency monitor",
) -> Workspace:
    """A W&B workspace of the monitor's keys (see the module docstring); nothing is sent.

    ``methods``, ``layers`` and ``splits`` are the monitor's (its ``methods``; the layer names it
    settled, e.g. the values of the run config's ``saliency_monitor/layers``, where ``"combined"``
    is ignored; the splits with probes). With ``layers``, Overfitting and Class sensitivity get
    one chart per method with every layer's line. Needs the ``wandb-workspaces`` package
    (``pip install saliency-monitor[wandb]``).
    """
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as error:
        raise ImportError(
            "saliency_workspace needs the `wandb-workspaces` package: pip install wandb-workspaces "
            "(or saliency-monitor[wandb])."
        ) from error
    monitored = [layer for layer in layers or () if layer != COMBINED]
    layout = KeyLayout.of(monitored, splits)
    names = [get_method(method).name for method in methods]
    panels = _panels(wr, layout, names, monitored, splits)
    sections = [
        ws.Section(name=title, panels=panels[title], is_open=True, pinned=title == SECTIONS[0])
        for title in SECTIONS if panels[title]
    ]
    settings = ws.WorkspaceSettings(x_axis=STEP_METRIC, group_by_prefix="first")
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections, settings=settings)


def _panels(
    wr: Any, layout: KeyLayout, methods: list[str], layers: list[str], splits: Sequence[str]
) -> dict[str, list[Any]]:
    """Each section's panels (``wr``: ``wandb_workspaces.reports.v2``)."""

    def line(title: str, keys: list[str]) -> Any:
        return wr.LinePlot(title=title, x=STEP_METRIC, y=keys)

    both = set(SPLITS) <= set(splits)
    at, split = [*layers, COMBINED], layout.headline_split
    panels: dict[str, list[Any]] = {title: [] for title in SECTIONS}
    if both:  # the loss's own signal first, then each method's gap beside it
        panels["Overfitting"].append(line("val − train label-class loss", [layout.name(MetricKey(None, LOSS_GAP))]))
        panels["Overfitting"].append(line("label-class loss (train, val)",
                                          [layout.name(MetricKey(s, LOSS)) for s in SPLITS]))
    for m in methods:
        label = method_label(m)
        if both:
            panels["Overfitting"] += [
                line(f"{label}: train − val meta correlation", [_combined(layout, GAP, m, None)]),
                line(_meta_title(m), [_combined(layout, "meta_correlation", m, s) for s in SPLITS]),
            ]
            if layers:
                keys = [layout.name(MetricKey(None, GAP, m, layer)) for layer in at]
                panels["Overfitting"].append(line(f"{label}: gap per layer", keys))
        panels["Class sensitivity"].append(
            line(f"{label}: class sensitivity ({split})", [_combined(layout, "class_sensitivity", m, split)])
        )
        if layers:
            keys = [layout.name(MetricKey(split, "class_sensitivity", m, layer)) for layer in at]
            panels["Class sensitivity"].append(line(f"{label}: class sensitivity per layer ({split})", keys))
        panels["Evolution"].append(line(f"{label}: map vs last evaluation and vs start ({split})", [
            _combined(layout, "drift", m, split), _combined(layout, "drift_from_start", m, split)
        ]))
    panels["Evolution"].append(wr.MediaBrowser(title="filmstrip", media_keys=[evolution_key(s) for s in splits]))
    panels["Maps"].append(wr.MediaBrowser(title="maps", media_keys=[pictures_key(s) for s in splits]))
    return panels
