"""SaliencyMonitor in tiny real fits: schedule, logged keys and values, state, outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor import SaliencyMonitorWarning
from saliency_monitor.monitor.evaluation import METRICS
from tests._fits import (
    ArmFaults,
    Classifier,
    InjectedFault,
    SpyLogger,
    is_saliency_key,
    multiclass_loaders,
    multilabel_loaders,
    trainer,
)

METHODS = ("norm_grad_selective", "norm_grad")
LABELS = ("NGsel", "NG")
"""The methods' labels in keys."""
LAYERS = ("stem", "stage1", "stage2", "all")
"""The default layers' labels in keys (net.stem, net.stage1, net.stage2 and the combined map)."""
pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")
START = "drift_from_start" in METRICS
"""Whether the evaluation computes drift from the fit start (its keys are expected only then)."""
CODES = {"class_sensitivity": "cs", "meta_class_sensitivity": "mcs", "meta_correlation": "mc", "drift": "drift",
         "drift_from_start": "start", "total_variation": "tv", "pointing_game": "pg"}
HEADLINE_TITLES = {"meta_train": "mc", "meta_val": "mc", "sensitivity": "cs", "stability": "drift", "gap": "gap",
                   "gap_loss": "lossgap"}
"""The headline's titles and the breakdown code of the metric each shows."""
CORRELATIONS = ("cs", "mcs", "mc", "drift", "start", "lossr")


def expected_keys(splits=("train", "val"), drift=True, pointing=False, meta=True, layers=LAYERS) -> set[str]:
    """The scalar keys a fit logs: the headline (combined map; sensitivity, since-start and stability on
    val, on train without val data) and the breakdown ``layer_{split}/{code}_{M}_{L}``, each with its
    ``stderr/`` twin, and the run numbers."""
    metrics = ["class_sensitivity", "total_variation"]
    metrics += ["meta_class_sensitivity", "meta_correlation"] if meta else []
    metrics += ["drift"] if drift else []
    metrics += ["drift_from_start"] if drift and START else []
    metrics += ["pointing_game"] if pointing else []
    headline_split = "val" if "val" in splits else "train"
    keys = {"saliency_run/time_s", "saliency_run/errors"} | ({"saliency_run/meta_lr"} if meta else set())
    for label in LABELS:
        for layer in layers:
            for split in splits:
                for metric in metrics:
                    if layer == "all" and metric == "meta_correlation":
                        keys |= {f"Saliency/meta_{split}_{label}", f"stderr/Saliency_meta_{split}_{label}"}
                    elif layer == "all" and split == headline_split and metric == "class_sensitivity":
                        keys |= {f"Saliency/sensitivity_{label}", f"stderr/Saliency_sensitivity_{label}"}
                    elif layer == "all" and split == headline_split and metric == "drift":
                        keys |= {f"Saliency/stability_{label}", f"stderr/Saliency_stability_{label}"}
                    else:
                        keys |= {f"layer_{split}/{CODES[metric]}_{label}_{layer}",
                                 f"stderr/layer_{split}_{CODES[metric]}_{label}_{layer}"}
            if meta and set(splits) == {"train", "val"}:
                if layer == "all":
                    keys |= {f"Saliency/gap_{label}", f"stderr/Saliency_gap_{label}"}
                else:
                    keys |= {f"layer_gap/gap_{label}_{layer}", f"stderr/layer_gap_gap_{label}_{layer}"}
        if meta:  # the loss against 1 - meta correlation, per split (no standard error)
            keys |= {f"layer_{split}/lossr_{label}_all" for split in splits}
    keys |= {f"layer_{split}/loss" for split in splits} | {f"stderr/layer_{split}_loss" for split in splits}
    if set(splits) == {"train", "val"}:
        keys |= {"Saliency/gap_loss", "stderr/Saliency_gap_loss"}
    return keys


def metric_code(key: str) -> str:
    """The breakdown code of the metric ``key`` holds (``stderr`` for a standard error, the name of a run number)."""
    section, name = key.split("/")
    if section == "stderr":
        return "stderr"
    if section == "saliency_run":
        return name
    if section == "Saliency":
        title = max((t for t in HEADLINE_TITLES if name == t or name.startswith(f"{t}_")), key=len)
        return HEADLINE_TITLES[title]
    return name.split("_")[0]


