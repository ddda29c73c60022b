"""The monitor across a fit's life: faults it can know at fit start, reuse in a second fit,
RNG isolation, resume, and what callbacks that monitor its keys see (both Lightning namespaces
where the hooks matter)."""

from __future__ import annotations

import importlib
import math
import re
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor import SaliencyMonitorWarning
from saliency_monitor.monitor.state import MonitorState
from tests._fits import Classifier, SpyLogger, class_images, multiclass_loaders, trainer
from tests._trace import assert_same_training

pytestmark = [pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning"),
              pytest.mark.filterwarnings("ignore:SaliencyMonitor. the trainer has no logger:UserWarning"),
              pytest.mark.filterwarnings("ignore:SaliencyMonitor. no val dataloader at fit start:UserWarning")]
NAMESPACES = ("pytorch_lightning", "lightning.pytorch")
KEY = "layer_val/tv_NGsel_all"


def is_drift(key: str) -> bool:
    """Whether ``key`` holds a drift (since the last evaluation or since the fit start) or its standard error."""
    name = key.split("/")[1]
    if key.startswith("stderr/"):  # the mean's key, "/" as "_"
        name = re.sub(r"^(Saliency|layer_train|layer_val)_", "", name)
    return name.startswith(("stability_", "since_start_", "drift_", "start_"))


def make_monitor(namespace: str, **options: Any) -> Any:
    """The SaliencyMonitor of ``namespace``'s class tree."""
    module = "saliency_monitor.callback" if namespace == "pytorch_lightning" else "saliency_monitor.lightning"
    return importlib.import_module(module).SaliencyMonitor(**options)


def namespace_fit(namespace: str, tmp_path, monitor: Any, model: Classifier | None = None,
                  loaders: tuple | None = None, callbacks: list | None = None, **trainer_options: Any) -> Any:
    """A tiny fit in ``namespace`` (the Classifier wrapped in that namespace's LightningModule)."""
    lightning = importlib.import_module(namespace)
    inner = model or Classifier()

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return self.inner._loss(batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.inner._loss(batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return self.inner.configure_optimizers()

    options = {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
               "num_sanity_val_steps": 0, "logger": False, **trainer_options}
    fit = lightning.Trainer(callbacks=[monitor, *(callbacks or [])], **options)
    fit.fit(Module(), *(loaders or multiclass_loaders()))
    return fit


# --------------------------------------------------------------------------- faults known at fit start


class NoGradBackbone(nn.Module):
    """Linear probing: the backbone runs under torch.no_grad(), only the head trains."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.net.pool(self.net.stage2(self.net.stage1(self.net.stem(x)))).flatten(1)
        return self.net.fc(features)


def linear_probing() -> Classifier:
    model = Classifier()
    model.net = NoGradBackbone(model.net)  # names: net.net.stem, ..., net.net.fc
    return model


def shared_relu() -> Classifier:
    model = Classifier()
    relu = nn.ReLU()
    model.net.stem[2] = relu
    model.net.stage1[2] = relu  # one module, two calls per forward (named net.stem.2 only)
    return model


@pytest.mark.parametrize(("make", "layers", "message"), [
    (linear_probing, None, r"depending differentiably on the images, but it has none.*torch.no_grad\(\)"),
    (linear_probing, ["net.net.stage1"], r"(?s)'net.net.stage1' to depend differentiably.*configuration fault.*"
                                         r"torch.no_grad\(\), as in linear probing"),
    (Classifier, ["net.stem", "net.fc"], r"(?s)layer 'net.fc' to output a 4-D.*raised whatever `on_error` says. "
                                         r"Layers of this model saliency can be computed at: 'net.stem.0'"),
    (shared_relu, ["net.stem.2"], r"(?s)'net.stem.2' to run once per forward pass.*configuration fault"),
])
def test_a_monitor_that_can_never_work_fails_at_fit_start(tmp_path, make, layers, message) -> None:
    train, val = multiclass_loaders()
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=0.05, layers=layers, on_error="warn")
    fit = trainer(tmp_path, [monitor], logger=SpyLogger())
    with pytest.raises(ValueError, match=message):
        fit.fit(make(), train, val)
    assert fit.global_step == 0


def test_a_fit_start_fault_is_raised_in_lightning_pytorch_too(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"layer 'inner\.net\.fc' to output a 4-D"):
        monitor = make_monitor("lightning.pytorch", num_train_probes=2, num_val_probes=2, layers=["inner.net.fc"])
        namespace_fit("lightning.pytorch", tmp_path, monitor)


# --------------------------------------------------------------------------- one monitor, several fits


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_a_second_fit_starts_a_fresh_history(tmp_path, namespace: str) -> None:
    monitor = make_monitor(namespace, num_train_probes=3, num_val_probes=3, meta_lr=0.05)
    first_fit = namespace_fit(namespace, tmp_path, monitor)
    assert monitor.state.evaluations == 2
    other_labels = torch.arange(24) % 3
    other = TensorDataset(class_images(other_labels, seed=5) * 2, other_labels)
    loaders = (DataLoader(other, batch_size=8), DataLoader(other, batch_size=8))
    lightning = importlib.import_module(namespace)
    spy = []

    class Record(lightning.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            spy.append(dict(trainer.callback_metrics))

    second = lightning.Trainer(callbacks=[monitor, Record()], max_epochs=1, accelerator="cpu", logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                               num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    second.fit(first_fit.lightning_module, *loaders)
    assert monitor.state.evaluations == 2 and monitor.state.last_step == 3  # the baseline ran again
    probes = monitor.state.probes["train"].images
    assert any(torch.equal(probes[0], image) for image in other.tensors[0])  # drawn from the second fit's data
    assert math.isfinite(spy[-1]["layer_train/drift_NGsel_all"])  # against this fit's baseline
    assert math.isfinite(spy[-1]["Saliency/stability_NGsel"])


# --------------------------------------------------------------------------- randomness in eval mode


class MCDropout(nn.Module):
    """Dropout that stays on in eval mode (MC-dropout)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, 0.3, training=True)


def mc_dropout_model(lr: float = 0.05) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(lr=lr)
    model.net.stage1.append(MCDropout())
    return model


def test_randomness_in_eval_mode_leaves_training_bitwise_unchanged(tmp_path) -> None:
    def run(callbacks: list) -> tuple[dict, dict, Tensor]:
        torch.manual_seed(7)
        model = mc_dropout_model()
        fit = trainer(tmp_path, callbacks, logger=SpyLogger(), max_epochs=2)
        fit.fit(model, *multiclass_loaders())
        return model.state_dict(), fit.optimizers[0].state_dict(), torch.get_rng_state()

    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, every_n_train_steps=2)
    with_monitor, without = run([monitor]), run([])
    assert monitor.state.evaluations == 4
    assert_same_training(without, with_monitor)


