"""examples/dashboard_layout.py: panels counted per section as W&B lays them out."""

from __future__ import annotations

import math

import pytest

from examples.dashboard_layout import main, panel_sections


def test_sections_charts_pictures_and_tables_are_told_apart() -> None:
    history = [
        {"_step": 0, "_runtime": 1.5, "trainer/global_step": 0, "Saliency/gap_NGsel": 0.1,
         "layer_val/cs_NGsel_model.layer4": 0.3, "epoch": 0,
         "saliency_maps/val._type": "images/separated", "saliency_maps/val.count": 2,
         "saliency_maps/val.width": 64, "saliency_probes/val._type": "table-file",
         "saliency_probes/val.ncols": 9, "saliency_probes/val.nrows": 16, "flag": True},
        {"_step": 1, "Saliency/gap_NGsel": 0.2, "Saliency/meta_val_NGsel": math.nan, "val/loss": 0.5},
    ]
    sections = panel_sections(history)
    assert set(sections) == {"trainer", "Saliency", "layer_val", "epoch", "saliency_maps", "saliency_probes", "val"}
    assert sections["Saliency"].charts == {"Saliency/gap_NGsel", "Saliency/meta_val_NGsel"}  # NaN: a chart too
    assert sections["layer_val"].charts == {"layer_val/cs_NGsel_model.layer4"}  # a dot in a key is not an attribute
    assert sections["saliency_maps"].media == {"saliency_maps/val"} and not sections["saliency_maps"].charts
    assert sections["saliency_probes"].tables == {"saliency_probes/val"} and not sections["saliency_probes"].charts
    assert "flag" not in sections  # booleans are not charts


def test_main_rejects_a_missing_run(tmp_path) -> None:
    with pytest.raises(ValueError, match="Expected `run_dir` to be an existing W&B run directory"):
        main([str(tmp_path / "missing")])
