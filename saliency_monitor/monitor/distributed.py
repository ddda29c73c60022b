"""Probe sharding across data-parallel ranks, and the gather that undoes it.

Every rank holds the same probes (drawn deterministically from the same dataset). Rank r
evaluates the contiguous shard ``[r·n, (r+1)·n)`` with n = ⌈N / world⌉; the per-probe results
are all-gathered so that every rank ends with the evaluation of all N probes, exactly as a
single process would have computed it (probes are independent: the model runs in eval mode).

Collectives are only called through the Lightning strategy's public ``all_gather`` and
``broadcast``, and every rank calls the same ones in the same order, including when its own
evaluation failed (:func:`agree` first): no rank ever waits on a collective another skips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..engine.compute import map_each
from .evaluation import DriftReference, EvaluationPlan, LabelMaps, SplitEvaluation, evaluate_probes
from .keys import COMBINED
from .probes import ProbeBatch
from .rng import evaluation_seed, isolated_rng
from .trainer import Progress

if TYPE_CHECKING:
    import pytorch_lightning as pl


def evaluate_splits(
    trainer: pl.Trainer, module: nn.Module, splits: Sequence[str], probes: dict[str, ProbeBatch],
    previous: dict[str, DriftReference], plan: EvaluationPlan, seed: int,
    start: dict[str, DriftReference] | None = None,
) -> dict[str, SplitEvaluation]:
    """Every split's evaluation, each rank computing its shard of the probes and all of them
    ending with the whole (one process: everything here). A fault on any rank raises on all.
    Each split is evaluated under its own RNG stream seeded from ``seed`` (:mod:`.rng`).
    ``previous`` and ``start``: the drift and drift_from_start references, sharded likewise."""
    world, rank = trainer.world_size, trainer.global_rank
    shards = {split: shard(len(probes[split]), world, rank) for split in splits}
    progress = Progress(trainer, sum(len(shards[s][0]) for s in splits), trainer.global_step)
    results: dict[str, SplitEvaluation] = {}
    error: BaseException | None = None
    try:
        for split in splits:
            indices, _ = shards[split]
            mine = probes[split] if world == 1 else probes[split].select(indices)
            reference, first = previous.get(split), (start or {}).get(split)
            if world > 1:
                reference, first = select_reference(reference, indices), select_reference(first, indices)
            with isolated_rng(evaluation_seed(seed, split)):
                results[split] = evaluate_probes(module, mine, plan, reference, progress.update, first)
    except Exception as caught:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = caught
    finally:
        progress.close()
    if world == 1:
        if error is not None:
            raise error
        return results
    agree(trainer.strategy, error)  # every rank reaches the collectives, failed or not
    return {
        split: gather_evaluation(trainer.strategy, result, shard_sizes(len(probes[split]), world))
        for split, result in results.items()
    }


def shard(count: int, world_size: int, rank: int) -> tuple[list[int], int]:
    """(indices this rank evaluates, how many of them are real).

    A rank whose shard is empty evaluates probe 0 as padding (real count 0), so every rank
    runs the same code and sends tensors of the same shape.
    """
    size = math.ceil(count / world_size)
    indices = list(range(rank * size, min(count, (rank + 1) * size)))
    return (indices, len(indices)) if indices else ([0], 0)


def shard_sizes(count: int, world_size: int) -> list[int]:
    return [shard(count, world_size, rank)[1] for rank in range(world_size)]


def select_reference(reference: DriftReference | None, indices: list[int]) -> DriftReference | None:
    if reference is None:
        return None
    return DriftReference(LabelMaps(map_each(reference.maps, lambda t: t[indices])), reference.targets[indices])


def agree(strategy: Any, error: BaseException | None) -> None:
    """Raise on every rank if any rank failed (the failing rank re-raises its own error)."""
    failed = torch.tensor([0.0 if error is None else 1.0], device=strategy.root_device)
    flags = strategy.all_gather(failed).flatten()
    if error is not None:
        raise error
    if bool(flags.any()):
        ranks = [r for r, flag in enumerate(flags.tolist()) if flag]
        raise RuntimeError(f"the saliency evaluation failed on rank(s) {ranks} (see their warning)")


def gather_evaluation(strategy: Any, local: SplitEvaluation, sizes: list[int]) -> SplitEvaluation:
    """The evaluation of all probes from every rank's shard (same result on every rank)."""
    width = max(max(sizes), 1)

    def gather(tensor: Tensor) -> Tensor:
        padded = _pad(tensor, width).to(strategy.root_device)
        stacked = strategy.all_gather(padded).cpu()  # (world, width, ...)
        return torch.cat([stacked[r, :n] for r, n in enumerate(sizes)])

    def gather_maps(maps: LabelMaps | None) -> LabelMaps | None:
        if maps is None:
            return None
        return LabelMaps(map_each(maps, gather))

    maps, meta_maps = LabelMaps(map_each(local.maps, gather)), gather_maps(local.meta_maps)
    # evaluate_probes blanks (NaN) every map of a probe that overflowed: count them again, real rows only
    kinds: dict[str, LabelMaps] = {"plain": maps, "meta": meta_maps or LabelMaps({})}
    counts = {
        f"{kind}/{m}/{layer}": int(t.flatten(1).isnan().all(1).sum())
        for kind, table in kinds.items()
        for m, per_layer in table.items()
        for layer, t in per_layer.items()
        if layer != COMBINED
    }
    return SplitEvaluation(
        nonfinite={key: count for key, count in counts.items() if count},
        values={key: gather(value) for key, value in local.values.items()},
        maps=maps,
        meta_maps=meta_maps,
        targets=gather(local.targets),
        prediction_difference=None if local.prediction_difference is None else gather(local.prediction_difference),
        probabilities=gather(local.probabilities),
        losses=gather(local.losses),
        constant=map_each(local.constant, lambda flags: gather(flags.to(torch.uint8)).bool()),  # gloo: no bool
    )


def _pad(tensor: Tensor, width: int) -> Tensor:
    """Rows [0, width): the tensor's rows, then copies of its last row."""
    if len(tensor) >= width:
        return tensor[:width].contiguous()
    filler = tensor[-1:].expand(width - len(tensor), *tensor.shape[1:])
    return torch.cat([tensor, filler]).contiguous()
