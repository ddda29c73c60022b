"""The SaliencyMonitor's logic, written against the Trainer's public API only.

It imports no Lightning namespace: :mod:`saliency_monitor.callback` (``pytorch_lightning``)
and :mod:`saliency_monitor.lightning` (``lightning.pytorch``) mix it into each namespace's
``Callback`` class, because the two packages are separate class trees and a Trainer only
accepts callbacks of its own.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .saliency import DEFAULT_CONTEXT_SIZE, RELEVANCE_METHODS, check_method, check_relevance_options
from .evaluation import (
    COMBINED,
    LABEL,
    METRICS,
    MAX,
    MIN,
    DriftReference,
    EvaluationSettings,
    SplitEvaluation,
    check_settings,
    evaluate_probes,
    model_logits,
    summarize,
)
from .distributed import agree, gather_evaluation, select_reference, shard, shard_sizes
from .layers import default_layers, validate_layer_names
from .loggers import SaliencyLogger, adapt_loggers
from .meta import META_PARAMS, TASKS
from .smooth import check_smooth
from .meta_lr import META_LR_RULES, calibrate_meta_lr
from .probes import ProbeBatch, draw_probes, load_probes
from .render import COLORMAPS, GridRow, saliency_grid

DEFAULT_METHODS = ("norm_grad_selective", "norm_grad")
SPLITS = ("train", "val")
ON_ERROR = ("warn", "raise")
_STATE_VERSION = 1
_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class SaliencyMonitorWarning(UserWarning):
    """Warnings of the SaliencyMonitor (each one is issued once per monitor)."""


class SaliencyMonitorLogic:
    """Backpropagation saliency on fixed probe images, logged while a model trains.

    Add it to a Trainer; nothing else changes::

        trainer = Trainer(callbacks=[SaliencyMonitor()], logger=WandbLogger(project="voc"))

    At fit start (the baseline, e.g. the pretrained model before fine-tuning), then every
    ``every_n_epochs`` (default 1) at train-epoch end or every ``every_n_train_steps``, it
    computes on ``num_train_probes`` training and ``num_val_probes`` validation images
    (drawn once from the dataloaders' datasets, spread across classes, without touching any
    RNG or sampler that training uses) the maps of the label class (multilabel: the true
    class with the highest score) and of the max- and min-predicted classes, plain and
    meta (one SGD step on the single image's loss, §4.4), with each method at each layer and
    combined across layers (§4.2), and logs (``split`` ∈ {train, val}; ``layer`` a layer name
    or ``combined``; every value a mean over probes, NaN-probes left out):

    - ``saliency/{split}/class_sensitivity/{method}/{layer}``: Spearman ρ between the maps of
      the max- and min-predicted class (§4.3; near 0 = the map depends on the class).
    - ``saliency/{split}/meta_class_sensitivity/{method}/{layer}``: the same on meta maps.
    - ``saliency/{split}/meta_correlation/{method}/{layer}``: ρ between the label map and its
      meta map (supp. D: lower on images the model has not fitted).
    - ``saliency/meta_correlation_gap/{method}/{layer}``: train − val meta correlation, the
      overfitting signal (and ``saliency/meta_correlation_gap_stderr/...``).
    - ``saliency/{split}/drift/{method}/{layer}``: ρ between the label map now and at the
      previous evaluation.
    - ``saliency/{split}/total_variation/{method}/{layer}``: noise of the label map (TV of the
      standardised map, Smooth Deep Saliency).
    - ``saliency/{split}/pointing_game/{method}/{layer}``: fraction of probes whose label map
      peaks within ``pointing_tolerance`` px of the class's boxes/masks (only when the
      probes carry them).
    - ``saliency/{split}/relevance_ssim/salient_relevance/{layer}`` (method
      ``salient_relevance`` only): SSIM between the LRP map and its Salient Relevance map
      (Beyond Saliency's measure of how much the detection reshapes the relevance).
    - ``saliency/{split}/{metric}_stderr/{method}/{layer}``: the standard error of each mean.
    - ``saliency/{split}/prediction_difference`` (``smooth="forward"`` only): mean over probes
      and classes of |p_smoothed − p|, how far the forward smoothing moves the predictions.
    - ``saliency/time_s`` (seconds the evaluation took), ``saliency/meta_lr`` (the meta step
      used), ``saliency/errors`` (faults caught with ``on_error="warn"``).
    - Pictures ``saliency_maps/{split}`` (one grid per method: for ``num_logged_images``
      probes, the image, each layer's map and the combined map, plain and meta, of the
      label class) and a per-probe table ``saliency_probes/{split}`` (W&B; TensorBoard gets
      the pictures and a text table, CSVLogger PNG files and a CSV table in its directory).

    Every scalar also lands in ``trainer.callback_metrics`` (usable by ModelCheckpoint or
    EarlyStopping); with no logger it is the only output (warned once).

    Args:
        layers: layer names from ``pl_module.named_modules()`` (or ``"input"``); None =
            :func:`~saliency_monitor.default_layers` of the module.
        methods: saliency methods (see :func:`~saliency_monitor.compute_saliency`).
        num_train_probes, num_val_probes: probe images per split (val 0 = train only).
        every_n_epochs, every_n_train_steps: the schedule; give at most one (neither: every
            epoch).
        meta_lr: the meta step: a number (an SGD learning rate; the paper uses 0.002),
            ``"calibrate"`` (default, see :mod:`saliency_monitor.meta_lr`), ``"optimizer"``
            (the first optimizer's learning rate) or None (no meta maps or meta metrics).
        task: ``"multiclass"`` or ``"multilabel"`` (the meta step's loss and how the label
            class is chosen); None = inferred from the labels.
        meta_params: parameters the meta step moves: ``"all"`` or ``"trainable"``.
        class_names: names for pictures and tables (default: the dataset's ``classes``
            attribute if it has one, else indices); also maps VOC annotation names to indices.
        batch_to_probe: callable turning one of your batches into ``(images, labels)``, for
            batch formats the default parser does not know (see
            :func:`saliency_monitor.probes.parse_batch`).
        output_to_logits: for modules whose forward does not return the (B, C) logits tensor
            (a dict, a tuple, ...): maps the output to it, e.g. ``lambda out: out["logits"]``.
        smooth: checkerboard-noise removal at stride-2 convolutions during the saliency passes
            (:mod:`saliency_monitor.smooth`): ``"backward"``, ``"forward"`` (changes the
            predictions; their change is logged) or None. Gradient methods only.
        lrp_composite: the LRP rules of methods ``lrp`` and ``salient_relevance``:
            ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"`` or a ``zennit.core.Composite``.
        context_size: long edge (px) at which ``salient_relevance`` runs context-aware
            saliency detection (Goferman et al. use 250; the cost grows with its 4th power).
        num_logged_images: probes shown in the pictures (0 = no pictures).
        combine_weights, combine_mode: the layer combination (``uniform``/``linear``,
            ``sum``/``product``).
        pointing_tolerance: pointing game radius in pixels (15 in the paper).
        probe_batch_size: probes per saliency call (bounds memory).
        seed: seeds the probe draw (and random transforms while drawing).
        on_error: ``"warn"`` (a fault inside the monitor is reported once with its
            traceback, counted in ``saliency/errors``, and training goes on) or ``"raise"``.
        colormap: colour map of the pictures (``turbo``, ``viridis``, ``gray``).
    """

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        methods: Sequence[str] = DEFAULT_METHODS,
        num_train_probes: int = 16,
        num_val_probes: int = 16,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        meta_lr: float | str | None = "calibrate",
        task: str | None = None,
        meta_params: str = "all",
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
        if layers is not None:
            layers = _check_names(layers, "layers")
        methods = _check_names(methods, "methods")
        for method in methods:
            check_method(method)
        if len(set(methods)) != len(methods):
            raise ValueError(f"Expected distinct `methods`, but got {list(methods)}.")
        _check_int(num_train_probes, "num_train_probes", minimum=1)
        _check_int(num_val_probes, "num_val_probes", minimum=0)
        if every_n_epochs is not None and every_n_train_steps is not None:
            raise ValueError(
                "Expected at most one of `every_n_epochs` and `every_n_train_steps`, but got "
                f"every_n_epochs={every_n_epochs!r} and every_n_train_steps={every_n_train_steps!r}."
            )
        if every_n_train_steps is not None:
            _check_int(every_n_train_steps, "every_n_train_steps", minimum=1)
        else:
            every_n_epochs = 1 if every_n_epochs is None else _check_int(every_n_epochs, "every_n_epochs", minimum=1)
        if isinstance(meta_lr, str):
            if meta_lr not in META_LR_RULES:
                raise ValueError(
                    f"Expected `meta_lr` to be a non-zero number, one of {list(META_LR_RULES)} or None, "
                    f"but got {meta_lr!r}."
                )
        elif meta_lr is not None and (
            isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not math.isfinite(meta_lr) or meta_lr == 0
        ):
            raise ValueError(
                f"Expected `meta_lr` to be a non-zero number, one of {list(META_LR_RULES)} or None, but got {meta_lr!r}."
            )
        if task is not None and task not in TASKS:
            raise ValueError(f"Expected `task` to be one of {list(TASKS)} or None (inferred), but got {task!r}.")
        _check_choice(meta_params, "meta_params", META_PARAMS)
        if class_names is not None:
            class_names = _check_names(class_names, "class_names")
        if batch_to_probe is not None and not callable(batch_to_probe):
            raise TypeError(f"Expected `batch_to_probe` to be callable, but got {type(batch_to_probe).__name__}.")
        if output_to_logits is not None and not callable(output_to_logits):
            raise TypeError(f"Expected `output_to_logits` to be callable, but got {type(output_to_logits).__name__}.")
        check_smooth(smooth)
        check_relevance_options([m for m in methods if m in RELEVANCE_METHODS], smooth, lrp_composite, context_size)
        _check_int(num_logged_images, "num_logged_images", minimum=0)
        if isinstance(pointing_tolerance, bool) or not isinstance(pointing_tolerance, (int, float)) or not pointing_tolerance >= 0:
            raise ValueError(f"Expected `pointing_tolerance` to be a number >= 0, but got {pointing_tolerance!r}.")
        _check_int(probe_batch_size, "probe_batch_size", minimum=1)
        _check_int(seed, "seed", minimum=0)
        _check_choice(on_error, "on_error", ON_ERROR)
        _check_choice(colormap, "colormap", COLORMAPS)
        check_settings(EvaluationSettings(
            layers=(), methods=tuple(methods), task=task or "multiclass", meta_lr=None,
            combine_weights=combine_weights, combine_mode=combine_mode,
        ))

        self.layers = layers
        self.methods = tuple(methods)
        self.num_train_probes = num_train_probes
        self.num_val_probes = num_val_probes
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.meta_lr = meta_lr
        self.task = task
        self.meta_params = meta_params
        self.class_names = class_names
        self.batch_to_probe = batch_to_probe
        self.output_to_logits = output_to_logits
        self.smooth = smooth
        self.lrp_composite = lrp_composite
        self.context_size = context_size
        self.num_logged_images = num_logged_images
        self.combine_weights = combine_weights
        self.combine_mode = combine_mode
        self.pointing_tolerance = float(pointing_tolerance)
        self.probe_batch_size = probe_batch_size
        self.seed = seed
        self.on_error = on_error
        self.colormap = colormap

        self._probes: dict[str, ProbeBatch] = {}
        self._identities: dict[str, list[int]] = {}
        self._previous: dict[str, DriftReference] = {}
        self._settings: EvaluationSettings | None = None
        self._names: list[str] | None = None
        self._evaluations = 0
        self._last_step = -1
        self._errors = 0
        self._warned: set[str] = set()
        self._restored: dict[str, Any] | None = None
        self._pictures_last: dict[str, list[tuple[Any, str]]] = {}

    @property
    def last_pictures(self) -> dict[str, list[tuple[Any, str]]]:
        """The latest evaluation's pictures on rank 0: ``{split: [(uint8 (H, W, 3) array, caption)]}``,
        one per method (empty before the first evaluation or with ``num_logged_images=0``)."""
        return dict(self._pictures_last)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        refuse_sharded_strategy(trainer.strategy)
        if self.layers is not None:
            validate_layer_names(pl_module, self.layers)

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        with _eager():
            self._prepare(trainer, pl_module, splits=SPLITS)
        if self._evaluations == 0:  # the baseline (skipped when resuming)
            self._run(trainer, pl_module, splits=tuple(self._probes))

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step > self._last_step and step % self.every_n_train_steps == 0:
            self._run(trainer, pl_module, splits=tuple(self._probes))

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            if trainer.global_step > self._last_step:
                self._run(trainer, pl_module, splits=tuple(self._probes))

    def on_validation_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """A standalone ``trainer.validate()`` evaluates the val probes once."""
        if trainer.sanity_checking or trainer.state.fn != "validate":
            return
        with _eager():
            self._prepare(trainer, pl_module, splits=("val",))
        if "val" in self._probes:
            self._run(trainer, pl_module, splits=("val",))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "identities": {split: list(ids) for split, ids in self._identities.items()},
            "layers": list(self._settings.layers) if self._settings else None,
            "task": self._settings.task if self._settings else None,
            "meta_lr": self._settings.meta_lr if self._settings else None,
            "evaluations": self._evaluations,
            "last_step": self._last_step,
            "errors": self._errors,
            "previous": {
                split: {"maps": ref.maps, "targets": ref.targets} for split, ref in self._previous.items()
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"Expected a SaliencyMonitor state of version {_STATE_VERSION}, but got {state_dict.get('version')!r}."
            )
        self._restored = dict(state_dict)
        self._evaluations = int(state_dict["evaluations"])
        self._last_step = int(state_dict["last_step"])
        self._errors = int(state_dict["errors"])
        self._previous = {
            split: DriftReference(ref["maps"], ref["targets"]) for split, ref in state_dict["previous"].items()
        }

    # ------------------------------------------------------------------ preparation

    def _prepare(self, trainer: Any, pl_module: nn.Module, splits: Sequence[str]) -> None:
        """Draw (or reload) the probes, settle layers, task and meta step. Errors here are
        configuration errors: they are raised whatever ``on_error`` says."""
        restored = self._restored or {}
        seed = restored.get("seed", self.seed)
        sources = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
        counts = {"train": self.num_train_probes, "val": self.num_val_probes}
        if trainer.fast_dev_run:
            counts = {split: min(count, 2) for split, count in counts.items()}
        for split in splits:
            if split in self._probes or counts[split] == 0:
                continue
            loader = _first_dataloader(sources[split])
            if loader is None:
                if split == "val":
                    self._warn_once(trainer, "no-val", "SaliencyMonitor: no val dataloader; val probes are skipped and "
                                    "the meta-correlation gap is not logged.")
                    continue
                raise ValueError("Expected a training DataLoader to draw probes from, but the trainer has none.")
            names = self.class_names
            identities = restored.get("identities", {}).get(split)
            if identities is not None:
                probes = load_probes(loader, identities, seed=seed, batch_to_probe=self.batch_to_probe, class_names=names)
            else:
                probes, identities = draw_probes(
                    loader, counts[split], seed=seed, batch_to_probe=self.batch_to_probe, class_names=names,
                )
                if len(probes) < counts[split]:
                    self._warn_once(trainer, f"few-{split}", (
                        f"SaliencyMonitor: asked for {counts[split]} {split} probes but the {split} data has only "
                        f"{len(probes)} images; using all of them."
                    ))
            self._probes[split] = probes
            self._identities[split] = list(identities)
            if self._names is None:
                self._names = _class_names(self.class_names, loader)
        if self._settings is None and self._probes:
            self._settings = self._resolve_settings(trainer, pl_module, restored)

    def _resolve_settings(self, trainer: Any, pl_module: nn.Module, restored: dict[str, Any]) -> EvaluationSettings:
        first = next(iter(self._probes.values()))
        parameter = next(pl_module.parameters(), None)
        sample = first.images[:1]
        if parameter is not None:
            sample = sample.to(device=parameter.device, dtype=parameter.dtype)
        model_logits(pl_module, sample, self.output_to_logits)  # a clear error now, not a warning per evaluation
        layers = self.layers or restored.get("layers") or default_layers(pl_module, sample)
        layers = validate_layer_names(pl_module, layers)
        previous_layers = restored.get("layers")
        if previous_layers is not None and list(previous_layers) != list(layers):
            self._warn_once(trainer, "layers-changed", (
                f"SaliencyMonitor: the checkpoint's monitor used layers {list(previous_layers)}, this run uses "
                f"{list(layers)}; drift restarts (NaN at the first evaluation) for the layers that changed."
            ))
            kept = set(previous_layers) & set(layers)  # the combined map is another combination now: dropped
            self._previous = {
                split: DriftReference(
                    {m: {l: t for l, t in per_layer.items() if l in kept} for m, per_layer in ref.maps.items()},
                    ref.targets,
                )
                for split, ref in self._previous.items()
            }
        task = self.task or restored.get("task") or first.task
        settings = EvaluationSettings(
            layers=tuple(layers), methods=self.methods, task=task, meta_lr=None, meta_params=self.meta_params,
            combine_weights=self.combine_weights, combine_mode=self.combine_mode,
            pointing_tolerance=self.pointing_tolerance, batch_size=self.probe_batch_size,
            output_to_logits=self.output_to_logits, smooth=self.smooth,
            lrp_composite=self.lrp_composite, context_size=self.context_size,
        )
        if "meta_lr" in restored:
            meta_lr = restored["meta_lr"]
        elif self.meta_lr == "optimizer":
            meta_lr = _optimizer_lr(trainer)
        elif self.meta_lr == "calibrate":
            meta_lr = self._calibrate(trainer, pl_module, first, settings)
        else:
            meta_lr = self.meta_lr
        return replace(settings, meta_lr=None if meta_lr is None else float(meta_lr))

    def _calibrate(self, trainer: Any, pl_module: nn.Module, probes: ProbeBatch, settings: EvaluationSettings) -> float:
        """The calibrated step; under data parallelism every rank computes it, the ranks agree
        that none failed, and rank 0's value is used everywhere."""
        error, value = None, 0.0
        try:
            value = calibrate_meta_lr(pl_module, probes, settings)
        except Exception as caught:  # noqa: BLE001 - re-raised after the ranks agree
            error = caught
        if trainer.world_size > 1:
            agree(trainer.strategy, error)
            return float(trainer.strategy.broadcast(value, src=0))
        if error is not None:
            raise error
        return value

    # ------------------------------------------------------------------ evaluation

    def _run(self, trainer: Any, pl_module: nn.Module, splits: Sequence[str]) -> None:
        """One evaluation, with ``on_error`` deciding what a fault does."""
        if not splits or self._settings is None:
            return
        try:
            with _eager():
                self._evaluate(trainer, pl_module, splits)
        except Exception as error:  # noqa: BLE001 - the monitor must not kill training unless asked
            if self.on_error == "raise":
                raise
            self._errors += 1
            self._last_step = trainer.global_step
            self._warn_once(trainer, "error", (
                f"SaliencyMonitor: evaluation at step {trainer.global_step} failed and was skipped; training "
                f"goes on (on_error='warn'; later faults are only counted in saliency/errors):\n"
                + "".join(traceback.format_exception(type(error), error, error.__traceback__))
            ))
            try:
                self._publish(trainer, {"saliency/errors": float(self._errors)}, {}, trainer.global_step)
            except Exception:  # noqa: BLE001 - a failing logger: already reported above, counted here
                self._errors += 1

    def _evaluate(self, trainer: Any, pl_module: nn.Module, splits: Sequence[str]) -> None:
        start = time.perf_counter()
        settings = self._settings
        assert settings is not None
        world, rank = trainer.world_size, trainer.global_rank
        results: dict[str, SplitEvaluation] = {}
        shards = {split: shard(len(self._probes[split]), world, rank) for split in splits}
        progress = _Progress(trainer, sum(len(shards[s][0]) for s in splits), trainer.global_step)
        error: BaseException | None = None
        try:
            for split in splits:
                indices, _ = shards[split]
                probes = self._probes[split] if world == 1 else self._probes[split].select(indices)
                previous = self._previous.get(split)
                results[split] = evaluate_probes(
                    pl_module, probes, settings, previous if world == 1 else select_reference(previous, indices),
                    progress=progress.update,
                )
        except Exception as caught:  # noqa: BLE001 - re-raised below, after the ranks agree
            error = caught
        finally:
            progress.close()
        if world > 1:  # every rank reaches these collectives, failed or not
            agree(trainer.strategy, error)
            results = {
                split: gather_evaluation(trainer.strategy, result, shard_sizes(len(self._probes[split]), world))
                for split, result in results.items()
            }
        elif error is not None:
            raise error
        for split, result in results.items():
            if result.nonfinite:
                self._warn_once(trainer, "nonfinite", (
                    f"SaliencyMonitor: at step {trainer.global_step} some {split} maps overflowed to inf/NaN "
                    f"(probes per map: {result.nonfinite}); their metrics are NaN. With meta maps this means the meta "
                    f"step ({settings.meta_lr}) is too large for the model now: pass a smaller `meta_lr`."
                ))
        scalars = self._scalars(results)
        pictures = self._pictures(results) if trainer.is_global_zero else {}
        self._pictures_last = pictures
        scalars["saliency/time_s"] = time.perf_counter() - start
        if settings.meta_lr is not None:
            scalars["saliency/meta_lr"] = settings.meta_lr
        scalars["saliency/errors"] = float(self._errors)
        self._previous.update({split: result.reference for split, result in results.items()})
        self._evaluations += 1
        self._last_step = trainer.global_step
        tables = {split: self._table(split, result) for split, result in results.items()} if trainer.is_global_zero else {}
        self._publish(trainer, scalars, pictures, trainer.global_step, tables)

    def _scalars(self, results: dict[str, SplitEvaluation]) -> dict[str, float]:
        scalars: dict[str, float] = {}
        summaries = {split: summarize(result.values) for split, result in results.items()}
        for split, summary in summaries.items():
            for key, (mean, stderr, _) in summary.items():
                metric, rest = key.split("/", 1)
                scalars[f"saliency/{split}/{key}"] = mean
                scalars[f"saliency/{split}/{metric}_stderr/{rest}"] = stderr
        for split, result in results.items():
            if result.prediction_difference is not None:
                scalars[f"saliency/{split}/prediction_difference"] = float(result.prediction_difference.mean())
        if "train" in summaries and "val" in summaries:
            for key, (train_mean, train_se, _) in summaries["train"].items():
                metric, rest = key.split("/", 1)
                if metric == "meta_correlation" and key in summaries["val"]:
                    val_mean, val_se, _ = summaries["val"][key]
                    scalars[f"saliency/meta_correlation_gap/{rest}"] = train_mean - val_mean
                    scalars[f"saliency/meta_correlation_gap_stderr/{rest}"] = math.sqrt(train_se**2 + val_se**2)
        return scalars

    # ------------------------------------------------------------------ output

    def _pictures(self, results: dict[str, SplitEvaluation]) -> dict[str, list[tuple[Any, str]]]:
        if self.num_logged_images == 0:
            return {}
        settings = self._settings
        assert settings is not None
        layers = [*settings.layers, COMBINED]
        columns = [*_short_names(settings.layers), COMBINED]
        pictures: dict[str, list[tuple[Any, str]]] = {}
        for split, result in results.items():
            probes = self._probes[split]
            shown = range(min(self.num_logged_images, len(probes)))
            grids = []
            for method in settings.methods:
                rows = []
                for i in shown:
                    label = int(result.targets[i, LABEL])
                    caption = f"{self._class_name(label)} p={float(result.probabilities[i, label]):.2f}"
                    rows.append(GridRow(probes.images[i], [result.maps[method][l][i] for l in layers], f"{caption} · plain"))
                    if result.meta_maps is not None:
                        rows.append(GridRow(probes.images[i], [result.meta_maps[method][l][i] for l in layers], f"{caption} · meta"))
                title = f"{split} · {method} · label class"
                grid = saliency_grid(rows, columns, colormap=self.colormap, title=title)
                grids.append((grid, f"{split} {method}: image, layer maps, combined (plain and meta rows)"))
            pictures[split] = grids
        return pictures

    def _table(self, split: str, result: SplitEvaluation) -> tuple[list[str], list[list[object]]]:
        settings = self._settings
        assert settings is not None
        # the same columns at every evaluation (drift is NaN at the first): CSV tables append rows
        metrics = [m for m in METRICS if m != "pointing_game" or self._probes[split].boxes is not None]
        if settings.meta_lr is None:
            metrics = [m for m in metrics if not m.startswith("meta_")]
        columns = ["probe", "identity", "label", "label_score", "max_class", "min_class"]
        columns += [
            f"{metric}/{method}/{COMBINED}" for method in settings.methods for metric in metrics
            if metric != "relevance_ssim" or method == "salient_relevance"
        ]
        rows = []
        for i in range(len(result.targets)):
            label, top, bottom = (int(c) for c in result.targets[i, [LABEL, MAX, MIN]])
            row: list[object] = [i, self._identities[split][i], self._class_name(label),
                                 float(result.probabilities[i, label]), self._class_name(top), self._class_name(bottom)]
            for name in columns[6:]:
                row.append(float(result.values[name][i]) if name in result.values else math.nan)
            rows.append(row)
        return columns, rows

    def _publish(
        self,
        trainer: Any,
        scalars: dict[str, float],
        pictures: dict[str, list[tuple[Any, str]]],
        step: int,
        tables: dict[str, tuple[list[str], list[list[object]]]] | None = None,
    ) -> None:
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in scalars.items()})
        if not trainer.is_global_zero:
            return
        loggers = [logger for logger in trainer.loggers if type(logger).__name__ != "DummyLogger"]  # fast_dev_run
        adapters = adapt_loggers(loggers)
        if not adapters and not trainer.fast_dev_run:
            self._warn_once(trainer, "no-logger", "SaliencyMonitor: the trainer has no logger; saliency metrics are "
                            "only stored in trainer.callback_metrics.")
        for adapter in adapters:
            self._send(trainer, adapter, scalars, pictures, step, tables or {})

    def _send(
        self,
        trainer: Any,
        adapter: SaliencyLogger,
        scalars: dict[str, float],
        pictures: dict[str, list[tuple[Any, str]]],
        step: int,
        tables: dict[str, tuple[list[str], list[list[object]]]],
    ) -> None:
        adapter.log_scalars(scalars, step)
        if not pictures and not tables:
            return
        if not adapter.supports_images:
            self._warn_once(trainer, f"images-{adapter.name}", (
                f"SaliencyMonitor: logger {adapter.name} takes scalars only; saliency pictures and tables are not "
                "sent to it."
            ))
            return
        for split, grids in pictures.items():
            adapter.log_images(f"saliency_maps/{split}", [g for g, _ in grids], [c for _, c in grids], step)
        for split, (columns, rows) in tables.items():
            adapter.log_table(f"saliency_probes/{split}", columns, rows, step)

    # ------------------------------------------------------------------ small helpers

    def _class_name(self, index: int) -> str:
        if self._names is not None and 0 <= index < len(self._names):
            return self._names[index]
        return str(index)

    def _warn_once(self, trainer: Any, key: str, message: str) -> None:
        if key in self._warned or not trainer.is_global_zero:
            return
        self._warned.add(key)
        warnings.warn(message, SaliencyMonitorWarning, stacklevel=3)


