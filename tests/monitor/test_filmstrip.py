"""Saliency evolution at a glance: ``drift_from_start`` (ρ of each probe's label map now vs at the
fit's first evaluation) against scipy, and the filmstrip (``saliency_evolution/{split}``), in
tiny real fits and on its own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine import saliency_options
from saliency_monitor.monitor import logic
from saliency_monitor.monitor.evaluation import (
    DriftReference,
    EvaluationPlan,
    LabelMaps,
    SplitEvaluation,
    evaluate_probes,
    start_reference,
)
from saliency_monitor.monitor.filmstrip import (
    MAX_COLUMNS,
    Filmstrip,
    column_to_drop,
    draw_filmstrip,
    thumbnail_size,
    thumbnails,
)
from saliency_monitor.monitor.keys import MetricKey
from saliency_monitor.monitor.probe_metrics import LABEL
from saliency_monitor.monitor.probes import ProbeBatch
from saliency_monitor.monitor.render import colorize, overlay
from tests._fits import SIZE, Classifier, SpyLogger, TinyNet, class_images, multiclass_loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")
Evaluations = list[tuple[int, dict[str, SplitEvaluation]]]


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> Evaluations:
    """Every evaluation's results, with its global step, as the callback computed them."""
    seen: Evaluations = []
    real = logic.evaluate_splits

    def spy(trainer: Any, *args: Any, **kwargs: Any) -> dict[str, SplitEvaluation]:
        results = real(trainer, *args, **kwargs)
        seen.append((trainer.global_step, results))
        return results

    monkeypatch.setattr(logic, "evaluate_splits", spy)
    return seen


# --------------------------------------------------------------------------- an independent reference


def upsample(saliency: Tensor) -> np.ndarray:
    """(h, w) -> (SIZE, SIZE) bilinear, align_corners=False, in float32 (the maps' dtype)."""
    resized = F.interpolate(saliency[None, None].float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return resized[0, 0].double().numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic)


def expected_from_start(now: SplitEvaluation, start: SplitEvaluation) -> dict[MetricKey, Tensor]:
    """Per (method, layer): per probe ρ(upsampled label map at the start, upsampled now), NaN where
    the label class differs."""
    out = {}
    for method, per_layer in now.maps.items():
        for layer, maps in per_layer.items():
            out[MetricKey(None, "drift_from_start", method, layer)] = torch.tensor([
                spearman(upsample(start.maps[method][layer][i]), upsample(maps[i]))
                if start.targets[i, LABEL] == now.targets[i, LABEL] else math.nan
                for i in range(len(maps))
            ], dtype=torch.float64)
    return out


def assert_from_start(now: SplitEvaluation, start: SplitEvaluation) -> None:
    expected = expected_from_start(now, start)
    assert {k for k in now.values if k.metric == "drift_from_start"} == set(expected)
    for key, value in expected.items():
        assert not value.isnan().all(), key
        torch.testing.assert_close(now.values[key], value, rtol=0, atol=1e-6, equal_nan=True, msg=str(key))


def metrics_of(result: SplitEvaluation, metric: str) -> dict[MetricKey, Tensor]:
    return {key: value for key, value in result.values.items() if key.metric == metric}


# --------------------------------------------------------------------------- drift_from_start in fits


def test_drift_from_start_compares_with_the_fit_start_baseline(tmp_path, evaluations: Evaluations) -> None:
    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr=None, num_logged_images=0)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=SpyLogger(), max_epochs=2).fit(Classifier(), train, val)

    assert [step for step, _ in evaluations] == [0, 3, 6]
    (_, baseline), (_, second), (_, third) = evaluations
    for split in ("train", "val"):
        assert not metrics_of(baseline[split], "drift_from_start")  # no key at the baseline itself
        # the first comparison: the previous evaluation is the baseline
        for key, value in metrics_of(second[split], "drift_from_start").items():
            drift = second[split].values[MetricKey(None, "drift", key.method, key.layer)]
            torch.testing.assert_close(value, drift, rtol=0, atol=0, equal_nan=True)
        assert_from_start(third[split], baseline[split])
        differs = [
            not torch.allclose(value, third[split].values[MetricKey(None, "drift", k.method, k.layer)], equal_nan=True)
            for k, value in metrics_of(third[split], "drift_from_start").items()
        ]
        assert any(differs)  # not the previous evaluation
        kept = monitor.state.start[split].maps
        assert all(kept[m][layer] is maps for m, per in baseline[split].maps.items() for layer, maps in per.items())


