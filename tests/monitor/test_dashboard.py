"""What a person sees after a tiny real fit at the default methods with meta maps: the W&B run read
back offline (``wandb leet inspect --json`` / ``--summary --json``), the TensorBoard event files
and the CSV logger's files.

The expected names come from the key layout (:mod:`saliency_monitor.monitor.keys`) and the
evaluation's metric list, so the checks follow the layout rather than repeat it.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from saliency_monitor import SaliencyMonitor
from saliency_monitor.engine.methods import MONITOR_METHODS
from saliency_monitor.monitor.evaluation import METRICS
from saliency_monitor.monitor.keys import (
    COMBINED,
    GAP,
    HEADLINE,
    LOSS_GAP,
    RUN,
    SPLITS,
    STDERR,
    KeyLayout,
    MetricKey,
    evolution_key,
    method_label,
    pictures_key,
    table_key,
)
from saliency_monitor.monitor.loggers import (
    CSVAdapter,
    GenericAdapter,
    TensorBoardAdapter,
    WandbAdapter,
    offline_history,
    read_offline_run,
    read_offline_summary,
)
from saliency_monitor.monitor.loggers.base import check_charts
from saliency_monitor.monitor.loggers.tensorboard import CONFIG_TAG, flatten_config
from saliency_monitor.monitor.loggers.wandb import STEP_METRIC
from saliency_monitor.monitor.publish import CONFIG_KEY
from saliency_monitor.monitor.workspace import OVERLAY_SECTION, saliency_workspace
from tests._fits import Classifier, multiclass_loaders, trainer

PROBES = 4
BREAKDOWN = ("layer_train", "layer_val", "layer_gap")
FIT_KEYS = {"epoch", "train_loss", "val_loss", STEP_METRIC}
"""What the fit logs itself (the Classifier and Lightning), not the monitor."""


@dataclass
class Fit:
    monitor: SaliencyMonitor
    run_dir: Path
    history: list[dict[str, Any]]
    records: list[dict[str, Any]]
    final: dict[str, Any]
    """``leet inspect --summary --json``: config, summary, state, ..."""

    @property
    def layout(self) -> KeyLayout:
        assert self.monitor.state.plan is not None
        return KeyLayout.of(self.monitor.state.plan.layers, SPLITS)

    def scalar_keys(self) -> set[str]:
        """Every numeric key of the history the monitor logged (no W&B ``_`` key, no media field)."""
        keys = {key for item in self.history for key in item if not key.startswith("_")}
        media = {key.removesuffix("._type") for key in keys if key.endswith("._type")}
        return {
            key for key in keys - FIT_KEYS
            if not any(key.startswith(f"{base}.") for base in media) and key not in media
        }

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(item[STEP_METRIC], item[key]) for item in self.history if key in item]


def headline_names(layout: KeyLayout) -> set[str]:
    """The headline keys the layout gives the default methods' metrics (the gap included)."""
    candidates = [
        MetricKey(split, metric, method, COMBINED)
        for split in (None, *SPLITS) for metric in (*METRICS, GAP) for method in MONITOR_METHODS
    ]
    candidates.append(MetricKey(None, LOSS_GAP))
    return {layout.name(key) for key in candidates if layout.headline(key) is not None}


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(root / name.lower()))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        logger = WandbLogger(save_dir=str(root), project="saliency-monitor-tests")
        monitor = SaliencyMonitor(num_train_probes=PROBES, num_val_probes=PROBES, num_logged_images=2)
        train, val = multiclass_loaders()
        try:
            trainer(root, [monitor], logger=logger, max_epochs=2).fit(Classifier(), train, val)
            run_dir = Path(logger.experiment.dir).parent
        finally:
            wandb.finish()
        records = read_offline_run(run_dir)
        return Fit(monitor, run_dir, offline_history(records), records, read_offline_summary(run_dir))


# --------------------------------------------------------------------------- W&B


