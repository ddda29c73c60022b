"""gap-vs-loss: does the meta-correlation gap tell more than the loss gap?

Per checkpoint, on the meta-gap's training and validation images (same probes, methods, layers,
combined map and meta step as :func:`examples.reproduce.analyses.meta_gap`), per image:

- ρ: Spearman ρ between the combined (uniform-sum) map of the label class and its meta map;
- loss: the meta step's own loss of that image and class at the checkpoint,
  :func:`saliency_monitor.engine.task.class_losses` (multilabel: softplus(−z_label), the BCE of the
  label logit toward 1; multiclass: the cross-entropy), the label class being
  :func:`saliency_monitor.monitor.probes.label_max_min_targets`'s (multilabel: the true class
  the model scores highest).

From those: the meta gap (mean ρ train − val) and the loss gap (mean loss val − train: both are
positive when the model does better on the images it was trained on), each ± √(SE_t² + SE_v²);
how well each score tells validation from training images, the AUC (Mann–Whitney U / (n_t n_v),
ties ½) of 1 − ρ and of the loss; and the per-image Spearman between the loss and 1 − ρ, over
all images of the checkpoint and over the validation images only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from saliency_monitor.engine.model_io import model_logits
from saliency_monitor.engine.task import class_losses
from saliency_monitor.metrics import mean_stderr
from saliency_monitor.monitor.probes import ProbeBatch, label_max_min_targets, probe_chunks

from . import analyses as A

GAP_VS_LOSS_METHODS = A.META_GAP_METHODS


def auc(positive: Tensor, negative: Tensor) -> float:
    """P(a positive scores above a negative), ties ½: Mann–Whitney U / (n_pos n_neg); NaNs dropped.

    NaN when either side has no finite score.
    """
    p, n = positive[~positive.isnan()].double(), negative[~negative.isnan()].double()
    if not p.numel() or not n.numel():
        return math.nan
    diff = p[:, None] - n[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman ρ of the pairs where both are finite (NaN with fewer than three, or a constant side)."""
    keep = a.isfinite() & b.isfinite()
    if int(keep.sum()) < 3:
        return math.nan
    x, y = a[keep].double().numpy(), b[keep].double().numpy()
    if (x == x[0]).all() or (y == y[0]).all():
        return math.nan
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class CheckpointStats:
    """One method's numbers at one checkpoint."""

    meta_gap: tuple[float, float]
    """Mean ρ train − val, ± √(SE_t² + SE_v²)."""
    loss_gap: tuple[float, float]
    """Mean loss val − train, ± √(SE_t² + SE_v²)."""
    auc_rho: float
    """AUC of 1 − ρ for telling validation (positive) from training images."""
    auc_loss: float
    """AUC of the loss for the same."""
    spearman_all: float
    """Per-image Spearman between the loss and 1 − ρ, training and validation images together."""
    spearman_val: float
    """The same on the validation images only."""
    counts: tuple[int, int]
    """(N train, N val) images with a finite ρ."""


@dataclass(frozen=True)
class GapVsLossResult:
    """Per checkpoint: each image's ρ(map, meta map) of the combined map and its label-class loss."""

    epochs: tuple[int, ...]
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    """The layers the combined map sums."""
    train_rho: dict[str, Tensor]
    """method -> (E, N_train) ρ(combined map, combined meta map)."""
    val_rho: dict[str, Tensor]
    """method -> (E, N_val)."""
    train_loss: Tensor
    """(E, N_train) the meta step's loss of each image's label class at the checkpoint."""
    val_loss: Tensor
    """(E, N_val)."""
    meta_lr: float
    task: str

    def stats(self, method: str, e: int) -> CheckpointStats:
        """The numbers of ``method`` at checkpoint index ``e``."""
        rt, rv = self.train_rho[method][e], self.val_rho[method][e]
        lt, lv = self.train_loss[e], self.val_loss[e]
        (mt, st, nt), (mv, sv, nv) = mean_stderr(rt), mean_stderr(rv)
        (ml_t, sl_t, _), (ml_v, sl_v, _) = mean_stderr(lt), mean_stderr(lv)
        return CheckpointStats(
            (mt - mv, math.hypot(st, sv)), (ml_v - ml_t, math.hypot(sl_t, sl_v)), auc(1 - rv, 1 - rt), auc(lv, lt),
            spearman(torch.cat([lt, lv]), 1 - torch.cat([rt, rv])), spearman(lv, 1 - rv), (nt, nv),
        )

    def series(self, method: str) -> list[CheckpointStats]:
        """:meth:`stats` at every checkpoint, in order."""
        return [self.stats(method, e) for e in range(len(self.epochs))]


def gap_vs_loss(
    checkpoints: Sequence[tuple[int, nn.Module]] | Iterator[tuple[int, nn.Module]], train: ProbeBatch,
    val: ProbeBatch, layers: Sequence[str], *, methods: Sequence[str] = GAP_VS_LOSS_METHODS, meta_lr: float = 0.002,
    batch_size: int = 16,
) -> GapVsLossResult:
    """Per checkpoint (epoch, model): each image's combined-map ρ(map, meta map) (computed by
    :func:`~examples.reproduce.analyses.meta_gap`) and its label-class loss, training vs validation."""
    if train.task != val.task:
        raise ValueError(f"Expected the training and validation probes to share a task, but got {train.task!r} "
                         f"and {val.task!r}")
    epochs: list[int] = []
    rho: dict[str, dict[str, list[Tensor]]] = {"train": {m: [] for m in methods}, "val": {m: [] for m in methods}}
    loss: dict[str, list[Tensor]] = {"train": [], "val": []}
    for epoch, model in checkpoints:
        epochs.append(epoch)
        gap = A.meta_gap([(epoch, model)], train, val, layers, methods=methods, meta_lr=meta_lr, batch_size=batch_size)
        for split, probes, table in (("train", train, gap.train), ("val", val, gap.val)):
            for m in methods:
                rho[split][m].append(table[m][A.COMBINED][0])
            loss[split].append(label_losses(model, probes, batch_size))
    return GapVsLossResult(
        tuple(epochs), tuple(methods), tuple(layers), {m: torch.stack(rho["train"][m]) for m in methods},
        {m: torch.stack(rho["val"][m]) for m in methods}, torch.stack(loss["train"]), torch.stack(loss["val"]),
        meta_lr, train.task,
    )


def label_losses(model: nn.Module, probes: ProbeBatch, batch_size: int = 16) -> Tensor:
    """(N,) float64: each probe's loss of its label class (the class meta-gap explains), as the meta step takes it."""
    out = []
    for chunk, images in probe_chunks(model, probes, batch_size):
        logits = model_logits(model, images)
        targets = label_max_min_targets(logits, chunk, chunk.task)[0][:, 0]
        out.append(class_losses(logits, targets, chunk.task).double().cpu())
    return torch.cat(out)