def test_two_evaluations_at_the_same_weights_give_the_same_maps(tmp_path) -> None:
    spy = SpyLogger()
    model = mc_dropout_model(lr=0.0)  # no BatchNorm update matters: the saliency passes run in eval mode
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05)
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1).fit(model, *multiclass_loaders())
    (_, first), (_, second) = spy.saliency()
    for key, value in first.items():
        if not is_drift(key) and key != "saliency_run/time_s":
            assert value == second[key] or (math.isnan(value) and math.isnan(second[key])), key
    drifts = {key: value for key, value in second.items() if is_drift(key) and not key.startswith("stderr/")}
    assert "Saliency/stability_NGsel" in drifts and "layer_train/drift_NGsel_stem" in drifts
    assert all(value == pytest.approx(1.0, abs=1e-12) for value in drifts.values()), drifts


# --------------------------------------------------------------------------- resume


def checkpointed(tmp_path, **options: Any) -> tuple[str, dict]:
    first = SaliencyMonitor(num_train_probes=4, num_val_probes=4, **options)
    from pytorch_lightning.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True, logger=SpyLogger()).fit(
        Classifier(), *multiclass_loaders())
    return str(tmp_path / "ckpt" / "last.ckpt"), first.state_dict()


def resume(tmp_path, path: str, monitor: SaliencyMonitor, loaders: tuple | None = None) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=2, logger=SpyLogger()).fit(
            Classifier(), *(loaders or multiclass_loaders()), ckpt_path=path)
    return [str(w.message) for w in caught
            if issubclass(w.category, SaliencyMonitorWarning) and "takes scalars only" not in str(w.message)]


def test_resume_with_a_shrunk_dataset_redraws_the_probes_it_cannot_read(tmp_path) -> None:
    path, saved = checkpointed(tmp_path, meta_lr=0.05, seed=1)
    assert max(saved["identities"]["train"]) >= 6
    monitor = SaliencyMonitor(num_train_probes=4, num_val_probes=4, meta_lr=0.05, seed=1)
    messages = resume(tmp_path, path, monitor, multiclass_loaders(num_train=6))
    assert any("the checkpoint's train probes (dataset items" in m and "cannot be read" in m and
               "drawing new train probes" in m for m in messages), messages
    state = monitor.state_dict()
    assert max(state["identities"]["train"]) < 6 and state["identities"]["val"] == saved["identities"]["val"]
    assert state["evaluations"] == 3 and state["errors"] == 0


