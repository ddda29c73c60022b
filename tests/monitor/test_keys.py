"""MetricKey and KeyLayout: one value type for every logged name, one layout that formats it.

The expected names are written out: they are what a user finds in W&B / TensorBoard and types
into ``EarlyStopping(monitor=...)``."""

from __future__ import annotations

import re

import pytest

from saliency_monitor.monitor.evaluation import METRICS
from saliency_monitor.monitor.keys import (
    COMBINED,
    GAP,
    KeyLayout,
    MetricKey,
    column_name,
    evolution_key,
    is_scalar_key,
    layer_labels,
    method_label,
    pictures_key,
    table_key,
)

LAYERS = ("model.layer2", "model.layer3", "model.layer4")
BOTH = KeyLayout.of(LAYERS, ("train", "val"))
TRAIN_ONLY = KeyLayout.of(LAYERS, ("train",))
DEFAULT_METHODS = ("norm_grad_selective", "norm_grad")
"""Whether the evaluation computes drift from the fit start (its keys are expected only then)."""
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]+/[A-Za-z0-9_]+$")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        # the headline: the combined map; sensitivity and stability on val; the loss gap
        (MetricKey(None, GAP, "norm_grad_selective", COMBINED), "Saliency/gap_NGsel"),
        (MetricKey("train", "meta_correlation", "norm_grad_selective", COMBINED), "Saliency/meta_train_NGsel"),
        (MetricKey("val", "meta_correlation", "norm_grad", COMBINED), "Saliency/meta_val_NG"),
        (MetricKey("val", "class_sensitivity", "norm_grad", COMBINED), "Saliency/sensitivity_NG"),
        (MetricKey("val", "drift", "norm_grad_selective", COMBINED), "Saliency/stability_NGsel"),
        (MetricKey(None, "loss_gap"), "Saliency/gap_loss"),
        (MetricKey(None, "loss_gap").error(), "stderr/Saliency_gap_loss"),
        (MetricKey("val", "drift_from_start", "norm_grad_selective", COMBINED), "layer_val/start_NGsel_all"),
        (MetricKey("train", "loss"), "layer_train/loss"),
        (MetricKey("val", "loss").error(), "stderr/layer_val_loss"),
        (MetricKey("val", "loss_rank_correlation", "norm_grad", COMBINED), "layer_val/lossr_NG_all"),
        # the same metrics of the combined map on train are in the breakdown, layer "all"
        (MetricKey("train", "class_sensitivity", "norm_grad", COMBINED), "layer_train/cs_NG_all"),
        (MetricKey("train", "drift_from_start", "norm_grad_selective", COMBINED), "layer_train/start_NGsel_all"),
        (MetricKey("train", "drift", "norm_grad_selective", COMBINED), "layer_train/drift_NGsel_all"),
        # the breakdown: every metric of every layer
        (MetricKey("train", "class_sensitivity", "norm_grad", "model.layer3"), "layer_train/cs_NG_layer3"),
        (MetricKey("val", "class_sensitivity", "norm_grad", "model.layer2"), "layer_val/cs_NG_layer2"),
        (MetricKey("train", "meta_class_sensitivity", "norm_grad_selective", "model.layer4"),
         "layer_train/mcs_NGsel_layer4"),
        (MetricKey("val", "meta_class_sensitivity", "norm_grad_selective", COMBINED), "layer_val/mcs_NGsel_all"),
        (MetricKey("val", "meta_correlation", "norm_grad", "model.layer3"), "layer_val/mc_NG_layer3"),
        (MetricKey("val", "drift", "norm_grad", "model.layer4"), "layer_val/drift_NG_layer4"),
        (MetricKey("val", "drift_from_start", "norm_grad", "model.layer4"), "layer_val/start_NG_layer4"),
        (MetricKey("val", "total_variation", "norm_grad", COMBINED), "layer_val/tv_NG_all"),
        (MetricKey("train", "total_variation", "norm_grad_selective", "model.layer2"),
         "layer_train/tv_NGsel_layer2"),
        (MetricKey("val", "pointing_game", "norm_grad", COMBINED), "layer_val/pg_NG_all"),
        (MetricKey("train", "relevance_ssim", "salient_relevance", "model.layer2"),
         "layer_train/ssim_SalRel_layer2"),
        # the gap per layer
        (MetricKey(None, GAP, "norm_grad", "model.layer2"), "layer_gap/gap_NG_layer2"),
        (MetricKey(None, GAP, "norm_grad_selective", "model.layer4"), "layer_gap/gap_NGsel_layer4"),
        # standard errors: the mean's key, "/" as "_", in their own section
        (MetricKey(None, GAP, "norm_grad_selective", COMBINED).error(), "stderr/Saliency_gap_NGsel"),
        (MetricKey("val", "meta_correlation", "norm_grad", COMBINED).error(), "stderr/Saliency_meta_val_NG"),
        (MetricKey("val", "class_sensitivity", "norm_grad", COMBINED).error(), "stderr/Saliency_sensitivity_NG"),
        (MetricKey("train", "class_sensitivity", "norm_grad", COMBINED).error(), "stderr/layer_train_cs_NG_all"),
        (MetricKey("train", "total_variation", "norm_grad", "model.layer3").error(),
         "stderr/layer_train_tv_NG_layer3"),
        (MetricKey(None, GAP, "norm_grad", "model.layer4").error(), "stderr/layer_gap_gap_NG_layer4"),
        # numbers about the run
        (MetricKey(None, "time_s"), "saliency_run/time_s"),
        (MetricKey(None, "meta_lr"), "saliency_run/meta_lr"),
        (MetricKey(None, "errors"), "saliency_run/errors"),
        (MetricKey("train", "prediction_difference"), "saliency_run/prediction_difference_train"),
        (MetricKey("val", "prediction_difference"), "saliency_run/prediction_difference_val"),
    ],
)
def test_name_on_a_train_and_val_fit(key: MetricKey, name: str) -> None:
    assert BOTH.name(key) == name


