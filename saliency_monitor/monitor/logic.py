"""The SaliencyMonitor's hooks: when to evaluate, and what a fault does. Everything else is
delegated (fit start: :mod:`.fit_start`; one evaluation: :mod:`.distributed` and
:mod:`.evaluation`; what is logged: :mod:`.report` and :mod:`.publish`).

It imports no Lightning namespace at run time: :mod:`saliency_monitor.callback`
(``pytorch_lightning``) and :mod:`saliency_monitor.lightning` (``lightning.pytorch``) mix it
into each namespace's ``Callback`` class, because the two packages are separate class trees
and a Trainer only accepts callbacks of its own.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor
from typing_extensions import override

from ..engine.layers import validate_layer_names
from ..engine.methods import MONITOR_METHODS
from ..engine.relevance import DEFAULT_CONTEXT_SIZE
from . import report
from .config import MonitorConfig, records_explicit_options
from .degenerate import degenerate_message
from .distributed import evaluate_splits
from .evaluation import start_reference
from .filmstrip import update_filmstrips
from .fit_start import prepare
from .keys import SPLITS, KeyLayout, MetricKey, is_scalar_key
from .publish import Pictures, publish, publish_filmstrips, publish_largest_gap, publish_run
from .rng import evaluation_seed, isolated_rng
from .state import RESUMED_OPTIONS, MonitorState
from .trainer import WarnOnce, eager, refuse_sharded_strategy

if TYPE_CHECKING:  # the hooks' signatures are checked against pytorch_lightning's Callback
    import pytorch_lightning as pl
    from pytorch_lightning import Callback as _CallbackBase
else:
    _CallbackBase = object


class SaliencyMonitorLogic(_CallbackBase):
    """Backpropagation saliency on fixed probe images, logged while a model trains.

    Add it to a Trainer; nothing else changes::

        trainer = Trainer(callbacks=[SaliencyMonitor()], logger=WandbLogger(project="voc"))

    At fit start (the baseline, e.g. the pretrained model before fine-tuning), then every
    ``every_n_epochs`` (default 1) after the epoch's last training step (before its
    validation) or every ``every_n_train_steps``, it
    computes on ``num_train_probes`` training and ``num_val_probes`` validation images
    (drawn once from the dataloaders' datasets, spread across classes, without touching any
    RNG or sampler that training uses) the maps of the label class (multilabel: the true
    class with the highest score) and of the max- and min-predicted classes, plain and
    meta (one SGD step on the single image's loss, §4.4), with each method at each layer and
    combined across layers (§4.2), and logs (every value a mean over probes, NaN-probes left
    out; ``M`` the method's short label, ``NGsel`` for norm_grad_selective; the full layout, with
    ``L`` a layer's label, is :mod:`saliency_monitor.monitor.keys`):

    - the headline section, one screen at defaults: ``Saliency/gap_{M}`` (train − val meta
      correlation of the combined map: the overfitting signal), ``Saliency/gap_loss`` (val − train
      mean label-class loss, beside it), ``Saliency/meta_train_{M}`` and ``Saliency/meta_val_{M}``
      (ρ between the label map and its meta map, supp. D: lower on images the model has not
      fitted), ``Saliency/sensitivity_{M}`` (ρ between the max- and min-class maps, §4.3: near 0 =
      the map depends on the class) and ``Saliency/stability_{M}`` (ρ of the label map now vs the
      last evaluation), the last two on the val probes (train without val data);
    - the breakdown ``layer_{train|val}/{code}_{M}_{L}`` of every metric at every layer and the
      combined map (``L = all``): class sensitivity ``cs``, its meta version ``mcs``, meta
      correlation ``mc``, ``drift``, drift from the start ``start``, total variation ``tv`` (noise
      of the standardised map, Smooth Deep Saliency), ``pg`` the pointing game (probes with
      boxes/masks: the map's peak within ``pointing_tolerance`` px of the class), ``ssim``
      (methods that refine another's maps: SSIM of the LRP map and its Salient Relevance map),
      and ``layer_gap/gap_{M}_{L}``; ``layer_{split}/loss`` (the probes' mean label-class loss)
      and ``layer_{split}/lossr_{M}_all`` (Spearman ρ across probes of the loss and 1 − meta
      correlation);
    - ``stderr/...``: the standard error of each mean, in its own section;
    - ``saliency_run/time_s``, ``saliency_run/meta_lr``, ``saliency_run/errors`` (faults caught
      with ``on_error="warn"``), ``saliency_run/prediction_difference_{split}``
      (``smooth="forward"``: mean |p_smoothed − p|);
    - pictures ``saliency_maps/{split}`` (one grid per method: for ``num_logged_images``
      probes, the image, each layer's map and the combined map, plain and meta, of the label
      class), the filmstrip ``saliency_evolution/{split}`` (each logged probe's combined map at
      every evaluation) and a per-probe table ``saliency_probes/{split}`` (W&B; TensorBoard
      gets the pictures and a text table, CSVLogger PNG files and a CSV table).

    Every scalar also lands in ``trainer.callback_metrics`` (usable by ModelCheckpoint or
    EarlyStopping, which then see the current model's values at every validation); with no
    logger it is the only output (warned once). A layer whose maps are 1×1 or constant carries
    no spatial information: it is left out of the metrics and the combination (warned once).

    The keyword arguments are the options of :class:`~saliency_monitor.monitor.config.MonitorConfig`
    (each documented there), checked when the monitor is built; ``monitor.config`` holds them.
    """

    @records_explicit_options
    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        methods: Sequence[str] = MONITOR_METHODS,
        num_train_probes: int = 16,
        num_val_probes: int = 16,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        meta_lr: float | str | None = "calibrate",
        task: str | None = None,
        meta_params: str = "all",
        meta_batching: str = "auto",
        meta_memory: int | None = None,
        class_names: Sequence[str] | None = None,
        batch_to_probe: Callable[[Any], Any] | None = None,
        output_to_logits: Callable[[Any], Tensor] | None = None,
        smooth: str | None = None,
        lrp_composite: Any = "epsilon_plus_flat",
        context_size: int = DEFAULT_CONTEXT_SIZE,
        num_logged_images: int = 4,
        combine_weights: str = "uniform",
        combine_mode: str = "sum",
        pointing_tolerance: float = 15.0,
        probe_batch_size: int = 16,
        seed: int = 0,
        on_error: str = "warn",
        colormap: str = "turbo",
    ) -> None:
        super().__init__()
        self.config = MonitorConfig(
            layers=layers, methods=methods, num_train_probes=num_train_probes, num_val_probes=num_val_probes,
            every_n_epochs=every_n_epochs, every_n_train_steps=every_n_train_steps, meta_lr=meta_lr, task=task,
            meta_params=meta_params, meta_batching=meta_batching, meta_memory=meta_memory, class_names=class_names,
            batch_to_probe=batch_to_probe,
            output_to_logits=output_to_logits, smooth=smooth, lrp_composite=lrp_composite, context_size=context_size,
            num_logged_images=num_logged_images, combine_weights=combine_weights, combine_mode=combine_mode,
            pointing_tolerance=pointing_tolerance, probe_batch_size=probe_batch_size, seed=seed, on_error=on_error,
            colormap=colormap,
        )
        self.state = MonitorState()
        self._warn = WarnOnce()

    @property
    def last_pictures(self) -> Pictures:
        """The latest evaluation's pictures on rank 0: ``{split: [(uint8 (H, W, 3) array, caption)]}``,
        one per method (empty before the first evaluation or with ``num_logged_images=0``)."""
        return dict(self.state.last_pictures)

    @property
    def last_filmstrips(self) -> dict[str, np.ndarray]:
        """The latest filmstrips on rank 0: ``{split: uint8 (H, W, 3) array}`` (rows: the logged probes,
        columns: evaluations; :mod:`~saliency_monitor.monitor.filmstrip`); empty before the first
        evaluation or with ``num_logged_images=0``."""
        return {split: picture for split, (picture, _) in self.state.last_filmstrips.items()}

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Each ``fit`` starts a fresh history (new probes, baseline, drift, counters): one monitor
        can serve several fits (k-fold, sweeps); a resume then restores the checkpoint's history."""
        refuse_sharded_strategy(trainer.strategy)
        if self.config.layers is not None:
            validate_layer_names(pl_module, self.config.layers)
        if stage == "fit":
            self.state, self._warn = MonitorState(), WarnOnce()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with eager(), isolated_rng(evaluation_seed(self.config.seed, "fit start")):
            prepare(self.config, self.state, trainer, pl_module, SPLITS, self._warn)
        publish_run(trainer, self.config, self.state)
        if self.state.evaluations == 0:  # the baseline (skipped when resuming)
            self._run(trainer, pl_module, tuple(self.state.probes))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The step schedule; the epoch schedule at the epoch's last batch, before the epoch's
        validation, so callbacks acting at validation end see this epoch's values."""
        every, step = self.config.every_n_train_steps, trainer.global_step
        if every and step > self.state.last_step and step % every == 0:
            self._run(trainer, pl_module, tuple(self.state.probes))
        elif batch_idx + 1 == trainer.num_training_batches:
            self._epoch_schedule(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch schedule when the epoch's length is not known in advance (iterable data)."""
        self._epoch_schedule(trainer, pl_module)

    def _epoch_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        every = self.config.every_n_epochs
        if every and (trainer.current_epoch + 1) % every == 0 and trainer.global_step > self.state.last_step:
            self._run(trainer, pl_module, tuple(self.state.probes))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A standalone ``trainer.validate()`` evaluates the val probes once. During a fit, when a
        callback monitors one of the monitor's keys (``EarlyStopping``, ``ModelCheckpoint``), every
        validation that follows new training steps gets an evaluation first, so what that callback
        reads at validation end is the current model's value (with ``val_check_interval < 1`` too)."""
        if trainer.sanity_checking or trainer.state.fn not in ("fit", "validate"):
            return
        drawn = "val" not in self.state.probes and self.config.num_val_probes > 0
        if drawn:  # a standalone validate, or the val data Lightning loads only now (not at fit start)
            with eager(), isolated_rng(evaluation_seed(self.config.seed, "fit start")):
                prepare(self.config, self.state, trainer, pl_module, ("val",), self._warn)
            drawn = "val" in self.state.probes
            if drawn:
                publish_run(trainer, self.config, self.state)
        if trainer.state.fn == "validate":
            self._run(trainer, pl_module, ("val",) if "val" in self.state.probes else ())
        elif self.state.evaluations and _monitored(trainer):
            fresh = trainer.global_step > self.state.last_step
            self._run(trainer, pl_module, tuple(self.state.probes) if fresh else ("val",) if drawn else ())

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict({name: getattr(self.config, name) for name in RESUMED_OPTIONS})

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load_state_dict(state_dict)

    # ------------------------------------------------------------------ one evaluation

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, splits: Sequence[str]) -> None:
        """One evaluation, with ``on_error`` deciding what a fault does."""
        if not splits or self.state.plan is None:
            return
        try:
            with eager():
                self._evaluate(trainer, pl_module, splits)
        except Exception as error:
            if self.config.on_error == "raise":
                raise
            self.state.errors += 1
            self.state.last_step = trainer.global_step
            self._warn(trainer, "error", (
                f"SaliencyMonitor: evaluation at step {trainer.global_step} failed and was skipped; training "
                f"goes on (on_error='warn'; later faults are only counted in saliency_run/errors):\n"
                + "".join(traceback.format_exception(type(error), error, error.__traceback__))
            ))
            try:
                layout = KeyLayout.of(self.state.plan.layers, tuple(self.state.probes))
                publish(trainer, layout, {MetricKey(None, "errors"): float(self.state.errors)}, {}, {}, self._warn)
            except Exception:  # noqa: BLE001 - a failing logger: already reported above, counted here
                self.state.errors += 1

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, splits: Sequence[str]) -> None:
        start = time.perf_counter()
        state, config, plan = self.state, self.config, self.state.plan
        assert plan is not None
        results = evaluate_splits(
            trainer, pl_module, splits, state.probes, state.previous, plan, config.seed, state.start
        )
        for split, result in results.items():
            if result.nonfinite:
                self._warn(trainer, "nonfinite", (
                    f"SaliencyMonitor: at step {trainer.global_step} some {split} maps overflowed to inf/NaN "
                    f"(probes per map: {result.nonfinite}); their metrics are NaN. With meta maps this means the meta "
                    f"step ({plan.meta_lr}) is too large for the model now: pass a smaller `meta_lr`."
                ))
            if result.degenerate:
                self._warn(trainer, "degenerate", degenerate_message(result.degenerate, split, trainer.global_step))
        scalars = report.summary_scalars(results)
        rank_zero = trainer.is_global_zero
        state.last_pictures = report.pictures(
            results, state.probes, plan, state.class_name, config.num_logged_images, config.colormap
        ) if rank_zero else {}
        state.last_filmstrips = update_filmstrips(
            state.filmstrips, results, state.probes, plan, state.class_name, config.num_logged_images,
            config.colormap, trainer.global_step,
        ) if rank_zero else {}
        scalars[MetricKey(None, "time_s")] = time.perf_counter() - start
        if plan.meta_lr is not None:
            scalars[MetricKey(None, "meta_lr")] = plan.meta_lr
        scalars[MetricKey(None, "errors")] = float(state.errors)
        for split, result in results.items():
            state.previous[split] = result.reference
            state.start[split] = start_reference(state.start.get(split), result.reference)
        state.evaluations += 1
        state.last_step = trainer.global_step
        tables = {
            split: report.probe_table(result, state.identities[split], plan, state.class_name,
                                      with_boxes=state.probes[split].boxes is not None)
            for split, result in results.items()
        } if rank_zero else {}
        publish(trainer, KeyLayout.of(plan.layers, tuple(state.probes)), scalars, state.last_pictures, tables,
                self._warn)
        publish_filmstrips(trainer, state.last_filmstrips, self._warn)
        publish_largest_gap(trainer, KeyLayout.of(plan.layers, tuple(state.probes)), state.largest_gap, scalars)


def _monitored(trainer: pl.Trainer) -> bool:
    """Whether a callback of the trainer monitors one of the monitor's scalars."""
    callbacks = getattr(trainer, "callbacks", [])  # set by the Trainer, not in its type stubs
    return any(is_scalar_key(getattr(callback, "monitor", None)) for callback in callbacks)
