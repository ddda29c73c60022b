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


# --------------------------------------------------------------------------- on CUDA (skipped elsewhere)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_on_cuda_training_is_bitwise_unchanged_cuda_rng_included(tmp_path, batching: str) -> None:
    from tests._fits import SpyLogger, multiclass_loaders, trainer
    from tests._trace import assert_same_training
    from tests.monitor.test_lifecycle import mc_dropout_model

    def run(callbacks: list) -> tuple:
        torch.manual_seed(7)
        torch.cuda.manual_seed_all(7)
        model = mc_dropout_model()
        fit = trainer(tmp_path, callbacks, logger=SpyLogger(), max_epochs=2, accelerator="gpu")
        fit.fit(model, *multiclass_loaders())
        return (model.state_dict(), fit.optimizers[0].state_dict(), torch.get_rng_state(),
                torch.cuda.get_rng_state())

    chosen = monitor(meta_batching=batching, every_n_train_steps=2)
    with_monitor, without = run([chosen]), run([])
    assert chosen.state.evaluations == 4
    assert_same_training(without, with_monitor)


@cuda
def test_on_cuda_an_evaluation_synchronises_with_the_host_a_fixed_number_of_times_whatever_the_probes() -> None:
    """Maps and metrics stay on the device until the results come to the host once: the count of
    synchronising calls does not grow with the number of probes (torch's sync debug mode)."""
    import warnings

    from saliency_monitor.engine.compute import saliency_options
    from saliency_monitor.monitor.evaluation import EvaluationPlan, evaluate_probes
    from saliency_monitor.monitor.probes import ProbeBatch
    from tests._fits import TinyNet, class_images

    torch.manual_seed(0)
    model = TinyNet().cuda()
    options = saliency_options(["stem", "stage1", "stage2"], ["norm_grad_selective", "norm_grad"],
                               meta_batching="vmap")
    plan = EvaluationPlan.of(options, meta_lr=0.05, batch_size=64)

    def synchronisations(count: int) -> int:
        labels = torch.arange(count) % 3
        probes = ProbeBatch(class_images(labels, seed=1), tuple((int(c),) for c in labels), "multiclass")
        evaluate_probes(model, probes, plan)  # warm-up
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                evaluate_probes(model, probes, plan)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert synchronisations(4) == synchronisations(12)
