"""The VOC fine-tuning example end to end on a very small synthetic set, read back from W&B."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_monitor.monitor.loggers import offline_history, read_offline_run


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_offline_default_runs_end_to_end(wandb_env, capsys) -> None:
    from examples.voc_finetune import main

    summary, module, monitor, _ = main([
        "--data-dir", str(wandb_env / "voc"), "--synthetic-sizes", "12", "8", "16", "--image-size", "32",
        "--epochs", "2", "--every-n-epochs", "1", "--batch-size", "8",
        "--num-train-probes", "3", "--num-val-probes", "3",
        "--wandb-dir", str(wandb_env / "runs"), "--picture", str(wandb_env / "picture.png"),
        "--filmstrip", str(wandb_env / "filmstrip.png"),
    ])
    out = capsys.readouterr().out
    assert [row["epoch"] for row in summary.rows] == ["start", "1", "2"]
    assert monitor.state_dict()["evaluations"] == 3 and isinstance(module.model, torch.nn.Module)
    assert "Per evaluation" in out and "wandb leet " in out and "wandb sync " in out

    (run_dir,) = (wandb_env / "runs" / "wandb").glob("offline-run-*")
    history = offline_history(read_offline_run(run_dir))
    saliency = [item for item in history if "saliency_run/time_s" in item]
    assert [item["trainer/global_step"] for item in saliency] == [0, 3, 6]  # 20 trainval images / batch 8
    last = saliency[-1]
    gap = "Saliency/gap_NGsel"
    assert -2 <= last[gap] <= 2 and 0 <= last["layer_val/pg_NG_all"] <= 1
    assert 1e-4 <= last["saliency_run/meta_lr"] <= 0.1
    # the printed table reads the same numbers from the callback metrics
    row = summary.rows[-1]
    for column, key in (("gap", gap), ("gap stderr", "stderr/Saliency_gap_NGsel"),
                        ("meta corr train", "Saliency/meta_train_NGsel"), ("meta corr val", "Saliency/meta_val_NGsel"),
                        ("class sens. val", "Saliency/sensitivity_NGsel"), ("pointing val", "layer_val/pg_NGsel_all")):
        assert row[column] == pytest.approx(last[key], nan_ok=True), column
    assert all(math.isfinite(row[key]) for key in ("meta corr val", "class sens. val"))
    assert any("val/mAP" in item for item in history) and any("val_AP/dog" in item for item in history)
    pictures = [item for item in history if "saliency_maps/val._type" in item]
    assert len(pictures) == 3
    for name in pictures[-1]["saliency_maps/val.filenames"]:
        picture = np.asarray(Image.open(run_dir / "files" / name).convert("RGB"))
        assert picture.std() > 20
    tables = [item for item in history if "saliency_probes/train._type" in item]
    table = json.loads((run_dir / "files" / tables[-1]["saliency_probes/train.path"]).read_text())
    assert len(table["data"]) == 3 and all(row[2] in open_classes() for row in table["data"])
    assert np.asarray(Image.open(wandb_env / "picture.png")).std() > 20
    filmstrip = np.asarray(Image.open(wandb_env / "filmstrip.png"))
    assert np.array_equal(filmstrip, monitor.last_filmstrips["val"]) and filmstrip.std() > 20
    assert [item for item in history if "saliency_evolution/val._type" in item]



@pytest.mark.filterwarnings("ignore::UserWarning")
def test_relevance_methods_on_the_example_resnet(wandb_env, capsys) -> None:
    """LRP with the ResNet canonizer on the example's LightningModule (a deep copy per call), meta included."""
    from examples.voc_finetune import main

    summary, _, monitor, _ = main([
        "--data-dir", str(wandb_env / "voc"), "--synthetic-sizes", "12", "8", "16", "--image-size", "32",
        "--epochs", "1", "--every-n-epochs", "1", "--batch-size", "8",
        "--num-train-probes", "2", "--num-val-probes", "2",
        "--methods", "salient_relevance", "lrp", "--wandb-dir", str(wandb_env / "runs"),
        "--picture", str(wandb_env / "picture.png"), "--filmstrip", str(wandb_env / "filmstrip.png"),
    ])
    assert "Per evaluation (saliency: salient_relevance, combined map)" in capsys.readouterr().out
    last = summary.rows[-1]
    assert all(math.isfinite(last[key]) for key in ("meta corr train", "meta corr val", "class sens. val"))
    assert monitor.state_dict()["evaluations"] == 2

def open_classes() -> set[str]:
    from examples.voc_data import VOC_CLASSES

    return set(VOC_CLASSES)