def check_ranges(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        metric = metric_code(key)
        assert isinstance(value, float), key
        if metric == "stderr":
            assert math.isnan(value) or value >= 0, key
        elif metric in CORRELATIONS:
            assert -1 <= value <= 1, (key, value)
        elif metric == "pg":
            assert 0 <= value <= 1, (key, value)
        elif metric == "tv":
            assert value > 0, (key, value)
        elif metric == "gap":
            assert -2 <= value <= 2, (key, value)
        elif metric == "loss":
            assert value >= 0, (key, value)
        elif metric == "lossgap":
            assert math.isfinite(value), (key, value)
        else:
            assert metric in ("time_s", "meta_lr", "errors"), key
    for key, value in metrics.items():
        if not key.startswith("stderr/"):
            assert math.isfinite(value), (key, value)


def test_multiclass_fit_logs_the_documented_keys(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=6, num_val_probes=6, meta_lr=0.05)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy).fit(Classifier(), train, val)

    records = spy.saliency()
    assert [step for step, _ in records] == [0, 3, 6]  # fit start, then each of the 2 epochs (3 steps each)
    assert set(records[0][1]) == expected_keys(drift=False)
    for _, metrics in records[1:]:
        assert set(metrics) == expected_keys()
    for _, metrics in records:
        check_ranges(metrics)
        assert metrics["saliency_run/time_s"] > 0 and metrics["saliency_run/meta_lr"] == 0.05
        assert metrics["saliency_run/errors"] == 0
    # the gap is train − val of the logged means
    last = records[-1][1]
    for label in LABELS:
        assert last[f"Saliency/gap_{label}"] == pytest.approx(
            last[f"Saliency/meta_train_{label}"] - last[f"Saliency/meta_val_{label}"])
        for layer in LAYERS[:-1]:
            assert last[f"layer_gap/gap_{label}_{layer}"] == pytest.approx(
                last[f"layer_train/mc_{label}_{layer}"] - last[f"layer_val/mc_{label}_{layer}"])


def test_multilabel_boxes_give_the_pointing_game_and_the_task_is_inferred(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=6, num_val_probes=4, meta_lr=0.05)
    train, val = multilabel_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(Classifier(multilabel=True), train, val)
    assert monitor.state_dict()["task"] == "multilabel"
    records = spy.saliency()
    assert set(records[-1][1]) == expected_keys(pointing=True)
    for _, metrics in records:
        check_ranges(metrics)


def test_step_schedule_and_no_evaluation_in_the_sanity_check(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, every_n_train_steps=2)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, num_sanity_val_steps=2).fit(Classifier(), train, val)
    records = spy.saliency()
    assert [step for step, _ in records] == [0, 2, 4, 6]
    assert set(records[1][1]) == expected_keys(meta=False)


def test_without_a_logger_metrics_land_in_callback_metrics_and_it_warns_once(tmp_path) -> None:
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05)
    train, val = multiclass_loaders()
    # callback_metrics feed other callbacks: EarlyStopping (strict) finds the gap from the first epoch on
    stopping = EarlyStopping(monitor="Saliency/gap_NGsel", mode="max",
                             patience=5, strict=True)
    fit = trainer(tmp_path, [monitor, stopping], logger=False)
    with pytest.warns(SaliencyMonitorWarning, match="no logger") as caught:
        fit.fit(Classifier(), train, val)
    assert sum("no logger" in str(w.message) for w in caught) == 1
    assert expected_keys() <= set(fit.callback_metrics)


def test_resume_continues_the_same_probes_and_history(tmp_path) -> None:
    train, val = multiclass_loaders()
    first = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr="optimizer", seed=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True, logger=SpyLogger()).fit(
        Classifier(), train, val)
    saved = first.state_dict()
    assert saved["evaluations"] == 2 and saved["meta_lr"] == 0.05

    spy = SpyLogger()
    second = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr="optimizer")  # seed not given
    trainer(tmp_path, [second], max_epochs=2, logger=spy).fit(
        Classifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    state = second.state_dict()
    assert state["identities"] == saved["identities"]  # the checkpoint's seed (3), not the default
    assert state["evaluations"] == 3
    records = spy.saliency()
    assert [step for step, _ in records] == [6]  # no second baseline
    assert set(records[0][1]) == expected_keys()  # drift against the maps saved in the checkpoint


def test_probe_draw_and_evaluation_leave_training_bitwise_unchanged(tmp_path) -> None:
    def run(callbacks: list) -> tuple[dict, dict, torch.Tensor, object, object, torch.Tensor]:
        pl.seed_everything(7, verbose=False)
        model = Classifier()
        train, val = multiclass_loaders()
        fit = trainer(tmp_path, callbacks, max_epochs=2)
        fit.fit(model, train, val)
        return (model.state_dict(), fit.optimizers[0].state_dict(), torch.get_rng_state(), random.getstate(),
                np.random.get_state(), train.generator.get_state())

    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr=0.05, every_n_train_steps=2)
    with pytest.warns(SaliencyMonitorWarning, match="no logger"):
        with_monitor = run([monitor])
    without = run([])
    assert monitor.state_dict()["evaluations"] == 4
    for name, value in without[0].items():
        assert torch.equal(value, with_monitor[0][name]), name
    for index, state in without[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, with_monitor[1]["state"][index][key]), (index, key)
    assert torch.equal(without[2], with_monitor[2])  # torch's global RNG
    assert without[3] == with_monitor[3]  # python's random
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(without[4], with_monitor[4]))  # numpy's global RNG
    assert torch.equal(without[5], with_monitor[5])  # the shuffling sampler's own generator