def test_a_second_fit_restarts_the_baseline_and_the_filmstrip(tmp_path, evaluations: Evaluations) -> None:
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, num_logged_images=2)
    train, val = multiclass_loaders()
    trainer(tmp_path / "a", [monitor], logger=SpyLogger(), max_epochs=1).fit(Classifier(), train, val)
    torch.manual_seed(5)
    trainer(tmp_path / "b", [monitor], logger=SpyLogger(), max_epochs=2).fit(Classifier(), train, val)

    assert [step for step, _ in evaluations] == [0, 3, 0, 3, 6]
    baseline, last = evaluations[2][1], evaluations[4][1]
    for split in ("train", "val"):
        assert not metrics_of(baseline[split], "drift_from_start")
        assert_from_start(last[split], baseline[split])
        assert monitor.state.filmstrips[split].steps == [0, 3, 6]


def test_drift_from_start_and_the_filmstrip_continue_across_a_resume(tmp_path, evaluations: Evaluations) -> None:
    train, val = multiclass_loaders()
    first = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, num_logged_images=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True, logger=SpyLogger()).fit(
        Classifier(), train, val)
    saved = first.state_dict()
    assert set(saved["start"]) == {"train", "val"} and saved["filmstrips"]["train"]["steps"] == [0, 3]
    assert all(c.dtype == torch.uint8 and c.shape == (2, 64, 64, 3) for c in saved["filmstrips"]["train"]["cells"])
    columns = first.last_filmstrips["train"].shape[1]

    second = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, num_logged_images=2)
    trainer(tmp_path, [second], max_epochs=2, logger=SpyLogger()).fit(
        Classifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [step for step, _ in evaluations] == [0, 3, 6]  # no second baseline
    for split in ("train", "val"):
        assert_from_start(evaluations[2][1][split], evaluations[0][1][split])
        assert second.state.filmstrips[split].steps == [0, 3, 6]
        np.testing.assert_array_equal(second.state.filmstrips[split].cells[0], first.state.filmstrips[split].cells[0])
    assert second.last_filmstrips["train"].shape[1] > columns


def test_a_checkpoint_without_start_or_filmstrips_restarts_them(tmp_path, evaluations: Evaluations) -> None:
    train, val = multiclass_loaders()
    first = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, num_logged_images=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True, logger=SpyLogger()).fit(
        Classifier(), train, val)
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    (state,) = [s for name, s in saved["callbacks"].items() if "SaliencyMonitor" in name]
    del state["start"], state["filmstrips"]
    torch.save(saved, path)

    second = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None, num_logged_images=1)
    trainer(tmp_path, [second], max_epochs=2, logger=SpyLogger()).fit(Classifier(), train, val, ckpt_path=str(path))
    (_, results), = evaluations[2:]
    assert not metrics_of(results["train"], "drift_from_start")  # its baseline is the first evaluation now
    assert metrics_of(results["train"], "drift")  # drift goes on
    assert second.state.filmstrips["train"].steps == [6]


# --------------------------------------------------------------------------- drift_from_start alone


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, ProbeBatch, EvaluationPlan]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    probes = ProbeBatch(class_images(torch.tensor([0, 1, 2, 0]), 0), ((0,), (1,), (2,), (0,)), "multiclass")
    plan = EvaluationPlan.of(saliency_options(("stem", "stage1"), ("norm_grad",), task="multiclass"))
    return model, probes, plan