def test_resume_keeps_the_checkpoint_for_options_not_given(tmp_path) -> None:
    path, saved = checkpointed(tmp_path, meta_lr="optimizer", seed=3)
    monitor = SaliencyMonitor()  # every option at its default: the checkpoint's history goes on
    assert not resume(tmp_path, path, monitor)
    state = monitor.state_dict()
    assert state["identities"] == saved["identities"] and state["meta_lr"] == saved["meta_lr"] == 0.05
    assert set(saved["largest_gap"]) == {"norm_grad_selective", "norm_grad"}  # the summary's largest gap goes on
    assert all(state["largest_gap"][m][0] >= value for m, (value, _) in saved["largest_gap"].items())
    restored = MonitorState()
    restored.load_state_dict(saved)
    assert restored.largest_gap == {method: tuple(pair) for method, pair in saved["largest_gap"].items()}


@pytest.mark.parametrize(("given", "check", "message"), [
    ({"meta_lr": 0.02}, lambda s, saved: s["meta_lr"] == 0.02, "meta_lr=0.02, the checkpoint's monitor used "
                                                               "meta_lr='optimizer'"),
    ({"meta_lr": None}, lambda s, saved: s["meta_lr"] is None, "meta_lr=None"),
    ({"num_train_probes": 3}, lambda s, saved: len(s["identities"]["train"]) == 3
     and s["identities"]["val"] == saved["identities"]["val"], "new train probes are drawn"),
    ({"seed": 9}, lambda s, saved: s["identities"] != saved["identities"], "seed=9"),
])
def test_resume_options_given_explicitly_win_with_a_warning(tmp_path, given, check, message) -> None:
    path, saved = checkpointed(tmp_path, meta_lr="optimizer", seed=3)
    monitor = SaliencyMonitor(**given)
    messages = resume(tmp_path, path, monitor)
    assert any(message in m for m in messages), messages
    assert check(monitor.state_dict(), saved)


# --------------------------------------------------------------------------- callbacks monitoring a key


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("schedule", [{"val_check_interval": 0.5, "max_epochs": 2},
                                      {"check_val_every_n_epoch": 2, "max_epochs": 4}])
def test_callbacks_monitoring_a_saliency_key_see_the_current_evaluation(tmp_path, namespace, schedule) -> None:
    lightning = importlib.import_module(namespace)
    callbacks = importlib.import_module(f"{namespace}.callbacks")
    seen: list[tuple[int, float, float]] = []
    monitor = make_monitor(namespace, num_train_probes=2, num_val_probes=2, meta_lr=None)

    class Watch(lightning.Callback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append((trainer.global_step, monitor.state.last_step, float(trainer.callback_metrics[KEY])))

    stopping = callbacks.EarlyStopping(monitor=KEY, patience=100, mode="min")
    checkpoint = callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, save_top_k=-1,
                                           filename="{step}-{" + KEY + ":.6f}", auto_insert_metric_name=False)
    namespace_fit(namespace, tmp_path, monitor, callbacks=[stopping, Watch(), checkpoint], enable_checkpointing=True,
                  **schedule)
    assert len(seen) >= 2
    assert all(step == evaluated for step, evaluated, _ in seen), seen
    assert float(stopping.best_score) == pytest.approx(min(value for _, _, value in seen))
    scores = sorted(float(score) for score in checkpoint.best_k_models.values())
    assert scores == pytest.approx(sorted(value for _, _, value in seen))


# --------------------------------------------------------------------------- ambiguous task


def test_one_hot_labels_warn_that_the_task_was_inferred_as_multilabel(tmp_path) -> None:
    labels = torch.arange(24) % 3
    one_hot = F.one_hot(labels, 3).float()
    data = TensorDataset(class_images(labels, 0), one_hot)
    loaders = (DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))

    class OneHotClassifier(Classifier):
        def _loss(self, batch: Any) -> Tensor:
            images, targets = batch
            return F.cross_entropy(self(images), targets)

    with pytest.warns(SaliencyMonitorWarning, match=r"exactly one class per probe.*pass task='multiclass'"):
        trainer(tmp_path, [SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None)],
                logger=SpyLogger()).fit(OneHotClassifier(), *loaders)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=None, task="multiclass")
        trainer(tmp_path, [monitor], logger=SpyLogger()).fit(OneHotClassifier(), *loaders)
    assert not [w for w in caught if "one class per probe" in str(w.message)]
    assert monitor.state.plan is not None and monitor.state.plan.task == "multiclass"
