"""Fit start: the probes drawn (or re-read from a checkpoint) and the evaluation plan settled.

What the config leaves open is settled here, once per fit, from the model and the data: the
layers (:func:`~saliency_monitor.engine.default_layers` when not given), the task (inferred
from the probes' labels when not given) and the meta step (a number, the optimizer's rate or
the calibrated step). A resume re-reads the checkpoint's probes and settled values, except
where an option given explicitly differs (:mod:`.resume`). Then one probe is evaluated with the
settled plan: a monitor that could never produce a value (layers run under ``torch.no_grad()``,
a layer whose output is not a map, a module that runs twice per forward, ...) fails here.
Errors here are configuration errors: they are raised whatever ``on_error`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar, cast

from torch import nn
from torch.utils.data import DataLoader

from ..engine.compute import saliency_maps
from ..engine.layers import NO_GRAD_HINT, default_layers, usable_layers, validate_layer_names
from ..engine.meta import DEFAULT_META_LR
from ..engine.meta_vectorised import time_meta_batching
from ..engine.model_io import device_and_dtype, model_logits
from .config import MonitorConfig
from .distributed import agree
from .evaluation import DriftReference, EvaluationPlan, LabelMaps, evaluate_probes
from .inputs import fit_options
from .keys import SPLITS, KeyLayout
from .meta_step import calibrate_meta_lr
from .probes import ProbeBatch, draw_probes, label_max_min_targets, load_probes, probe_chunks
from .resume import Resumed
from .state import MonitorState
from .trainer import WarnOnce, dataset_class_names, first_dataloader, optimizer_lr

if TYPE_CHECKING:
    import pytorch_lightning as pl

T = TypeVar("T")


def prepare(
    config: MonitorConfig, state: MonitorState, trainer: pl.Trainer, module: nn.Module, splits: Sequence[str],
    warn: WarnOnce,
) -> None:
    """Draw (or re-read) the probes of ``splits`` that are not there yet; settle the plan once."""
    resumed = Resumed.of(config, state, trainer, warn)
    sources = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
    counts = {"train": config.num_train_probes, "val": config.num_val_probes}
    if getattr(trainer, "fast_dev_run", False):  # set by the Trainer, not in its type stubs
        counts = {split: min(count, 2) for split, count in counts.items()}
    for split in splits:
        if split in state.probes or counts[split] == 0:
            continue
        loader = first_dataloader(sources[split])
        if loader is None:
            if split == "val":  # Lightning loads it at the first validation when that is not in epoch 0
                warn(trainer, "no-val", "SaliencyMonitor: no val dataloader at fit start; val probes are drawn at the "
                     "first validation, if there is one (until then the meta-correlation gap is not logged).")
                continue
            raise ValueError("Expected a training DataLoader to draw probes from, but the trainer has none.")
        state.probes[split], state.identities[split] = _probes(config, resumed, state, split, loader, counts[split])
        if (resized := state.probes[split].resized) is not None:
            warn(trainer, f"resized-{split}", resized.message(split))
        if state.class_names is None:
            state.class_names = dataset_class_names(config.class_names, loader)
    if state.plan is None and state.probes:
        state.plan = _on_every_rank(trainer, lambda: _plan(config, state, trainer, module, resumed, warn))
        if trainer.world_size > 1:  # a calibrated step: rank 0's value everywhere
            state.plan = replace(state.plan, meta_lr=trainer.strategy.broadcast(state.plan.meta_lr, src=0))
        _on_every_rank(trainer, lambda: _check_the_plan_works(state, module))


def _on_every_rank(trainer: pl.Trainer, settle: Callable[[], T]) -> T:
    """``settle()`` on every rank; under data parallelism the ranks then agree that none failed
    (a fault on one rank raises on all, and no rank waits on a collective another skipped)."""
    error, value = None, None
    try:
        value = settle()
    except Exception as caught:  # noqa: BLE001 - re-raised after the ranks agree
        error = caught
    if trainer.world_size > 1:
        agree(trainer.strategy, error)
    if error is not None:
        raise error
    return cast(T, value)


def _probes(
    config: MonitorConfig, resumed: Resumed, state: MonitorState, split: str, loader: DataLoader, count: int
) -> tuple[ProbeBatch, list[int]]:
    """The checkpoint's probes of ``split`` when they still apply, else a new draw (drift restarts)."""
    reader, names, seed = config.batch_to_probe, config.class_names, resumed.seed
    identities = resumed.identities(split)
    if identities is not None:
        try:
            return load_probes(loader, identities, seed=seed, batch_to_probe=reader, class_names=names), identities
        except ValueError as error:  # the data changed since the checkpoint: its probes are gone
            resumed.unreadable(split, identities, error)
    state.forget(split)  # new probes: drift, drift_from_start and the filmstrip restart
    probes, identities = draw_probes(loader, count, seed=seed, batch_to_probe=reader, class_names=names)
    if len(probes) < count:
        resumed.warn(resumed.trainer, f"few-{split}", (
            f"SaliencyMonitor: asked for {count} {split} probes but the {split} data has only {len(probes)} "
            "images; using all of them."
        ))
    return probes, identities


