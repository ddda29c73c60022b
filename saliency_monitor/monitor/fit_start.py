"""Fit start: the probes drawn (or re-read from a checkpoint) and the evaluation plan settled.

What the config leaves open is settled here, once per fit, from the model and the data: the
layers (:func:`~saliency_monitor.engine.default_layers` when not given), the task (inferred
from the probes' labels when not given) and the meta step (a number, the optimizer's rate or
the calibrated step). Errors here are configuration errors: they are raised whatever
``on_error`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from torch import nn

from ..engine.layers import default_layers, validate_layer_names
from ..engine.model_io import model_logits
from .config import MonitorConfig
from .distributed import agree
from .evaluation import DriftReference, EvaluationPlan, LabelMaps
from .meta_step import calibrate_meta_lr
from .probes import ProbeBatch, draw_probes, load_probes, probe_chunks
from .state import MonitorState
from .trainer import WarnOnce, dataset_class_names, first_dataloader, optimizer_lr

if TYPE_CHECKING:
    import pytorch_lightning as pl


def prepare(
    config: MonitorConfig, state: MonitorState, trainer: pl.Trainer, module: nn.Module, splits: Sequence[str],
    warn: WarnOnce,
) -> None:
    """Draw (or re-read) the probes of ``splits`` that are not there yet; settle the plan once."""
    restored = state.restored or {}
    seed = restored.get("seed", config.seed)
    sources = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
    counts = {"train": config.num_train_probes, "val": config.num_val_probes}
    if getattr(trainer, "fast_dev_run", False):  # set by the Trainer, not in its type stubs
        counts = {split: min(count, 2) for split, count in counts.items()}
    for split in splits:
        if split in state.probes or counts[split] == 0:
            continue
        loader = first_dataloader(sources[split])
        if loader is None:
            if split == "val":
                warn(trainer, "no-val", "SaliencyMonitor: no val dataloader; val probes are skipped and the "
                     "meta-correlation gap is not logged.")
                continue
            raise ValueError("Expected a training DataLoader to draw probes from, but the trainer has none.")
        reader, names = config.batch_to_probe, config.class_names
        identities = restored.get("identities", {}).get(split)
        if identities is not None:
            probes = load_probes(loader, identities, seed=seed, batch_to_probe=reader, class_names=names)
        else:
            probes, identities = draw_probes(loader, counts[split], seed=seed, batch_to_probe=reader, class_names=names)
            if len(probes) < counts[split]:
                warn(trainer, f"few-{split}", (
                    f"SaliencyMonitor: asked for {counts[split]} {split} probes but the {split} data has only "
                    f"{len(probes)} images; using all of them."
                ))
        state.probes[split] = probes
        state.identities[split] = list(identities)
        if state.class_names is None:
            state.class_names = dataset_class_names(config.class_names, loader)
    if state.plan is None and state.probes:
        state.plan = _plan(config, state, trainer, module, restored, warn)


def _plan(
    config: MonitorConfig, state: MonitorState, trainer: pl.Trainer, module: nn.Module, restored: dict[str, Any],
    warn: WarnOnce,
) -> EvaluationPlan:
    first = next(iter(state.probes.values()))
    _, sample = next(probe_chunks(module, first.select([0]), 1))
    model_logits(module, sample, config.output_to_logits)  # a clear error now, not a warning per evaluation
    layers = validate_layer_names(module, config.layers or restored.get("layers") or default_layers(module, sample))
    _restart_changed_layers(state, restored.get("layers"), layers, trainer, warn)
    task = config.task or restored.get("task") or first.task
    plan = EvaluationPlan.of(
        replace(config.saliency, layers=tuple(layers), task=task), combine_weights=config.combine_weights,
        combine_mode=config.combine_mode, pointing_tolerance=config.pointing_tolerance,
        batch_size=config.probe_batch_size,
    )
    if "meta_lr" in restored:
        meta_lr = restored["meta_lr"]
    elif config.meta_lr == "optimizer":
        meta_lr = optimizer_lr(trainer)
    elif config.meta_lr == "calibrate":
        meta_lr = _calibrate(trainer, module, first, plan)
    else:
        meta_lr = config.meta_lr
    return replace(plan, meta_lr=None if meta_lr is None else float(meta_lr))


def _restart_changed_layers(
    state: MonitorState, previous: Sequence[str] | None, layers: list[str], trainer: pl.Trainer, warn: WarnOnce
) -> None:
    """Resuming with other layers: drift restarts for what changed (the combined map included)."""
    if previous is None or list(previous) == list(layers):
        return
    warn(trainer, "layers-changed", (
        f"SaliencyMonitor: the checkpoint's monitor used layers {list(previous)}, this run uses {list(layers)}; "
        "drift restarts (NaN at the first evaluation) for the layers that changed."
    ))
    kept = set(previous) & set(layers)  # the combined map is another combination now: dropped
    state.previous = {
        split: DriftReference(
            LabelMaps({m: {layer: t for layer, t in per.items() if layer in kept} for m, per in ref.maps.items()}),
            ref.targets,
        )
        for split, ref in state.previous.items()
    }


def _calibrate(trainer: pl.Trainer, module: nn.Module, probes: ProbeBatch, plan: EvaluationPlan) -> float:
    """The calibrated step; under data parallelism every rank computes it, the ranks agree
    that none failed, and rank 0's value is used everywhere."""
    error, value = None, 0.0
    try:
        value = calibrate_meta_lr(module, probes, plan)
    except Exception as caught:  # noqa: BLE001 - re-raised after the ranks agree
        error = caught
    if trainer.world_size > 1:
        agree(trainer.strategy, error)
        return float(trainer.strategy.broadcast(value, src=0))
    if error is not None:
        raise error
    return value
