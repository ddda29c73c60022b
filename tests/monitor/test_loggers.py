"""Logger adapters against real Lightning loggers, read back from what they wrote to disk.

W&B: an offline run read back with ``wandb leet inspect --json`` (:func:`read_offline_run`) and its
media files; TensorBoard: the event files through TensorBoard's EventAccumulator; CSV: metrics.csv,
the PNG files and the table CSVs.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning
from PIL import Image

from saliency_monitor.monitor.loggers import (
    CSVAdapter,
    GenericAdapter,
    SaliencyLogger,
    TensorBoardAdapter,
    WandbAdapter,
    adapt_loggers,
    offline_history,
    read_offline_run,
)
from saliency_monitor.monitor.loggers.base import check_scalars, check_table
from saliency_monitor.monitor.loggers.tensorboard import markdown_table

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
STEPS = (3, 7)
COLUMNS = ["probe", "label", "meta_correlation"]


def scalars(step: int) -> dict[str, float]:
    return {"Saliency/gap_NG": -step / 10, "layer_train/drift_NG_layer4": step / 10,
            "saliency_run/time_s": float("nan")}


def images(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(step)
    return [rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), rng.integers(0, 256, (9, 4, 3), dtype=np.uint8)]


def captions(step: int) -> list[str]:
    return [f"grid a @ {step}", f"grid b @ {step}"]


def rows(step: int) -> list[list[Any]]:
    return [["probe_0", 3, 0.25 * step], ["probe_1", np.int64(1), float("nan")]]


def log_everything(logger: object, adapter_type: type) -> None:
    """Adapters rebuilt at every step, as the callback does; images first: the CSV adapter must
    create the logger's writer before writing files."""
    for step in STEPS:
        (adapter,) = adapt_loggers([logger])
        assert type(adapter) is adapter_type
        adapter.log_images("saliency_maps/train", images(step), captions(step), step)
        adapter.log_scalars(scalars(step), step)
        adapter.log_table("saliency_probes/train", COLUMNS, rows(step), step)


def same_cell(actual: object, expected: object) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return actual == expected and type(actual) is type(expected)


def same_rows(actual: list[list[object]], expected: list[list[object]]) -> bool:
    return len(actual) == len(expected) and all(
        len(a) == len(e) and all(same_cell(x, y) for x, y in zip(a, e)) for a, e in zip(actual, expected)
    )


def loggers_module(namespace: str) -> Any:
    return importlib.import_module(f"{namespace}.loggers")


def spy_logger_class(namespace: str) -> type:
    """A real Lightning Logger of a type the adapters do not know: it records log_metrics calls."""
    base = loggers_module(namespace).Logger

    class SpyLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[dict[str, float], int | None]] = []

        @property
        def name(self) -> str:
            return "spy"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            self.calls.append((dict(metrics), step))

    return SpyLogger


# --------------------------------------------------------------------------- adapt_loggers


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_adapt_loggers_picks_one_adapter_per_logger_in_order(namespace: str, tmp_path: Path) -> None:
    import wandb

    module = loggers_module(namespace)
    other = loggers_module(next(n for n in NAMESPACES if n != namespace))
    loggers = [
        module.CSVLogger(tmp_path / "csv"),
        spy_logger_class(namespace)(),
        module.WandbLogger(save_dir=str(tmp_path)),
        module.TensorBoardLogger(tmp_path / "tb"),
    ]
    assert not any(isinstance(logger, other.Logger) for logger in loggers)  # separate class trees
    adapters = adapt_loggers(loggers)
    assert [type(a) for a in adapters] == [CSVAdapter, GenericAdapter, WandbAdapter, TensorBoardAdapter]
    assert [a.name for a in adapters] == ["csv", "generic(SpyLogger)", "wandb", "tensorboard"]
    assert [a.supports_images for a in adapters] == [True, False, True, True]
    assert all(a.logger is logger for a, logger in zip(adapters, loggers))
    assert all(isinstance(a, SaliencyLogger) for a in adapters)
    assert wandb.run is None  # adapting does not start the W&B run
    assert adapt_loggers(()) == []


