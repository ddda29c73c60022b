"""MetricKey and format_key: one value type for every logged name, one function that formats it."""

from __future__ import annotations

import pytest

from saliency_monitor.monitor.keys import COMBINED, GAP, MetricKey, column_name, format_key, pictures_key, table_key


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (MetricKey("train", "class_sensitivity", "norm_grad", "layer3"),
         "saliency/train/class_sensitivity/norm_grad/layer3"),
        (MetricKey("val", "meta_correlation", "norm_grad_selective", COMBINED).error(),
         "saliency/val/meta_correlation_stderr/norm_grad_selective/combined"),
        (MetricKey(None, GAP, "norm_grad", COMBINED), "saliency/meta_correlation_gap/norm_grad/combined"),
        (MetricKey(None, GAP, "norm_grad", "layer1").error(), "saliency/meta_correlation_gap_stderr/norm_grad/layer1"),
        (MetricKey("train", "prediction_difference"), "saliency/train/prediction_difference"),
        (MetricKey(None, "time_s"), "saliency/time_s"),
        (MetricKey(None, "errors"), "saliency/errors"),
        (MetricKey("val", "relevance_ssim", "conv3x3:max", "model.layer1.0"),
         "saliency/val/relevance_ssim/conv3x3:max/model.layer1.0"),
    ],
)
def test_format_key_gives_the_documented_layout(key: MetricKey, name: str) -> None:
    assert format_key(key) == name


def test_keys_are_values() -> None:
    key = MetricKey(None, "drift", "norm_grad", "layer2")
    assert key.on("train") == MetricKey("train", "drift", "norm_grad", "layer2") != key
    assert key.on("train").error() == MetricKey("train", "drift", "norm_grad", "layer2", stderr=True)
    assert len({key, key.on("val"), key.on("val"), key.error()}) == 3
    assert column_name(key.on("val")) == "drift/norm_grad/layer2"


def test_picture_and_table_keys() -> None:
    assert pictures_key("train") == "saliency_maps/train" and table_key("val") == "saliency_probes/val"