@pytest.mark.slow
def test_the_scalars_fall_into_six_sections(fit: Fit) -> None:
    sections = {key.split("/", 1)[0] for key in fit.scalar_keys()}
    assert sections == {HEADLINE, *BREAKDOWN, STDERR, RUN}
    assert all(key.count("/") == 1 for key in fit.scalar_keys())


@pytest.mark.slow
def test_the_headline_is_the_first_leet_page(fit: Fit) -> None:
    """leet charts every numeric key in byte order, 12 to a page, titles cut at ~30 characters."""
    headline = {key for key in fit.scalar_keys() if key.split("/", 1)[0] == HEADLINE}
    expected = headline_names(fit.layout)
    assert headline == expected
    assert len(headline) == 11  # 2 methods × gap, meta_train, meta_val, sensitivity, stability; the loss gap
    assert all(len(key) <= 30 for key in headline), sorted(headline, key=len)[-1]
    charted = {key for item in fit.history for key, value in item.items()
               if isinstance(value, (int, float)) and not key.startswith("_")}
    assert sorted(charted)[:11] == sorted(headline)  # before the fit's own keys and every other section
    for key in headline:  # after each of the 2 epochs (and the baseline, except for the drifts)
        assert [step for step, _ in fit.series(key)][-2:] == [3, 6], key


@pytest.mark.slow
def test_standard_errors_stay_in_their_section_and_out_of_the_summary(fit: Fit) -> None:
    keys = fit.scalar_keys()
    outside = [key for key in keys if key.split("/", 1)[0] in (HEADLINE, *BREAKDOWN) and STDERR in key]
    assert not outside
    errors = {key for key in keys if key.startswith(f"{STDERR}/")}
    means = [key for key in keys if key.split("/", 1)[0] in (HEADLINE, *BREAKDOWN) and "/lossr_" not in key]
    assert len(errors) == len(means) > 0  # one per mean (the loss-rank correlations are not means)
    summary = fit.final["summary"]
    assert not [key for key in summary if key.startswith(f"{STDERR}/")]
    for key in keys - errors:
        assert summary[key] == pytest.approx(fit.series(key)[-1][1], nan_ok=True), key


@pytest.mark.slow
def test_every_key_is_defined_by_its_exact_name_against_the_trainer_step(fit: Fit) -> None:
    metrics = [record["metric"] for record in fit.records if record["type"] == "metric"]
    assert [m["glob_name"] for m in metrics if "glob_name" in m] == ["*"]  # Lightning's only
    defined = {m["name"]: m for m in metrics if "name" in m}
    media = [key(split) for key in (pictures_key, evolution_key, table_key) for split in SPLITS]
    for key in [*fit.scalar_keys(), *media]:
        assert defined[key]["step_metric"] == STEP_METRIC, key
        assert defined[key].get("summary") == ({"none": True} if key.startswith(f"{STDERR}/") else None), key
    names = [m["name"] for m in metrics if "name" in m]
    assert len(names) == len(set(names))  # once per key, although the adapters are rebuilt at every log


@pytest.mark.slow
def test_the_config_holds_the_options_the_settled_plan_and_the_probes(fit: Fit) -> None:
    config = fit.final["config"][CONFIG_KEY]
    state, plan = fit.monitor.state, fit.monitor.state.plan
    assert plan is not None
    options = config["options"]
    assert options["methods"] == list(MONITOR_METHODS) and options["meta_lr"] == "calibrate"
    assert options["num_train_probes"] == PROBES and options["layers"] is None and options["batch_to_probe"] is None
    assert config["task"] == "multiclass"
    assert config["meta_lr"] == plan.meta_lr == fit.series(f"{RUN}/meta_lr")[-1][1]
    assert config["layers"] == {label: layer for layer, label in fit.layout.layers.items()}
    assert set(config["layers"].values()) == {*plan.layers, COMBINED}
    assert config["methods"] == {method_label(method): method for method in MONITOR_METHODS}
    for split in SPLITS:
        probes = config["probes"][split]
        assert probes["identities"] == state.identities[split] and len(probes["identities"]) == PROBES
        assert probes["classes"] == [state.class_name(c) for (c,) in state.probes[split].classes]