def test_drift_from_start_is_nan_for_another_label_class_or_a_constant_reference(setup) -> None:
    model, probes, plan = setup
    first = evaluate_probes(model, probes, plan)
    targets = first.targets.clone()
    targets[1, LABEL] = (targets[1, LABEL] + 1) % 3  # probe 1's label class "changed"
    maps = {m: {layer: t.clone() for layer, t in per.items()} for m, per in first.maps.items()}
    maps["norm_grad"]["stem"][2] = 0.5  # probe 2's reference map is constant at one layer
    start = DriftReference(LabelMaps(maps), targets)
    values = evaluate_probes(model, probes, plan, start=start).values
    for key, value in metrics_of_values(values, "drift_from_start").items():
        assert value[1].isnan() and value[2].isnan() == (key.layer == "stem"), key
        torch.testing.assert_close(value[[0, 3]], torch.ones(2, dtype=torch.float64))  # the same maps: ρ = 1
    assert not metrics_of_values(values, "drift")


def metrics_of_values(values: dict[MetricKey, Tensor], metric: str) -> dict[MetricKey, Tensor]:
    return {key: value for key, value in values.items() if key.metric == metric}


def test_start_reference_keeps_the_first_maps_and_fills_what_it_lacks(setup) -> None:
    model, probes, plan = setup
    now = evaluate_probes(model, probes, plan).reference
    assert start_reference(None, now) is now
    targets = now.targets.clone()
    targets[0, LABEL] = (targets[0, LABEL] + 1) % 3
    old = DriftReference(LabelMaps({"norm_grad": {"stem": torch.zeros(4, 16, 16)}}), targets)
    merged = start_reference(old, now)
    assert merged.targets is targets and merged.maps["norm_grad"]["stem"] is old.maps["norm_grad"]["stem"]
    filled = merged.maps["norm_grad"]["stage1"]  # first seen now: now's maps, NaN where the class differs
    assert filled[0].isnan().all() and torch.equal(filled[1:], now.maps["norm_grad"]["stage1"][1:])
    assert set(merged.maps["norm_grad"]) == {"stem", "stage1", "combined"}


# --------------------------------------------------------------------------- the filmstrip alone


def test_columns_keep_the_first_and_the_latest_and_never_come_back() -> None:
    assert column_to_drop([0, 1, 2], 3) is None
    assert column_to_drop([0, 10, 12, 30], 3) == 1  # 12 − 0 < 30 − 10
    steps: list[int] = []
    for evaluation in range(100):
        before = set(steps)
        steps.append(evaluation * 5)
        drop = column_to_drop(steps, MAX_COLUMNS)
        if drop is not None:
            del steps[drop]
        assert len(steps) == min(evaluation + 1, MAX_COLUMNS) and steps[0] == 0 and steps[-1] == evaluation * 5
        assert set(steps) <= before | {evaluation * 5} and len(before - set(steps)) <= 1
    assert max(np.diff(steps)) <= 3 * min(np.diff(steps[:-1]))  # still spread over the run


def test_thumbnails_show_uint8_pixels_as_they_are_under_the_map() -> None:
    pixels = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    cells = thumbnails(pixels, maps, "turbo", size=8)  # no shrinking: the pixels unchanged
    heat = colorize(F.interpolate(maps[:, None].double(), size=(8, 8), mode="bilinear")[:, 0], "turbo")
    np.testing.assert_array_equal(cells, overlay(pixels.permute(0, 2, 3, 1).numpy(), heat, 0.5))
    wide = thumbnails(torch.randn(3, 1, 30, 60), torch.rand(3, 5, 10), "gray")
    assert wide.dtype == np.uint8 and wide.shape == (3, 32, 64, 3) and thumbnail_size(30, 60) == (32, 64)


