"""The monitor inside real-world training: precision, compile, memory format, accumulation,
odd outputs, frozen backbones, injected faults, bad configuration, LightningCLI."""

from __future__ import annotations

import math
import re

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from saliency_monitor import SaliencyMonitor
from saliency_monitor.monitor import SaliencyMonitorWarning
from tests._fits import Classifier, SpyLogger, class_images, is_saliency_key, multiclass_loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore:SaliencyMonitor. logger generic:UserWarning")


def baseline(tmp_path, model: pl.LightningModule, monitor: SaliencyMonitor | None = None, **kwargs) -> dict:
    """The saliency scalars of the fit-start evaluation (one short epoch)."""
    spy = SpyLogger()
    monitor = monitor or SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05)
    train, val = multiclass_loaders()
    trainer(tmp_path, [monitor], logger=spy, max_epochs=1, **kwargs).fit(model, train, val)
    records = spy.saliency()
    assert records and records[0][0] == 0
    return {k: v for k, v in records[0][1].items() if k != "saliency_run/time_s"}


def assert_same_values(got: dict, want: dict, tolerance: float) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(value, abs=tolerance), key


def seeded_model(**kwargs) -> Classifier:
    torch.manual_seed(0)
    return Classifier(**kwargs)


# --------------------------------------------------------------------------- training setups


def test_bf16_mixed_precision(tmp_path) -> None:
    plain = baseline(tmp_path, seeded_model())
    mixed = baseline(tmp_path, seeded_model(), precision="bf16-mixed")
    assert_same_values(mixed, plain, 1e-6)  # the monitor runs outside autocast: same float32 maps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA")
def test_16_mixed_precision_on_cuda(tmp_path) -> None:
    values = baseline(tmp_path, seeded_model(), precision="16-mixed", accelerator="gpu")
    assert all(math.isfinite(v) for k, v in values.items() if not k.startswith("stderr/"))


class CompiledClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(self.net, backend="aot_eager")


def test_torch_compiled_submodule(tmp_path) -> None:
    plain = baseline(tmp_path, seeded_model(), SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05,
                                                               layers=["net.stem", "net.stage2"]))
    torch.manual_seed(0)
    compiled = CompiledClassifier()
    got = baseline(tmp_path, compiled, SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05,
                                                       layers=["net._orig_mod.stem", "net._orig_mod.stage2"]))
    assert_same_values({k.replace("net._orig_mod.", "net."): v for k, v in got.items()}, plain, 1e-5)
    assert not any(m._forward_hooks for m in compiled.modules())


class ChannelsLast(Classifier):
    def on_fit_start(self) -> None:
        self.to(memory_format=torch.channels_last)


def test_channels_last(tmp_path) -> None:
    plain = baseline(tmp_path, seeded_model())
    torch.manual_seed(0)
    assert_same_values(baseline(tmp_path, ChannelsLast()), plain, 1e-4)  # other conv kernels: float noise


def test_gradient_accumulation_is_untouched_bitwise(tmp_path) -> None:
    def run(callbacks: list) -> dict:
        pl.seed_everything(3, verbose=False)
        model = Classifier()
        train, val = multiclass_loaders()
        trainer(tmp_path, callbacks, logger=SpyLogger(), max_epochs=2, accumulate_grad_batches=2).fit(model, train, val)
        return model.state_dict()

    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=2, meta_lr=0.05, every_n_train_steps=1)
    with_monitor, without = run([monitor]), run([])
    assert monitor.state_dict()["evaluations"] == 1 + 4  # fit start + one per optimizer step, not per micro-batch
    assert all(torch.equal(value, with_monitor[name]) for name, value in without.items())


class DictOutput(Classifier):
    def forward(self, x):
        return {"logits": self.net(x), "features": x.mean()}

    def _loss(self, batch):
        images, labels = batch
        return torch.nn.functional.cross_entropy(self(images)["logits"], labels)


def test_dict_output_needs_output_to_logits(tmp_path) -> None:
    train, val = multiclass_loaders()
    with pytest.raises(ValueError, match=re.escape(
        "Expected the model to map (B, C_in, H, W) images to (B, C) class logits with C >= 2, but got dict for B=1 "
        "(pass `output_to_logits=` to pick the logits from the output).")):
        trainer(tmp_path, [SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=0.05)]).fit(
            DictOutput(), train, val)
    plain = baseline(tmp_path, seeded_model())
    torch.manual_seed(0)
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05,
                              output_to_logits=lambda out: out["logits"])
    assert_same_values(baseline(tmp_path, DictOutput(), monitor), plain, 1e-6)