def test_fast_dev_run_and_validate(tmp_path) -> None:
    train, val = multiclass_loaders()
    monitor = SaliencyMonitor(meta_lr=0.05)
    model = Classifier()
    trainer(tmp_path, [monitor], fast_dev_run=True).fit(model, train, val)
    assert {len(ids) for ids in monitor.state_dict()["identities"].values()} == {2}
    assert monitor.state_dict()["evaluations"] == 2

    spy = SpyLogger()
    validator = SaliencyMonitor(num_val_probes=4, meta_lr=0.05)
    trainer(tmp_path, [validator], logger=spy).validate(model, val)
    records = spy.saliency()
    assert len(records) == 1
    assert set(records[0][1]) == expected_keys(splits=("val",), drift=False)


def test_unknown_layer_is_refused_at_setup(tmp_path) -> None:
    train, val = multiclass_loaders()
    monitor = SaliencyMonitor(layers=["net.stage3"])
    with pytest.raises(ValueError, match=r"but got 'net.stage3'. Did you mean one of \['net.stage2'"):
        trainer(tmp_path, [monitor]).fit(Classifier(), train, val)


# --------------------------------------------------------------------------- real loggers end to end



def picture_is_not_blank(picture: np.ndarray) -> bool:
    return picture.ndim == 3 and picture.shape[2] == 3 and picture.std() > 20 and len(np.unique(picture)) > 50


def test_wandb_offline_run_holds_keys_pictures_and_tables(wandb_env) -> None:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from saliency_monitor.monitor.loggers import offline_history, read_offline_run

    logger = WandbLogger(save_dir=str(wandb_env), project="saliency-monitor-tests")
    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr=0.05, num_logged_images=2)
    train, val = multiclass_loaders()
    try:
        trainer(wandb_env, [monitor], logger=logger, max_epochs=1).fit(Classifier(), train, val)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    history = offline_history(read_offline_run(run_dir))
    scalars = [item for item in history if "saliency_run/time_s" in item]
    assert [item["trainer/global_step"] for item in scalars] == [0, 3]
    assert expected_keys() <= set(scalars[-1])
    check_ranges({k: float(v) for k, v in scalars[-1].items() if is_saliency_key(k)})
    for split in ("train", "val"):
        pictures = [item for item in history if f"saliency_maps/{split}._type" in item]
        assert [item["trainer/global_step"] for item in pictures] == [0, 3]
        for item in pictures:
            assert len(item[f"saliency_maps/{split}.captions"]) == len(METHODS)
            for name in item[f"saliency_maps/{split}.filenames"]:
                assert picture_is_not_blank(np.asarray(Image.open(run_dir / "files" / name).convert("RGB")))
        tables = [item for item in history if f"saliency_probes/{split}._type" in item]
        table = json.loads((run_dir / "files" / tables[-1][f"saliency_probes/{split}.path"]).read_text())
        assert len(table["data"]) == 4 and table["columns"][:3] == ["probe", "identity", "label"]
        assert "meta_correlation/norm_grad_selective/combined" in table["columns"]