def test_the_strip_grows_by_one_column_per_evaluation_up_to_the_cap() -> None:
    strip = Filmstrip("norm_grad")
    shapes = []
    for step in range(0, 12 * 16, 16):
        strip.add(step, np.full((3, 64, 48, 3), step % 256, dtype=np.uint8))
        shapes.append(draw_filmstrip(strip, ["cat", "dog", "a_very_long_class_name_indeed"], "NG").shape)
    assert len({h for h, _, _ in shapes}) == 1 and all(c == 3 for _, _, c in shapes)
    growth = np.diff([w for _, w, _ in shapes])
    assert (growth[: MAX_COLUMNS - 1] == growth[0]).all() and (growth[MAX_COLUMNS - 1:] == 0).all()
    assert growth[0] == 48 + 2  # a column: the thumbnail ("step 16" on two lines) and a 2-px gap
    assert strip.steps[0] == 0 and strip.steps[-1] == 11 * 16 and len(strip.cells) == MAX_COLUMNS
    assert [int(c[0, 0, 0, 0]) for c in strip.cells] == [s % 256 for s in strip.steps]  # cells follow their steps
    # each column's cells drawn as they are: the last probe's row, at the bottom
    picture = draw_filmstrip(strip, ["cat", "dog", "a_very_long_class_name_indeed"], "NG")
    x0 = picture.shape[1] - MAX_COLUMNS * 50
    for j, cells in enumerate(strip.cells):
        np.testing.assert_array_equal(picture[-66:-2, x0 + 50 * j: x0 + 50 * j + 48], cells[2])


# --------------------------------------------------------------------------- the filmstrip in fits


def test_filmstrips_reach_a_csv_logger_as_pngs_and_are_capped(tmp_path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=0, meta_lr=None, methods=["norm_grad"],
                              num_logged_images=2, every_n_train_steps=1)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=logger, max_epochs=3).fit(Classifier(), train, val)

    assert set(monitor.last_filmstrips) == {"train"}  # no val probes: no val strip
    pngs = sorted((Path(logger.log_dir) / "saliency_evolution" / "train").glob("*.png"))
    assert [p.name for p in pngs] == [f"step{s:07d}_0.png" for s in range(10)]  # 0, then every step
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    assert len({p.shape[0] for p in pictures}) == 1
    growth = np.diff([p.shape[1] for p in pictures])
    assert (growth[: MAX_COLUMNS - 1] == 64 + 2).all() and (growth[MAX_COLUMNS - 1:] == 0).all()
    np.testing.assert_array_equal(pictures[-1], monitor.last_filmstrips["train"])
    assert monitor.state.filmstrips["train"].steps == [0, 2, 4, 5, 6, 7, 8, 9]
    assert Image.open(pngs[-1]).text["Description"].endswith("at steps 0, 2, 4, 5, 6, 7, 8, 9 (columns)")
    # the baseline column is the same picture in the first strip and in the last
    first, last = pictures[0], pictures[-1]
    left = first.shape[1] - 2 - 64  # one column: the cells start after the label band
    np.testing.assert_array_equal(first[-2 * 66:, left: left + 64], last[-2 * 66:, left: left + 64])
    assert first[-66:-2, left: left + 64].std() > 20  # an overlay, not a blank


def test_filmstrips_reach_wandb(wandb_env) -> None:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from saliency_monitor.monitor.loggers import offline_history, read_offline_run

    logger = WandbLogger(save_dir=str(wandb_env), project="saliency-monitor-tests")
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, num_logged_images=2)
    train, val = multiclass_loaders()
    try:
        trainer(wandb_env, [monitor], logger=logger, max_epochs=1).fit(Classifier(), train, val)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    history = offline_history(read_offline_run(run_dir))
    for split in ("train", "val"):
        strips = [item for item in history if f"saliency_evolution/{split}._type" in item]
        assert [item["trainer/global_step"] for item in strips] == [0, 3]
        (name,) = strips[-1][f"saliency_evolution/{split}.filenames"]
        picture = np.asarray(Image.open(run_dir / "files" / name).convert("RGB"))
        np.testing.assert_array_equal(picture, monitor.last_filmstrips[split])
