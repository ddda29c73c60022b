"""MonitorConfig: every option checked once, where it enters, with a message naming it."""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest

from saliency_monitor import MonitorConfig, SaliencyMonitor
from saliency_monitor.engine import get_method
from saliency_monitor.lightning import SaliencyMonitor as LightningMonitor
from saliency_monitor.monitor.config import OPTION_NAMES


def test_the_callback_takes_exactly_the_config_options_with_the_same_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(MonitorConfig) if f.name in OPTION_NAMES}
    assert set(OPTION_NAMES) | {"explicit"} == {f.name for f in dataclasses.fields(MonitorConfig) if f.init}
    for monitor in (SaliencyMonitor, LightningMonitor):
        parameters = inspect.signature(monitor.__init__).parameters
        options = {name: p.default for name, p in parameters.items() if name != "self"}
        assert options == fields and list(options) == list(OPTION_NAMES)
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in parameters.items() if name != "self")


def test_the_options_given_are_recorded_as_explicit() -> None:
    assert SaliencyMonitor().config.explicit == frozenset()
    monitor = SaliencyMonitor(meta_lr=0.05, seed=0)
    assert monitor.config.explicit == {"meta_lr", "seed"} and monitor.config.meta_lr == 0.05
    with pytest.raises(ValueError, match=r"Expected `explicit` to name options of .*, but got \['lr'\]"):
        MonitorConfig(explicit=frozenset({"lr"}))


def test_defaults_are_normalised() -> None:
    config = MonitorConfig()
    assert config.every_n_epochs == 1 and config.every_n_train_steps is None
    assert config.methods == ("norm_grad_selective", "norm_grad")
    assert config.saliency.methods == (get_method("norm_grad_selective"), get_method("norm_grad"))
    assert config.saliency.layers is None and config.saliency.meta_lr is None
    assert config.layers is None and config.task is None and config.meta_lr == "calibrate"


def test_numpy_scalars_are_accepted_wherever_a_number_is() -> None:
    config = MonitorConfig(
        num_train_probes=np.int64(8), num_val_probes=np.int32(0), every_n_train_steps=np.int16(5),
        meta_lr=np.float32(0.01), num_logged_images=np.uint8(2), pointing_tolerance=np.float64(7.5),
        probe_batch_size=np.int64(4), seed=np.int64(3), context_size=np.int64(48), methods=["lrp"],
    )
    values = (config.num_train_probes, config.num_val_probes, config.every_n_train_steps, config.num_logged_images,
              config.probe_batch_size, config.seed, config.context_size)
    assert values == (8, 0, 5, 2, 4, 3, 48) and all(type(v) is int for v in values)
    assert config.meta_lr == pytest.approx(0.01) and type(config.meta_lr) is float
    assert config.pointing_tolerance == 7.5 and type(config.pointing_tolerance) is float
    assert config.saliency.context_size == 48


def test_sequences_become_tuples() -> None:
    config = MonitorConfig(layers=["layer1", "layer2"], methods=["norm_grad"], class_names=["cat", "dog"])
    assert config.layers == ("layer1", "layer2") == config.saliency.layers
    assert config.methods == ("norm_grad",) and config.class_names == ("cat", "dog")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"class_names": ["cat", "dog", "cat"]}, ValueError,
         "Expected distinct `class_names`, but got duplicates: ['cat']."),
        ({"class_names": "cat"}, TypeError, "Expected `class_names` to be a sequence of strings, but got 'cat'."),
        ({"layers": []}, ValueError, "Expected `layers` to name at least one, but got an empty sequence."),
        ({"layers": ["layer1", "layer1"]}, ValueError, "Expected distinct `layers`, but got duplicates: ['layer1']."),
        ({"methods": ["norm_grad", "norm_grad"]}, ValueError,
         "Expected distinct `methods`, but got duplicates: ['norm_grad']."),
        ({"methods": ["conv5x5:norm"]}, ValueError, "Expected `methods` to hold methods in "),
        ({"num_train_probes": np.float64(4.0)}, ValueError,
         "Expected `num_train_probes` to be a positive int, but got np.float64(4.0)."),
        ({"seed": -1}, ValueError, "Expected `seed` to be an int >= 0, but got -1."),
        ({"probe_batch_size": True}, ValueError, "Expected `probe_batch_size` to be a positive int, but got True."),
        ({"pointing_tolerance": -1}, ValueError, "Expected `pointing_tolerance` to be a number >= 0, but got -1."),
        ({"pointing_tolerance": float("inf")}, ValueError,
         "Expected `pointing_tolerance` to be a number >= 0, but got inf."),
        ({"meta_lr": float("nan")}, ValueError,
         "Expected `meta_lr` to be a non-zero number, one of ['calibrate', 'optimizer'] or None, but got nan."),
        ({"meta_params": "some"}, ValueError,
         "Expected `meta_params` to be one of ['all', 'trainable'], but got 'some'."),
        ({"smooth": "both"}, ValueError,
         "Expected `smooth` to be one of ['backward', 'forward'] or None, but got 'both'."),
        ({"combine_mode": "mean"}, ValueError,
         "Expected `combine_mode` to be one of ['sum', 'product'], but got 'mean'."),
        ({"output_to_logits": "logits"}, TypeError, "Expected `output_to_logits` to be callable, but got str."),
        ({"context_size": 16, "methods": ["salient_relevance"]}, ValueError,
         "Expected `context_size` to be an int >= 32"),
        ({"every_n_train_steps": 0}, ValueError, "Expected `every_n_train_steps` to be a positive int, but got 0."),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        MonitorConfig(**kwargs)
    with pytest.raises(error, match=re.escape(message)):
        SaliencyMonitor(**kwargs)


def test_config_is_frozen() -> None:
    config = MonitorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    assert SaliencyMonitor(seed=4).config == MonitorConfig(seed=4)