def test_tensorboard_and_csv_read_back(tmp_path) -> None:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, num_logged_images=1)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=[tensorboard, csv_logger], max_epochs=1).fit(Classifier(), train, val)
    tensorboard.save()
    csv_logger.save()

    events = EventAccumulator(tensorboard.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    gap = "Saliency/gap_NG"
    assert [e.step for e in events.Scalars(gap)] == [0, 3]
    images = events.Images("saliency_maps/train/0")
    assert [e.step for e in images] == [0, 3]
    assert picture_is_not_blank(np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB")))

    with open(Path(csv_logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(gap)]
    assert [int(row["step"]) for row in rows] == [0, 3]
    pngs = sorted((Path(csv_logger.log_dir) / "saliency_maps" / "val").glob("*.png"))
    assert len(pngs) == 2 * len(METHODS)
    assert all(picture_is_not_blank(np.asarray(Image.open(p).convert("RGB"))) for p in pngs)
    with open(Path(csv_logger.log_dir) / "saliency_probes" / "train.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in table] == [0] * 3 + [3] * 3


# --------------------------------------------------------------------------- namespaces, warnings, faults


def test_a_scalar_only_logger_is_warned_about_once(tmp_path) -> None:
    import warnings as _warnings

    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None)
    train, val = multiclass_loaders()
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        trainer(tmp_path, [monitor], logger=spy).fit(Classifier(), train, val)
    ours = [w for w in caught if issubclass(w.category, SaliencyMonitorWarning)]
    assert [str(w.message) for w in ours] == [
        "SaliencyMonitor: logger generic(SpyLogger) takes scalars only; "
        "saliency pictures and tables are not sent to it."
    ]
    assert len(spy.saliency()) == 3


def test_lightning_pytorch_namespace(tmp_path) -> None:
    import lightning.pytorch as L
    from lightning.pytorch.loggers import CSVLogger

    from saliency_monitor.lightning import SaliencyMonitor as LightningMonitor

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Classifier()

        def forward(self, x):
            return self.inner(x)

        def training_step(self, batch, batch_idx):
            return self.inner.training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            return self.inner.validation_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    assert isinstance(LightningMonitor(), L.Callback) and not isinstance(SaliencyMonitor(), L.Callback)
    monitor = LightningMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05)
    logger = CSVLogger(tmp_path, name="csv")
    train, val = multiclass_loaders()
    L.Trainer(max_epochs=1, accelerator="cpu", logger=logger, callbacks=[monitor], enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(Module(), train, val)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("saliency_run/time_s")]
    assert [int(row["step"]) for row in rows] == [0, 3]
    assert expected_keys() <= set(rows[-1])  # inner.net.stem: the same label, "stem"
    assert sorted((Path(logger.log_dir) / "saliency_maps" / "train").glob("*.png"))


def test_on_error_warn_keeps_training_and_counts_faults(tmp_path) -> None:
    model = Classifier()
    model.net.stage2.append(InjectedFault())
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, layers=["net.stem"])
    train, val = multiclass_loaders()
    with pytest.warns(SaliencyMonitorWarning, match="(?s)failed and was skipped.*RuntimeError: injected fault"):
        fit = trainer(tmp_path, [monitor, ArmFaults()], logger=spy)
        fit.fit(model, train, val)
    assert fit.global_step == 6  # training went on
    errors = [metrics["saliency_run/errors"] for _, metrics in spy.saliency()]
    assert errors == [0.0, 1.0, 2.0]
    assert all(not m._forward_hooks for m in model.modules()) and model.training

    model.net.stage2[-1].armed = False
    raising = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, layers=["net.stem"], on_error="raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        trainer(tmp_path, [raising, ArmFaults()], logger=SpyLogger()).fit(model, train, val)
    model.net.stage2[-1].armed = True  # a fault from fit start on: a configuration fault, whatever on_error says
    with pytest.raises(ValueError, match=r"(?s)RuntimeError: injected fault.*configuration fault"):
        monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, layers=["net.stem"])
        trainer(tmp_path, [monitor], logger=SpyLogger()).fit(model, train, val)


def test_default_meta_step_is_calibrated_once_and_logged(tmp_path) -> None:
    from saliency_monitor.monitor.meta_step import calibrate_meta_lr

    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=2)
    train, val = multiclass_loaders()
    model = Classifier()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer(tmp_path, [monitor], logger=spy).fit(model, train, val)
    logged = {metrics["saliency_run/meta_lr"] for _, metrics in spy.saliency()}
    assert logged == {monitor.state_dict()["meta_lr"]} and 1e-4 <= logged.pop() <= 0.1
    model.load_state_dict(initial)  # the calibration ran on the initial weights and the train probes
    calibrated = calibrate_meta_lr(model, monitor.state.probes["train"], monitor.state.plan)
    assert calibrated == monitor.state_dict()["meta_lr"]


def test_resuming_with_other_layers_warns_that_drift_restarts(tmp_path) -> None:
    train, val = multiclass_loaders()
    first = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True, logger=SpyLogger()).fit(
        Classifier(), train, val)
    spy = SpyLogger()
    second = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, layers=["net.stem", "net.stage2"])
    with pytest.warns(SaliencyMonitorWarning, match=r"used layers \['net.stem', 'net.stage1', 'net.stage2'\], this "
                                                    r"run uses \['net.stem', 'net.stage2'\]; drift restarts"):
        trainer(tmp_path, [second], max_epochs=2, logger=spy).fit(
            Classifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    metrics = spy.saliency()[0][1]
    assert math.isfinite(metrics["layer_train/drift_NG_stem"])  # same layer: drift continues
    assert math.isnan(metrics["layer_train/drift_NG_all"])  # the combination changed
    assert math.isnan(metrics["Saliency/stability_NG"])  # (val)