def _plan(
    config: MonitorConfig, state: MonitorState, trainer: pl.Trainer, module: nn.Module, resumed: Resumed,
    warn: WarnOnce,
) -> EvaluationPlan:
    first = next(iter(state.probes.values()))
    _, sample = next(probe_chunks(module, first.select([0]), 1))
    saliency = fit_options(module, sample, config.saliency)  # (B, 1) logits as two classes; output checked now
    layers = validate_layer_names(module, config.layers or resumed.layers() or default_layers(module, sample))
    KeyLayout.of(layers, SPLITS)  # the layers' key labels must stay distinct
    _restart_changed_layers(state, resumed.layers(), layers, trainer, warn)
    task, task_changed = resumed.task(first.task)
    if task_changed:
        state.forget()
    if config.task is None and resumed.restored.get("task") is None:  # inferred from the labels
        _warn_if_one_hot(state, task, trainer, warn)
    plan = EvaluationPlan.of(
        replace(saliency, layers=tuple(layers), task=task), combine_weights=config.combine_weights,
        combine_mode=config.combine_mode, pointing_tolerance=config.pointing_tolerance,
        batch_size=config.probe_batch_size,
    )
    meta_lr = resumed.meta_lr()
    if meta_lr is not None:
        plan = _settle_meta_batching(module, first, plan)
    if meta_lr == "optimizer":
        meta_lr = optimizer_lr(trainer)
    elif meta_lr == "calibrate":
        meta_lr = calibrate_meta_lr(module, first, plan)
    return replace(plan, meta_lr=None if meta_lr is None else float(meta_lr))


def _settle_meta_batching(module: nn.Module, probes: ProbeBatch, plan: EvaluationPlan) -> EvaluationPlan:
    """``meta_batching="auto"`` settled: the loop on a CPU (FLOP-bound: the loop is faster there);
    on other devices the faster of the loop and vmap, timed on up to 4 probes' label-class meta maps."""
    options = plan.saliency
    if options.meta_batching != "auto":
        return plan
    chosen = "loop"
    if device_and_dtype(module)[0].type != "cpu":
        _, images = next(probe_chunks(module, probes.select(list(range(min(4, len(probes))))), 4))
        labels = label_max_min_targets(model_logits(module, images, options.output_to_logits), probes, plan.task)[0]
        seconds = time_meta_batching(lambda batching: saliency_maps(
            module, images, labels[:, :1], replace(options, meta_lr=DEFAULT_META_LR, meta_batching=batching)))
        chosen = min(seconds, key=lambda batching: seconds[batching])
    return replace(plan, saliency=replace(options, meta_batching=chosen))


def _warn_if_one_hot(state: MonitorState, task: str, trainer: pl.Trainer, warn: WarnOnce) -> None:
    """Multi-hot labels with exactly one class per probe: one-hot labels of a single-label model?"""
    probes = list(state.probes.values())
    if task == "multilabel" and all(len(classes) == 1 for batch in probes for classes in batch.classes):
        warn(trainer, "one-hot", (
            "SaliencyMonitor: the labels are float vectors with exactly one class per probe, so the task was "
            "inferred as 'multilabel' (the meta step uses binary cross-entropy, the label class is the true class "
            "with the highest score). If the model is trained with softmax cross-entropy on one-hot labels, pass "
            "task='multiclass'; pass task='multilabel' to silence this warning."
        ))


def _check_the_plan_works(state: MonitorState, module: nn.Module) -> None:
    """Evaluate one probe now: a monitor that can never produce a value is a configuration
    fault, raised at fit start whatever ``on_error`` says (``on_error`` is for faults during
    training)."""
    plan = state.plan
    assert plan is not None
    first = next(iter(state.probes.values())).select([0])
    try:
        evaluate_probes(module, first, plan)
    except Exception as error:
        raise ValueError(_cannot_work(module, first, plan, error)) from error


def _cannot_work(module: nn.Module, probe: ProbeBatch, plan: EvaluationPlan, error: Exception) -> str:
    """The fit-start error: what failed, on which layers, and the layers that can work."""
    try:
        _, sample = next(probe_chunks(module, probe, 1))
        usable = usable_layers(module, sample)
    except Exception:  # noqa: BLE001 - the hint is optional; the cause is reported either way
        usable = None
    hint = ""
    if usable == []:
        hint = NO_GRAD_HINT
    elif usable:
        shown = ", ".join(repr(name) for name in usable[:12]) + (", ..." if len(usable) > 12 else "")
        hint = f" Layers of this model saliency can be computed at: {shown}."
    return (
        f"SaliencyMonitor cannot compute its maps on this model with layers={list(plan.layers)} and "
        f"methods={[m.name for m in plan.methods]}: {type(error).__name__}: {error}\nChecked at fit start on one "
        f"probe: this is a configuration fault, raised whatever `on_error` says.{hint}"
    )


def _restart_changed_layers(
    state: MonitorState, previous: list[str] | None, layers: list[str], trainer: pl.Trainer, warn: WarnOnce
) -> None:
    """Resuming with other layers: drift and drift_from_start restart for what changed (the combined
    map included), the filmstrip (combined maps) restarts."""
    if previous is None or list(previous) == list(layers):
        return
    warn(trainer, "layers-changed", (
        f"SaliencyMonitor: the checkpoint's monitor used layers {list(previous)}, this run uses {list(layers)}; "
        "drift restarts (NaN at the first evaluation) for the layers that changed, and the filmstrips restart."
    ))
    kept = set(previous) & set(layers)  # the combined map is another combination now: dropped

    def keep(ref: DriftReference) -> DriftReference:
        maps = {m: {layer: t for layer, t in per.items() if layer in kept} for m, per in ref.maps.items()}
        return DriftReference(LabelMaps(maps), ref.targets)

    state.previous = {split: keep(ref) for split, ref in state.previous.items()}
    state.start = {split: keep(ref) for split, ref in state.start.items()}
    state.filmstrips.clear()