class _Progress:
    """A transient progress line (tqdm, rank 0, only when the trainer shows a progress bar)."""

    def __init__(self, trainer: Any, total: int, step: int) -> None:
        self.bar = None
        if trainer.is_global_zero and getattr(trainer, "progress_bar_callback", None) is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"SaliencyMonitor (step {step})", unit="probe", leave=False,
                            dynamic_ncols=True)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def refuse_sharded_strategy(strategy: object) -> None:
    """FSDP / DeepSpeed / model-parallel strategies shard the parameters: refuse them clearly."""
    name = type(strategy).__name__
    sharded = [cls.__name__ for cls in type(strategy).__mro__ if cls.__name__ in _SHARDED_STRATEGIES]
    if sharded:
        raise ValueError(
            f"Expected a single-device or data-parallel strategy (e.g. 'ddp'), but got {name}: it shards the "
            "parameters across ranks, and the saliency maps need the whole model on each rank. Run the monitor "
            "in a separate evaluation job on a consolidated checkpoint instead."
        )


def _eager() -> AbstractContextManager[None]:
    """Compiled (``torch.compile``) modules run their original eager code here, so the
    forward hooks the saliency pass puts on submodules fire as usual."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def _first_dataloader(loaders: Any) -> torch.utils.data.DataLoader | None:
    """The DataLoader itself, or the first of a list/tuple/dict of them (Lightning's
    ``trainer.train_dataloader`` / ``val_dataloaders`` give back what the user passed)."""
    if loaders is None:
        return None
    if isinstance(loaders, torch.utils.data.DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return _first_dataloader(loaders[0]) if loaders else None
    raise TypeError(
        f"Expected the trainer's dataloaders to be torch DataLoaders (or a list/dict of them) to draw probes from, "
        f"but got {type(loaders).__name__}."
    )


def _class_names(names: Sequence[str] | None, loader: torch.utils.data.DataLoader) -> list[str] | None:
    if names is not None:
        return list(names)
    classes = getattr(loader.dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def _short_names(layers: Sequence[str]) -> list[str]:
    """Layer names without their common dotted prefix (``model.layer1`` -> ``layer1``)."""
    parts = [name.split(".") for name in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def _device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _optimizer_lr(trainer: Any) -> float:
    optimizers = trainer.optimizers
    if not optimizers:
        raise ValueError("Expected an optimizer for meta_lr='optimizer', but the trainer has none.")
    return float(optimizers[0].param_groups[0]["lr"])


def _check_names(names: object, arg: str) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"Expected `{arg}` to be a sequence of strings, but got {names!r}.")
    if not names:
        raise ValueError(f"Expected `{arg}` to name at least one, but got an empty sequence.")
    return tuple(names)


def _check_choice(value: object, arg: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Expected `{arg}` to be one of {list(choices)}, but got {value!r}.")


def _check_int(value: object, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{arg}` to be an int >= {minimum}, but got {value!r}.")
    return value