@pytest.mark.parametrize("meta_params", ["all", "trainable"])
def test_frozen_backbone(tmp_path, meta_params: str) -> None:
    model = seeded_model()
    model.net.stem.requires_grad_(False)
    model.net.stage1.requires_grad_(False)
    monitor = SaliencyMonitor(num_train_probes=3, num_val_probes=3, meta_lr=0.05, meta_params=meta_params)
    values = baseline(tmp_path, model, monitor)
    assert all(math.isfinite(v) for k, v in values.items() if not k.startswith("stderr/"))
    assert not model.net.stem[0].weight.requires_grad and model.net.fc.weight.requires_grad


# --------------------------------------------------------------------------- injected faults


class ThrowingLogger(SpyLogger):
    def log_metrics(self, metrics, step=None) -> None:
        if any(is_saliency_key(k) for k in metrics):
            raise OSError("injected logger failure")
        super().log_metrics(metrics, step)


def test_a_logger_that_throws_does_not_stop_training(tmp_path) -> None:
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=0.05)
    train, val = multiclass_loaders()
    fit = trainer(tmp_path, [monitor], logger=ThrowingLogger())
    with pytest.warns(SaliencyMonitorWarning, match="(?s)failed and was skipped.*OSError: injected logger failure"):
        fit.fit(Classifier(), train, val)
    assert fit.global_step == 6
    assert monitor.state_dict()["errors"] >= 3


class NaNLoss(Classifier):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.global_step >= 1 else loss


def test_a_nan_loss_gives_nan_metrics_and_training_completes(tmp_path) -> None:
    spy = SpyLogger()
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=2, meta_lr=0.05)
    train, val = multiclass_loaders()
    fit = trainer(tmp_path, [monitor], logger=spy)
    with pytest.warns(SaliencyMonitorWarning, match="overflowed to inf/NaN"):
        fit.fit(NaNLoss(), train, val)
    assert fit.global_step == 6
    last = spy.saliency()[-1][1]
    assert math.isnan(last["layer_train/cs_NG_all"])
    assert last["saliency_run/errors"] == 0


