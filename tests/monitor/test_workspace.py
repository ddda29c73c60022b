"""The curated views: the W&B workspace (built offline, never saved) and the overlay charts."""

from __future__ import annotations

import re
import socket
import sys

import pytest

from saliency_monitor.engine.methods import MONITOR_METHODS
from saliency_monitor.monitor.keys import (
    COMBINED,
    GAP,
    SPLITS,
    KeyLayout,
    MetricKey,
    evolution_key,
    method_label,
    pictures_key,
)
from saliency_monitor.monitor.loggers.wandb import STEP_METRIC
from saliency_monitor.monitor.workspace import OVERLAY_SECTION, SECTIONS, overlay_charts, saliency_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style validators inside
LAYERS = ("model.layer3", "model.layer4")


def name(layout: KeyLayout, metric: str, method: str, split: str | None, layer: str = COMBINED) -> str:
    return layout.name(MetricKey(split, metric, method, layer))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the workspace touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_workspace_has_the_four_sections_in_order(offline: None) -> None:
    workspace = saliency_workspace("team", "voc", layers=LAYERS)
    assert (workspace.entity, workspace.project, workspace.name) == ("team", "voc", "Saliency monitor")
    assert [section.name for section in workspace.sections] == list(SECTIONS)
    assert [section.pinned for section in workspace.sections] == [True, False, False, False]
    assert all(section.is_open for section in workspace.sections)
    assert workspace.settings.x_axis == STEP_METRIC and workspace.settings.group_by_prefix == "first"
    assert workspace.auto_generate_panels is False  # only these panels


def test_overfitting_puts_train_and_val_meta_correlation_on_one_chart(offline: None) -> None:
    layout = KeyLayout.of(LAYERS, SPLITS)
    overfitting = saliency_workspace("team", "voc", layers=LAYERS).sections[0]
    plots = [(panel.title, panel.x, panel.y) for panel in overfitting.panels]
    expected = [  # the loss's own overfitting signal first, then each method's gap
        ("val − train label-class loss", STEP_METRIC, ["Saliency/gap_loss"]),
        ("label-class loss (train, val)", STEP_METRIC, ["layer_train/loss", "layer_val/loss"]),
    ]
    for method in MONITOR_METHODS:
        label = method_label(method)
        expected += [
            (f"{label}: train − val meta correlation", STEP_METRIC, [name(layout, GAP, method, None)]),
            (f"{label}: meta correlation, train vs val", STEP_METRIC,
             [name(layout, "meta_correlation", method, split) for split in SPLITS]),
            (f"{label}: gap per layer", STEP_METRIC,
             [name(layout, GAP, method, None, layer) for layer in (*LAYERS, COMBINED)]),
        ]
    assert plots == expected
    assert all(len(key) <= 30 for _, _, keys in plots[:4] for key in keys)


def test_the_layers_may_come_from_the_run_config(offline: None) -> None:
    """The config's ``layers`` (label -> name) includes the combined map: ignored."""
    from_config = list({"layer3": LAYERS[0], "layer4": LAYERS[1], "all": COMBINED}.values())
    def charted(layers: list[str] | tuple[str, ...]) -> list[list[str]]:
        return [panel.y for section in saliency_workspace("team", "voc", layers=layers).sections
                for panel in section.panels if hasattr(panel, "y")]

    assert charted(from_config) == charted(LAYERS)


def test_class_sensitivity_evolution_and_maps(offline: None) -> None:
    layout = KeyLayout.of(LAYERS, SPLITS)
    _, sensitivity, evolution, maps = saliency_workspace("team", "voc", layers=LAYERS).sections
    assert [panel.y for panel in sensitivity.panels] == [
        keys for method in MONITOR_METHODS for keys in (
            [name(layout, "class_sensitivity", method, "val")],
            [name(layout, "class_sensitivity", method, "val", layer) for layer in (*LAYERS, COMBINED)],
        )
    ]
    *lines, filmstrip = evolution.panels
    assert [line.y for line in lines] == [
        [name(layout, "drift", method, "val"), name(layout, "drift_from_start", method, "val")]
        for method in MONITOR_METHODS
    ]
    assert filmstrip.media_keys == [evolution_key(split) for split in SPLITS]
    assert [panel.media_keys for panel in maps.panels] == [[pictures_key(split) for split in SPLITS]]


def test_without_layers_or_val_the_workspace_keeps_what_applies(offline: None) -> None:
    layout = KeyLayout.of([], ("train",))
    workspace = saliency_workspace("team", "voc", methods=MONITOR_METHODS[:1], splits=("train",))
    assert [section.name for section in workspace.sections] == list(SECTIONS[1:])  # no gap without val
    sensitivity = workspace.sections[0].panels
    assert [panel.y for panel in sensitivity] == [[name(layout, "class_sensitivity", MONITOR_METHODS[0], "train")]]
    assert workspace.sections[-1].panels[0].media_keys == [pictures_key("train")]


def test_the_workspace_needs_wandb_workspaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import fails
    message = (
        "saliency_workspace needs the `wandb-workspaces` package: pip install wandb-workspaces "
        "(or saliency-monitor[wandb])."
    )
    with pytest.raises(ImportError, match=re.escape(message)):
        saliency_workspace("team", "voc")


def test_overlay_charts_pair_train_and_val_meta_correlation() -> None:
    layout = KeyLayout.of(LAYERS, SPLITS)
    charts = overlay_charts(layout, MONITOR_METHODS, SPLITS, meta=True)
    assert charts == {OVERLAY_SECTION: {
        f"{method_label(m)}: meta correlation, train vs val": [name(layout, "meta_correlation", m, s) for s in SPLITS]
        for m in MONITOR_METHODS
    }}
    assert overlay_charts(layout, MONITOR_METHODS, SPLITS, meta=False) == {}
    assert overlay_charts(layout, MONITOR_METHODS, ("train",), meta=True) == {}