@pytest.mark.slow
def test_the_summary_holds_the_largest_gap_and_its_step(fit: Fit) -> None:
    summary = fit.final["summary"]
    for method in MONITOR_METHODS:
        name = fit.layout.name(MetricKey(None, GAP, method, COMBINED))
        series = fit.series(name)
        step, largest = max(series, key=lambda point: point[1])
        assert summary[f"{name}_max"] == pytest.approx(largest)
        assert summary[f"{name}_max_step"] == step
        assert fit.monitor.state.largest_gap[method] == (pytest.approx(largest), step)
        assert f"{name}_max" not in fit.scalar_keys()  # summary only: no chart


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style validators in wandb_workspaces
def test_the_workspace_charts_only_keys_the_fit_logged(fit: Fit) -> None:
    assert fit.monitor.state.plan is not None
    workspace = saliency_workspace("entity", "project", layers=fit.monitor.state.plan.layers)
    charted = [key for section in workspace.sections for panel in section.panels for key in getattr(panel, "y", [])]
    media = [key for section in workspace.sections for panel in section.panels
             for key in getattr(panel, "media_keys", [])]
    assert charted and set(charted) <= fit.scalar_keys()
    logged = {key.removesuffix("._type") for item in fit.history for key in item if key.endswith("._type")}
    assert set(media) == {*(pictures_key(s) for s in SPLITS), *(evolution_key(s) for s in SPLITS)} <= logged


# --------------------------------------------------------------------------- TensorBoard and CSV


@pytest.fixture(scope="module")
def tb_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, SaliencyMonitor]:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    root = tmp_path_factory.mktemp("tb_csv")
    tensorboard, csv_logger = TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, num_logged_images=1)
    train, val = multiclass_loaders()
    trainer(root, [monitor], logger=[tensorboard, csv_logger], max_epochs=1).fit(Classifier(), train, val)
    return tensorboard, csv_logger, monitor