# --------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_train_probes": 0}, ValueError, "Expected `num_train_probes` to be a positive int, but got 0."),
        ({"num_val_probes": -1}, ValueError, "Expected `num_val_probes` to be an int >= 0, but got -1."),
        ({"every_n_epochs": 2, "every_n_train_steps": 10}, ValueError,
         "Expected at most one of `every_n_epochs` and `every_n_train_steps`, but got every_n_epochs=2 and "
         "every_n_train_steps=10."),
        ({"every_n_epochs": 0}, ValueError, "Expected `every_n_epochs` to be a positive int, but got 0."),
        ({"methods": ["normgrad"]}, ValueError,
         "Expected `methods` to hold methods in ['grad_cam', 'gradient', 'linear_approx', 'lrp', "),
        ({"methods": "norm_grad"}, TypeError, "Expected `methods` to be a sequence of strings, but got 'norm_grad'."),
        ({"meta_lr": "paper"}, ValueError,
         "Expected `meta_lr` to be a non-zero number, one of ['calibrate', 'optimizer'] or None, but got 'paper'."),
        ({"meta_lr": 0}, ValueError,
         "Expected `meta_lr` to be a non-zero number, one of ['calibrate', 'optimizer'] or None, but got 0."),
        ({"task": "binary"}, ValueError,
         "Expected `task` to be one of ['multiclass', 'multilabel'] or None, but got 'binary'."),
        ({"on_error": "ignore"}, ValueError, "Expected `on_error` to be one of ['warn', 'raise'], but got 'ignore'."),
        ({"combine_weights": "probe_accuracy"}, ValueError,
         "Expected `combine_weights` to be one of ['uniform', 'linear'], but got 'probe_accuracy'."),
        ({"colormap": "jet"}, ValueError,
         "Expected `colormap` to be one of ['turbo', 'viridis', 'gray'], but got 'jet'."),
        ({"batch_to_probe": 3}, TypeError, "Expected `batch_to_probe` to be callable, but got int."),
    ],
)
def test_bad_arguments_fail_in_init(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        SaliencyMonitor(**kwargs)


def test_labels_it_cannot_read_name_batch_to_probe(tmp_path) -> None:
    soft = torch.softmax(torch.randn(12, 3), dim=1)
    loader = DataLoader(TensorDataset(class_images(torch.arange(12) % 3, 0), soft), batch_size=4)
    with pytest.raises((TypeError, ValueError), match="batch_to_probe"):
        trainer(tmp_path, [SaliencyMonitor(meta_lr=0.05)]).fit(Classifier(), loader)


def test_no_val_dataloader_skips_val_probes_and_the_gap(tmp_path) -> None:
    spy = SpyLogger()
    train, _ = multiclass_loaders()
    with pytest.warns(SaliencyMonitorWarning, match="no val dataloader") as caught:
        trainer(tmp_path, [SaliencyMonitor(num_train_probes=2, meta_lr=0.05)], logger=spy, max_epochs=1,
                limit_val_batches=0).fit(Classifier(), train)
    assert sum("no val dataloader" in str(w.message) for w in caught) == 1
    keys = set(spy.saliency()[-1][1])
    words = [set(k.replace("/", "_").split("_")) for k in keys]  # "layer_val/...", "Saliency/meta_val_..."
    assert not any({"val", "gap"} & w for w in words) and any(k.startswith("layer_train/") for k in keys)
    assert {"Saliency/meta_train_NGsel", "Saliency/sensitivity_NGsel"} <= keys  # the headline read on train


def test_fewer_images_than_probes_uses_all_and_warns_once(tmp_path) -> None:
    train, val = multiclass_loaders(num_train=24, num_val=5)
    monitor = SaliencyMonitor(num_train_probes=2, num_val_probes=8, meta_lr=0.05)
    with pytest.warns(SaliencyMonitorWarning, match="asked for 8 val probes but the val data has only 5") as caught:
        trainer(tmp_path, [monitor], logger=SpyLogger()).fit(Classifier(), train, val)
    assert sum("asked for" in str(w.message) for w in caught) == 1
    assert len(monitor.state_dict()["identities"]["val"]) == 5


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_sharded_strategies_are_refused(namespace: str) -> None:
    import importlib

    from saliency_monitor.monitor import refuse_sharded_strategy

    strategies = importlib.import_module(f"{namespace}.strategies")
    with pytest.raises(ValueError, match=r"Expected a single-device or data-parallel strategy \(e.g. 'ddp'\), but got "
                                         r"FSDPStrategy: it shards the parameters"):
        refuse_sharded_strategy(strategies.FSDPStrategy())
    refuse_sharded_strategy(strategies.DDPStrategy())
    refuse_sharded_strategy(strategies.SingleDeviceStrategy(torch.device("cpu")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP needs CUDA")
def test_fsdp_fit_is_refused_at_setup(tmp_path) -> None:
    train, val = multiclass_loaders()
    with pytest.raises(ValueError, match="but got FSDPStrategy"):
        trainer(tmp_path, [SaliencyMonitor()], accelerator="gpu", strategy="fsdp").fit(Classifier(), train, val)


# --------------------------------------------------------------------------- LightningCLI


def test_configurable_from_a_lightning_cli_yaml(tmp_path) -> None:
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(f"""
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  num_sanity_val_steps: 0
  callbacks:
    - class_path: saliency_monitor.SaliencyMonitor
      init_args:
        num_train_probes: 2
        num_val_probes: 2
        meta_lr: 0.05
        methods: [norm_grad, grad_cam]
        every_n_train_steps: 3
model:
  class_path: tests._fits.Classifier
data:
  class_path: tests._fits.DataModule
""")
    with pytest.warns(SaliencyMonitorWarning, match="no logger"):
        cli = LightningCLI(args=["fit", "--config", str(config)], save_config_kwargs={"overwrite": True})
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, SaliencyMonitor)]
    assert monitor.config.methods == ("norm_grad", "grad_cam") and monitor.config.every_n_train_steps == 3
    assert monitor.state_dict()["evaluations"] == 2
    assert "layer_train/cs_GradCAM_all" in cli.trainer.callback_metrics