@pytest.mark.parametrize(
    ("key", "name"),
    [
        # without val data the headline's sensitivity and stability are read on train
        (MetricKey("train", "class_sensitivity", "norm_grad", COMBINED), "Saliency/sensitivity_NG"),
        (MetricKey("train", "drift_from_start", "norm_grad", COMBINED), "layer_train/start_NG_all"),
        (MetricKey("train", "drift", "norm_grad_selective", COMBINED), "Saliency/stability_NGsel"),
        (MetricKey("train", "meta_correlation", "norm_grad_selective", COMBINED), "Saliency/meta_train_NGsel"),
        (MetricKey("train", "meta_class_sensitivity", "norm_grad", COMBINED), "layer_train/mcs_NG_all"),
        (MetricKey("train", "class_sensitivity", "norm_grad", "model.layer4"), "layer_train/cs_NG_layer4"),
        (MetricKey("train", "class_sensitivity", "norm_grad", COMBINED).error(), "stderr/Saliency_sensitivity_NG"),
        (MetricKey("train", "drift", "norm_grad", "model.layer2").error(), "stderr/layer_train_drift_NG_layer2"),
        (MetricKey("train", "prediction_difference"), "saliency_run/prediction_difference_train"),
        (MetricKey(None, "time_s"), "saliency_run/time_s"),
    ],
)
def test_name_on_a_train_only_fit(key: MetricKey, name: str) -> None:
    assert TRAIN_ONLY.name(key) == name


def test_a_validate_only_fit_reads_the_headline_on_val() -> None:
    layout = KeyLayout.of(LAYERS, ("val",))
    assert layout.name(MetricKey("val", "class_sensitivity", "norm_grad", COMBINED)) == "Saliency/sensitivity_NG"
    assert layout.name(MetricKey("val", "meta_correlation", "norm_grad", COMBINED)) == "Saliency/meta_val_NG"


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("norm_grad_selective", "NGsel"),
        ("norm_grad", "NG"),
        ("norm_grad_conv", "NGconv"),
        ("gradient", "grad"),
        ("linear_approx", "lin"),
        ("grad_cam", "GradCAM"),
        ("lrp", "LRP"),
        ("salient_relevance", "SalRel"),
        ("conv3x3_depthwise:filter_norm", "dw3_fnorm"),
        ("conv3x3:max", "c3_max"),
        ("conv1x1:maxabs", "c1_mabs"),
        ("bias:sum", "b_sum"),
        ("scaling:norm", "s_norm"),
        ("conv:filter_norm", "cv_fnorm"),
    ],
)
def test_method_labels(method: str, label: str) -> None:
    assert method_label(method) == label