@pytest.mark.slow
def test_tensorboard_draws_train_and_val_meta_correlation_on_one_chart(tb_csv: tuple[Any, Any, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    tensorboard, _, monitor = tb_csv
    events = EventAccumulator(tensorboard.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    (stored,) = events.Tensors("custom_scalars__config__")  # written once
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(stored.tensor_proto).item())
    (category,) = layout.category
    assert category.title == OVERLAY_SECTION and len(category.chart) == len(MONITOR_METHODS)
    tags = events.Tags()["scalars"]
    names = KeyLayout.of(monitor.state.plan.layers, SPLITS)
    for chart, method in zip(category.chart, MONITOR_METHODS):
        assert method_label(method) in chart.title
        drawn = [[tag for tag in tags if re.search(regex, tag)] for regex in chart.multiline.tag]
        assert drawn == [[names.name(MetricKey(split, "meta_correlation", method, COMBINED))] for split in SPLITS]
    (text,) = events.Tensors(f"{CONFIG_TAG}/text_summary")
    table = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    assert f"| {CONFIG_KEY}/options/methods | {list(MONITOR_METHODS)} |" in table
    assert f"| {CONFIG_KEY}/probes/val/identities | {monitor.state.identities['val']} |" in table


@pytest.mark.slow
def test_csv_columns_use_the_new_names_and_hparams_hold_the_config(tb_csv: tuple[Any, Any, Any]) -> None:
    _, csv_logger, monitor = tb_csv
    with open(Path(csv_logger.log_dir) / "metrics.csv") as handle:
        columns = set(next(csv.reader(handle)))
    ours = columns - FIT_KEYS - {"step"}
    assert {column.split("/", 1)[0] for column in ours} == {HEADLINE, *BREAKDOWN, STDERR, RUN}
    assert headline_names(KeyLayout.of(monitor.state.plan.layers, SPLITS)) <= ours
    hparams = yaml.safe_load((Path(csv_logger.log_dir) / "hparams.yaml").read_text())
    assert hparams[CONFIG_KEY]["probes"]["train"]["identities"] == monitor.state.identities["train"]
    assert hparams[CONFIG_KEY]["meta_lr"] == pytest.approx(0.05) and not math.isnan(hparams[CONFIG_KEY]["meta_lr"])


# --------------------------------------------------------------------------- the adapters' run-level calls


class Recorder:
    """Stands for a Lightning logger and its experiment (run / SummaryWriter): records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.summary = self
        self.experiment = self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args[0] if args else kwargs))


CHARTS = {"Saliency": {"NG: train vs val": ["Saliency/meta_train_NG", "Saliency/meta_val_NG"]}}


def test_the_summary_reaches_wandb_only_with_steps_as_ints() -> None:
    import numpy as np

    values = {"Saliency/gap_NG_max": np.float32(0.5), "Saliency/gap_NG_max_step": np.int64(3)}
    for adapter in (TensorBoardAdapter, CSVAdapter, GenericAdapter):
        logger = Recorder()
        adapter(logger).log_summary(values)
        assert logger.calls == []
    logger = Recorder()
    WandbAdapter(logger).log_summary(values)
    ((call, sent),) = logger.calls
    assert call == "update" and sent == {"Saliency/gap_NG_max": 0.5, "Saliency/gap_NG_max_step": 3}
    assert type(sent["Saliency/gap_NG_max_step"]) is int


def test_the_config_goes_to_log_hyperparams_and_to_a_tensorboard_text() -> None:
    config = {CONFIG_KEY: {"options": {"methods": ["a", "b"]}, "meta_lr": 0.002}}
    for adapter in (WandbAdapter, CSVAdapter, GenericAdapter):
        logger = Recorder()
        adapter(logger).log_config(config)
        assert logger.calls == [("log_hyperparams", config)]
    logger = Recorder()
    TensorBoardAdapter(logger).log_config(config)
    assert logger.calls == [("add_text", CONFIG_TAG)]
    assert flatten_config(config) == {f"{CONFIG_KEY}/options/methods": ["a", "b"], f"{CONFIG_KEY}/meta_lr": 0.002}


def test_tensorboard_writes_the_charts_once_per_writer_and_anchors_the_keys() -> None:
    writer = Recorder()
    for _ in range(2):
        TensorBoardAdapter(writer).log_charts(CHARTS)  # adapters are rebuilt at every log
    ((call, layout),) = writer.calls
    assert call == "add_custom_scalars"
    assert layout == {"Saliency": {"NG: train vs val": ["Multiline", ["^Saliency/meta_train_NG$",
                                                                      "^Saliency/meta_val_NG$"]]}}
    TensorBoardAdapter(writer).log_charts({"Saliency": {"other": ["Saliency/gap_NG"]}})
    assert len(writer.calls) == 2  # changed charts are written again
    for adapter in (WandbAdapter, CSVAdapter, GenericAdapter):
        logger = Recorder()
        adapter(logger).log_charts(CHARTS)
        assert logger.calls == []


@pytest.mark.parametrize("charts", [
    ["Saliency"], {"": {"t": ["k"]}}, {"s": ["k"]}, {"s": {"t": "k"}}, {"s": {"t": []}}, {"s": {"t": [""]}},
])
def test_charts_are_checked(charts: object) -> None:
    message = f"Expected `charts` to map section names to {{chart title: [scalar keys]}}, but got {charts!r}."
    with pytest.raises(TypeError, match=re.escape(message)):
        check_charts(charts)
    with pytest.raises(TypeError, match=re.escape(message)):
        TensorBoardAdapter(Recorder()).log_charts(charts)  # type: ignore[arg-type]


def test_config_and_summary_are_checked() -> None:
    with pytest.raises(TypeError, match=re.escape("Expected `config` to be a non-empty mapping with non-empty str")):
        GenericAdapter(Recorder()).log_config({})
    with pytest.raises(TypeError, match=re.escape("Expected `values['a']` to be a real number (NaN allowed)")):
        WandbAdapter(Recorder()).log_summary({"a": "x"})  # type: ignore[dict-item]