def test_adapt_loggers_rejects_what_is_not_a_lightning_logger() -> None:
    message = (
        "Expected `loggers[1]` to be a Lightning logger (a pytorch_lightning.loggers.Logger or"
        " lightning.pytorch.loggers.Logger), but got 'wandb'."
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        adapt_loggers([spy_logger_class("pytorch_lightning")(), "wandb"])
    logger = spy_logger_class("pytorch_lightning")()
    message = f"Expected `loggers` to be a sequence of Lightning loggers, but got {logger!r}."
    with pytest.raises(TypeError, match=re.escape(message)):
        adapt_loggers(logger)  # type: ignore[arg-type]


def test_generic_adapter_logs_scalars_and_stores_no_pictures() -> None:
    logger = spy_logger_class("lightning.pytorch")()
    (adapter,) = adapt_loggers([logger])
    adapter.log_scalars({"Saliency/a": np.float32(0.5), "layer_val/b": float("nan"), "saliency_run/c": 2},
                        np.int64(4))
    adapter.log_images("saliency_maps/train", images(1), captions(1), 4)
    adapter.log_table("saliency_probes/train", COLUMNS, rows(1), 4)
    ((values, step),) = logger.calls
    assert step == 4 and type(step) is int
    assert values["Saliency/a"] == 0.5 and math.isnan(values["layer_val/b"]) and values["saliency_run/c"] == 2.0
    assert all(type(v) is float for v in values.values())


# --------------------------------------------------------------------------- W&B



def test_wandb_adapter_offline_run_reads_back(wandb_env: Path) -> None:
    import wandb

    logger = pytorch_lightning.loggers.WandbLogger(save_dir=str(wandb_env), project="saliency-monitor-tests")
    try:
        log_everything(logger, WandbAdapter)
        run_dir = Path(logger.experiment.dir).parent  # run.dir is the run's files/ folder
    finally:
        wandb.finish()
    assert run_dir.name.startswith("offline-run-")
    records = read_offline_run(run_dir)
    assert records == read_offline_run(next(run_dir.glob("run-*.wandb")))

    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert [m["glob_name"] for m in metrics if "glob_name" in m] == ["*"]  # Lightning's; ours are exact names
    ours = [(m["name"], m["step_metric"]) for m in metrics if "name" in m and m["name"] != "trainer/global_step"]
    expected = [(key, "trainer/global_step") for key in (*scalars(0), "saliency_maps/train", "saliency_probes/train")]
    assert sorted(ours) == sorted(expected)  # once each, although the adapter was rebuilt at every step

    history = offline_history(records)
    for step in STEPS:
        at_step = [item for item in history if item["trainer/global_step"] == step]
        (scalar_row,) = [item for item in at_step if "saliency_run/time_s" in item]
        assert scalar_row["layer_train/drift_NG_layer4"] == step / 10
        assert scalar_row["Saliency/gap_NG"] == -step / 10
        assert math.isnan(scalar_row["saliency_run/time_s"])  # NaN kept, not dropped

        (image_row,) = [item for item in at_step if "saliency_maps/train._type" in item]
        assert image_row["saliency_maps/train._type"] == "images/separated"
        assert image_row["saliency_maps/train.captions"] == captions(step)
        files = image_row["saliency_maps/train.filenames"]
        decoded = [np.asarray(Image.open(run_dir / "files" / name).convert("RGB")) for name in files]
        assert len(decoded) == 2 and all(np.array_equal(d, e) for d, e in zip(decoded, images(step)))

        (table_row,) = [item for item in at_step if "saliency_probes/train._type" in item]
        assert table_row["saliency_probes/train._type"] == "table-file"
        table = json.loads((run_dir / "files" / table_row["saliency_probes/train.path"]).read_text())
        assert table["columns"] == COLUMNS
        assert same_rows(table["data"], [["probe_0", 3, 0.25 * step], ["probe_1", 1, float("nan")]])


def test_read_offline_run_rejects_a_missing_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere")
    message = (
        f"Expected `run_dir` to be an existing W&B run directory, .wandb file or wandb directory, but got {path!r}."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        read_offline_run(path)


def test_offline_history_turns_non_finite_strings_into_floats() -> None:
    records = [
        {"num": 1, "type": "run", "run": {}},
        {"num": 2, "type": "history", "history": {"item": {"a": "NaN", "b": "Infinity", "c": "-Infinity"}}},
        {"num": 3, "type": "history", "history": {"item": {"d": "x", "e": 1}}},
    ]
    first, second = offline_history(records)
    assert math.isnan(first["a"]) and first["b"] == math.inf and first["c"] == -math.inf
    assert second == {"d": "x", "e": 1}


# --------------------------------------------------------------------------- TensorBoard


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_tensorboard_adapter_event_files_read_back(namespace: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    logger = loggers_module(namespace).TensorBoardLogger(tmp_path, name="tb")
    log_everything(logger, TensorBoardAdapter)
    logger.save()  # flush
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()

    def text(tag: str) -> list[tuple[int, str]]:
        found = events.Tensors(f"{tag}/text_summary")
        return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in found]

    drift = events.Scalars("layer_train/drift_NG_layer4")
    assert [(e.step, e.value) for e in drift] == [(s, pytest.approx(s / 10)) for s in STEPS]
    gap = events.Scalars("Saliency/gap_NG")
    assert [(e.step, e.value) for e in gap] == [(s, pytest.approx(-s / 10)) for s in STEPS]
    assert [e.step for e in events.Scalars("saliency_run/time_s")] == list(STEPS)
    assert all(math.isnan(e.value) for e in events.Scalars("saliency_run/time_s"))
    for i in range(2):
        stored = events.Images(f"saliency_maps/train/{i}")
        assert [e.step for e in stored] == list(STEPS)
        for event, step in zip(stored, STEPS):
            decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            assert np.array_equal(decoded, images(step)[i])
    assert text("saliency_maps/train/captions") == [
        (s, "| image | caption |\n| --- | --- |\n"
            f"| saliency_maps/train/0 | grid a @ {s} |\n| saliency_maps/train/1 | grid b @ {s} |")
        for s in STEPS
    ]
    assert text("saliency_probes/train") == [
        (s, "| probe | label | meta_correlation |\n| --- | --- | --- |\n"
            f"| probe_0 | 3 | {0.25 * s} |\n| probe_1 | 1 | nan |")
        for s in STEPS
    ]


def test_markdown_table_escapes_pipes_and_newlines() -> None:
    assert markdown_table(["a|b", "c"], [["x\ny", 0.5], ["z\r\nw", float("inf")]]) == (
        "| a\\|b | c |\n| --- | --- |\n| x y | 0.5 |\n| z w | inf |"
    )


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_csv_adapter_files_read_back(namespace: str, tmp_path: Path) -> None:
    logger = loggers_module(namespace).CSVLogger(tmp_path, name="csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "log directory exists and is not empty" from Lightning
        log_everything(logger, CSVAdapter)
        logger.save()
    log_dir = Path(logger.log_dir)

    with open(log_dir / "metrics.csv", newline="") as file:
        metrics = list(csv.DictReader(file))
    assert [int(row["step"]) for row in metrics] == list(STEPS)
    assert [float(row["layer_train/drift_NG_layer4"]) for row in metrics] == [s / 10 for s in STEPS]
    assert [float(row["Saliency/gap_NG"]) for row in metrics] == [-s / 10 for s in STEPS]
    assert all(math.isnan(float(row["saliency_run/time_s"])) for row in metrics)

    for step in STEPS:
        for i, (image, caption) in enumerate(zip(images(step), captions(step))):
            with Image.open(log_dir / "saliency_maps" / "train" / f"step{step:07d}_{i}.png") as png:
                assert png.mode == "RGB" and png.info["Description"] == caption
                assert np.array_equal(np.asarray(png), image)

    with open(log_dir / "saliency_probes" / "train.csv", newline="") as file:
        table = list(csv.reader(file))
    assert table == [["step", *COLUMNS]] + [
        row for s in STEPS for row in ([str(s), "probe_0", "3", str(0.25 * s)], [str(s), "probe_1", "1", "nan"])
    ]


def test_csv_adapter_table_errors(tmp_path: Path) -> None:
    logger = pytorch_lightning.loggers.CSVLogger(tmp_path, name="csv")
    (adapter,) = adapt_loggers([logger])
    adapter.log_table("probes", ["a", "b"], [[1, 2]], 0)
    path = str(Path(logger.log_dir) / "probes.csv")
    message = f"Expected `columns` to match the header of the existing table {path!r} (['a', 'b']), but got ['a', 'c']."
    with pytest.raises(ValueError, match=re.escape(message)):
        adapter.log_table("probes", ["a", "c"], [[1, 2]], 1)
    message = "Expected `columns` not to contain 'step' (the CSV adapter adds that column), but got ['step', 'b']."
    with pytest.raises(ValueError, match=re.escape(message)):
        adapter.log_table("probes", ["step", "b"], [[1, 2]], 1)
    with open(path, newline="") as file:
        assert list(csv.reader(file)) == [["step", "a", "b"], ["0", "1", "2"]]


# --------------------------------------------------------------------------- argument checks (every adapter)


def test_checks_convert_numpy_scalars_to_python() -> None:
    assert check_scalars({"a": np.float32(0.5), "b": np.int64(2)}) == {"a": 0.5, "b": 2.0}
    names, cells = check_table(("x", "y"), [(np.str_("p"), np.int64(3)), ("q", np.float32(0.5))])
    assert names == ["x", "y"] and cells == [["p", 3], ["q", 0.5]]
    assert [type(c) for row in cells for c in row] == [str, int, str, float]


IMAGE = np.zeros((4, 5, 3), dtype=np.uint8)
BAD_CALLS = [
    ("log_scalars", ({"a": 1.0}, -1), ValueError, "Expected `step` to be an int >= 0, but got -1."),
    ("log_scalars", ({"a": 1.0}, 1.0), TypeError, "Expected `step` to be an int >= 0, but got 1.0."),
    ("log_scalars", ({"a": 1.0}, True), TypeError, "Expected `step` to be an int >= 0, but got True."),
    (
        "log_scalars", ({}, 0), TypeError,
        "Expected `values` to be a non-empty mapping of str keys to numbers, but got {}.",
    ),
    ("log_scalars", ({"": 1.0}, 0), TypeError, "Expected the keys of `values` to be non-empty strings, but got ''."),
    (
        "log_scalars", ({"a": "1"}, 0), TypeError,
        "Expected `values['a']` to be a real number (NaN allowed), but got '1'.",
    ),
    (
        "log_scalars", ({"a": True}, 0), TypeError,
        "Expected `values['a']` to be a real number (NaN allowed), but got True.",
    ),
    (
        "log_images", ("k", [], [], 0), TypeError,
        "Expected `images` to be a non-empty sequence of numpy arrays, but got [].",
    ),
    ("log_images", ("k", [[1]], ["c"], 0), TypeError, "Expected `images[0]` to be a numpy array, but got [1]."),
    (
        "log_images", ("k", [IMAGE, IMAGE.astype(np.float32)], ["c", "d"], 0), ValueError,
        "Expected `images[1]` to be a uint8 array of shape (H, W, 3) with H, W > 0,"
        " but got dtype=float32 and shape=(4, 5, 3).",
    ),
    (
        "log_images", ("k", [IMAGE[..., 0]], ["c"], 0), ValueError,
        "Expected `images[0]` to be a uint8 array of shape (H, W, 3) with H, W > 0,"
        " but got dtype=uint8 and shape=(4, 5).",
    ),
    (
        "log_images", ("k", [IMAGE[:0]], ["c"], 0), ValueError,
        "Expected `images[0]` to be a uint8 array of shape (H, W, 3) with H, W > 0,"
        " but got dtype=uint8 and shape=(0, 5, 3).",
    ),
    (
        "log_images", ("k", [IMAGE], ["c", "d"], 0), TypeError,
        "Expected `captions` to be a sequence of 1 strings (one per image), but got ['c', 'd'].",
    ),
    (
        "log_images", ("k", [IMAGE], "c", 0), TypeError,
        "Expected `captions` to be a sequence of 1 strings (one per image), but got 'c'.",
    ),
    (
        "log_images", ("saliency_maps//train", [IMAGE], ["c"], 0), ValueError,
        "Expected `key` to be a '/'-separated name of non-empty parts other than '.' and '..' (no backslashes),"
        " like 'saliency_maps/train', but got 'saliency_maps//train'.",
    ),
    (
        "log_table", ("../up", ["a"], [[1]], 0), ValueError,
        "Expected `key` to be a '/'-separated name of non-empty parts other than '.' and '..' (no backslashes),"
        " like 'saliency_maps/train', but got '../up'.",
    ),
    (
        "log_table", ("k", ["a", "a"], [[1, 2]], 0), TypeError,
        "Expected `columns` to be a non-empty sequence of unique non-empty strings, but got ['a', 'a'].",
    ),
    (
        "log_table", ("k", "ab", [[1, 2]], 0), TypeError,
        "Expected `columns` to be a non-empty sequence of unique non-empty strings, but got 'ab'.",
    ),
    ("log_table", ("k", ["a"], [], 0), TypeError, "Expected `rows` to be a non-empty sequence of rows, but got []."),
    (
        "log_table", ("k", ["a", "b"], [[1, 2], [3]], 0), ValueError,
        "Expected `rows[1]` to be a sequence of 2 cells, but got [3].",
    ),
    (
        "log_table", ("k", ["a", "b"], [[1, None]], 0), TypeError,
        "Expected `rows[0][1]` to be a str, int or float, but got None.",
    ),
    (
        "log_table", ("k", ["a"], [[False]], 0), TypeError,
        "Expected `rows[0][0]` to be a str, int or float, but got False.",
    ),
    (
        "log_table", ("k", ["a", "b"], [["x", 1], [2.5, 2]], 0), ValueError,
        "Expected column 'a' of `rows` to hold only strings or only numbers, but got ['x', 2.5].",
    ),
]


@pytest.mark.parametrize(("method", "args", "error", "message"), BAD_CALLS)
def test_bad_arguments_raise_before_anything_is_logged(
    method: str, args: tuple[object, ...], error: type[Exception], message: str
) -> None:
    logger = spy_logger_class("pytorch_lightning")()
    (adapter,) = adapt_loggers([logger])
    with pytest.raises(error, match=re.escape(message)):
        getattr(adapter, method)(*args)
    assert logger.calls == []