def test_a_grid_cell_and_a_nested_layer_in_a_key() -> None:
    layout = KeyLayout.of(("model.layer1.0", "model.layer2.1"), ("train", "val"))
    key = MetricKey("val", "relevance_ssim", "conv3x3:max", "model.layer1.0")
    assert layout.name(key) == "layer_val/ssim_c3_max_layer1_0"
    assert layout.name(key.error()) == "stderr/layer_val_ssim_c3_max_layer1_0"
    cell = MetricKey(None, GAP, "conv3x3_depthwise:filter_norm", COMBINED)
    assert layout.name(cell) == "Saliency/gap_dw3_fnorm"
    assert layout.name(MetricKey(None, GAP, "conv3x3_depthwise:filter_norm", "model.layer2.1")) == (
        "layer_gap/gap_dw3_fnorm_layer2_1")


@pytest.mark.parametrize(
    ("layers", "labels"),
    [
        (["model.layer1", "model.layer4"], ["layer1", "layer4"]),
        (["model.layer4"], ["layer4"]),  # one layer: its prefix goes too
        (["net.stem", "net.stage1", "net.stage2"], ["stem", "stage1", "stage2"]),
        (["backbone.body.layer1.0.conv1", "backbone.body.layer2.0.conv1"], ["layer1_0_conv1", "layer2_0_conv1"]),
        (["a.x.c", "a.y.c"], ["x_c", "y_c"]),  # the common prefix stops at the first differing part
        (["features.0", "classifier"], ["features_0", "classifier"]),  # nothing in common
        (["input", "layer3"], ["input", "layer3"]),
        (["model", "model.layer1"], ["model", "model_layer1"]),  # a layer's whole name is never stripped
        (["layer4"], ["layer4"]),
    ],
)
def test_layer_labels_strip_the_common_prefix_and_replace_dots(layers: list[str], labels: list[str]) -> None:
    assert layer_labels(layers) == labels
    layout = KeyLayout.of(layers, ("train",))
    assert layout.layers == {**dict(zip(layers, labels)), COMBINED: "all"}


def fit_keys(
    splits: tuple[str, ...], methods: tuple[str, ...] = DEFAULT_METHODS, metrics: tuple[str, ...] | None = None,
    meta: bool = True,
) -> list[MetricKey]:
    """Every key a fit logs (at the default metrics: no boxes, no relevance methods)."""
    if metrics is None:
        metrics = tuple(m for m in METRICS if m not in ("pointing_game", "relevance_ssim"))
    if not meta:
        metrics = tuple(m for m in metrics if m not in ("meta_class_sensitivity", "meta_correlation"))
    keys = [MetricKey(None, "time_s"), MetricKey(None, "errors")] + ([MetricKey(None, "meta_lr")] if meta else [])
    for method in methods:
        for layer in (*LAYERS, COMBINED):
            for split in splits:
                for metric in metrics:
                    keys += [MetricKey(split, metric, method, layer), MetricKey(split, metric, method, layer).error()]
            if meta and set(splits) == {"train", "val"}:
                keys += [MetricKey(None, GAP, method, layer), MetricKey(None, GAP, method, layer).error()]
    return keys


HEADLINE = {
    "Saliency/gap_NGsel", "Saliency/meta_train_NGsel", "Saliency/meta_val_NGsel", "Saliency/sensitivity_NGsel",
    "Saliency/stability_NGsel",
    "Saliency/gap_NG", "Saliency/meta_train_NG", "Saliency/meta_val_NG", "Saliency/sensitivity_NG",
    "Saliency/stability_NG", "Saliency/gap_loss",
}


def test_the_headline_at_the_defaults_is_eleven_keys_sorted_first() -> None:
    names = [BOTH.name(key) for key in fit_keys(("train", "val"))] + [BOTH.name(MetricKey(None, "loss_gap"))]
    assert len(set(names)) == len(names)  # no two numbers share a name
    headline = {name for name in names if name.startswith("Saliency/")}
    assert headline == HEADLINE and len(headline) == 11  # one leet page (12 charts)
    assert sorted(headline)[:3] == ["Saliency/gap_NG", "Saliency/gap_NGsel", "Saliency/gap_loss"]
    assert sorted(names)[: len(headline)] == sorted(headline)  # byte-wise: "Saliency" before lowercase sections


