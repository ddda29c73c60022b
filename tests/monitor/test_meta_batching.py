"""``meta_batching`` in the monitor: both paths log the same values, ``auto`` is settled once at fit
start (the loop on a CPU, the faster measured path elsewhere) and recorded in the run's config."""

from __future__ import annotations

import pytest
import torch

import saliency_monitor.monitor.fit_start as fit_start
from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor.publish import run_config
from tests.monitor.test_robustness import assert_same_values, baseline, seeded_model

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")


def monitor(**options: object) -> SaliencyMonitor:
    return SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, **options)


def test_vmap_and_loop_log_the_same_values(tmp_path) -> None:
    loop, vmap = monitor(meta_batching="loop"), monitor(meta_batching="vmap", meta_memory=1)  # 1 pair per chunk
    loop_values = baseline(tmp_path, seeded_model(), loop)
    vmap_values = baseline(tmp_path, seeded_model(), vmap)
    assert any(key.startswith("Saliency/meta_train") for key in loop_values)
    assert_same_values(vmap_values, loop_values, 1e-5)
    assert vmap.state.plan is not None and vmap.state.plan.saliency.meta_batching == "vmap"


def test_auto_is_the_loop_on_cpu_without_timing(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    timed = []
    monkeypatch.setattr(fit_start, "time_meta_batching", lambda run: timed.append(run) or {})
    chosen = monitor()
    baseline(tmp_path, seeded_model(), chosen)
    assert chosen.config.meta_batching == "auto" and not timed
    assert chosen.state.plan is not None and chosen.state.plan.saliency.meta_batching == "loop"


@pytest.mark.parametrize(("seconds", "expected"), [({"loop": 2.0, "vmap": 1.0}, "vmap"),
                                                   ({"loop": 1.0, "vmap": float("inf")}, "loop")])
def test_auto_keeps_the_faster_path_timed_on_the_probes_off_the_cpu(
    tmp_path, monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float], expected: str
) -> None:
    ran = []

    def timing(run):  # both paths really run on the probes; the clock is replaced by the figures
        ran.extend(run(batching) for batching in ("loop", "vmap") if seconds[batching] < float("inf"))
        return seconds

    monkeypatch.setattr(fit_start, "time_meta_batching", timing)
    monkeypatch.setattr(fit_start, "device_and_dtype", lambda module: (torch.device("cuda"), torch.float32))
    chosen = monitor()
    values = baseline(tmp_path, seeded_model(), chosen)
    assert chosen.state.plan is not None and chosen.state.plan.saliency.meta_batching == expected
    assert ran and all(maps["norm_grad_selective"] for maps in ran)
    assert run_config(chosen.config, chosen.state, _layout(chosen))["meta_batching"] == expected
    assert_same_values(values, baseline(tmp_path, seeded_model(), monitor(meta_batching="loop")), 1e-5)


def test_meta_off_leaves_the_batching_unsettled(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_start, "device_and_dtype", lambda module: (torch.device("cuda"), torch.float32))
    chosen = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=None)
    baseline(tmp_path, seeded_model(), chosen)
    assert chosen.state.plan is not None and chosen.state.plan.saliency.meta_batching == "auto"


def test_bad_batching_options_are_refused_when_the_monitor_is_built() -> None:
    with pytest.raises(ValueError, match=r"`meta_batching`.*'auto', 'loop', 'vmap'.*'vectorised'"):
        SaliencyMonitor(meta_batching="vectorised")
    with pytest.raises(ValueError, match=r"`meta_memory`"):
        SaliencyMonitor(meta_memory=-5)


def _layout(chosen: SaliencyMonitor):
    from saliency_monitor.monitor.keys import KeyLayout

    assert chosen.state.plan is not None
    return KeyLayout.of(chosen.state.plan.layers, tuple(chosen.state.probes))