def test_the_headline_of_a_train_only_fit() -> None:
    names = [TRAIN_ONLY.name(key) for key in fit_keys(("train",))]
    assert len(set(names)) == len(names)
    expected = {"Saliency/meta_train_NGsel", "Saliency/sensitivity_NGsel", "Saliency/stability_NGsel",
                "Saliency/meta_train_NG", "Saliency/sensitivity_NG", "Saliency/stability_NG"}
    assert {name for name in names if name.startswith("Saliency/")} == expected


@pytest.mark.parametrize("layout", [BOTH, TRAIN_ONLY], ids=["train_val", "train_only"])
def test_headline_keys_at_the_default_methods_fit_in_30_characters(layout: KeyLayout) -> None:
    names = [layout.name(key) for key in fit_keys(("train", "val")) + fit_keys(("train",))]
    headline = [name for name in names if name.startswith("Saliency/")]
    assert headline and all(len(name) <= 30 for name in headline), max(headline, key=len)


def test_every_key_has_one_slash_and_only_letters_digits_and_underscores() -> None:
    methods = ("norm_grad_selective", "norm_grad", "grad_cam", "salient_relevance", "conv3x3_depthwise:filter_norm",
               "conv3x3:max")
    metrics = tuple(dict.fromkeys((*METRICS, "drift_from_start")))  # every code, whether evaluated yet or not
    keys = fit_keys(("train", "val"), methods, metrics) + fit_keys(("train",), methods, metrics)
    keys += [MetricKey(split, "prediction_difference") for split in ("train", "val")]
    nested = KeyLayout.of(("model.layer1.0", "model.layer2.conv-1"), ("train", "val"))
    for layout in (BOTH, TRAIN_ONLY, nested):
        for key in keys:
            name = layout.name(key)
            assert KEY_PATTERN.match(name), name
            assert is_scalar_key(name), name
    assert nested.layers["model.layer2.conv-1"] == "layer2_conv_1"


@pytest.mark.parametrize(
    ("name", "scalar"),
    [
        ("Saliency/gap_NGsel", True),
        ("Saliency/sensitivity_NG", True),
        ("layer_train/cs_NG_all", True),
        ("layer_val/tv_NGsel_layer4", True),
        ("layer_gap/gap_NG_layer2", True),
        ("stderr/Saliency_gap_NGsel", True),
        ("saliency_run/time_s", True),
        ("saliency_run/prediction_difference_val", True),
        ("saliency_maps/train", False),  # pictures
        ("saliency_evolution/val", False),
        ("saliency_probes/val", False),  # tables
        ("saliency/meta_correlation_gap/norm_grad/combined", False),  # the old layout
        ("Saliency", False),
        ("layer_test/cs_NG_all", False),
        ("val/mAP", False),
        ("val_loss", False),
        (None, False),
        (3, False),
    ],
)
def test_is_scalar_key(name: object, scalar: bool) -> None:
    assert is_scalar_key(name) is scalar


def test_keys_are_values() -> None:
    key = MetricKey(None, "drift", "norm_grad", "layer2")
    assert key.on("train") == MetricKey("train", "drift", "norm_grad", "layer2") != key
    assert key.on("train").error() == MetricKey("train", "drift", "norm_grad", "layer2", stderr=True)
    assert len({key, key.on("val"), key.on("val"), key.error()}) == 3
    assert column_name(key.on("val")) == "drift/norm_grad/layer2"


def test_picture_and_table_keys() -> None:
    assert pictures_key("train") == "saliency_maps/train" and table_key("val") == "saliency_probes/val"
    assert evolution_key("val") == "saliency_evolution/val"


def test_layer_labels_that_would_clash_fall_back_to_full_names_or_fail() -> None:
    assert KeyLayout.of(["model.all", "model.layer4"], ["train"]).layers == {
        "model.all": "model_all", "model.layer4": "model_layer4", "combined": "all"}
    with pytest.raises(ValueError, match=r"Expected `layers` whose names stay distinct in logged keys .* but got "
                                         r"\['net.block.1', 'net.block_1'\]"):
        KeyLayout.of(["net.block.1", "net.block_1"], ["train", "val"])
