"""Pointing-game helpers of :mod:`examples.reproduce.analyses`: tolerance, (image, class) pairs, hits, errors.

The pointing game (supp. A) scores every class present in an image; these helpers scale the
paper's hit radius to the image size, flatten a batch's padded (B, T) targets into one row per
real (image, class) pair, score them, and give the standard errors the reports print.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saliency_monitor.metrics import PointingGameResult, pointing_game, pointing_hits
from saliency_monitor.monitor.probes import ProbeBatch

PAPER_TOLERANCE_PX = 15.0
"""Supp. A: a pointing-game hit is within 15 px of the class's boxes, at 224 px images."""
PAPER_IMAGE_SIZE = 224


def scaled_tolerance(image_size: int) -> float:
    """The pointing-game radius at ``image_size``: 15 px at 224 px, scaled linearly."""
    return PAPER_TOLERANCE_PX * image_size / PAPER_IMAGE_SIZE


def present_targets(probes: ProbeBatch) -> tuple[Tensor, Tensor]:
    """(B, T) every present class of each image, padded with its first class, and (B, T) bool
    marking the real (non-padding) entries; T = the most classes in one image."""
    width = max(len(c) for c in probes.classes)
    targets = torch.tensor([list(c) + [c[0]] * (width - len(c)) for c in probes.classes], dtype=torch.long)
    valid = torch.tensor([[i < len(c) for i in range(width)] for c in probes.classes])
    return targets, valid


def pair_pointing(
    maps: Tensor, targets: Tensor, valid: Tensor, masks: Tensor, tolerance: float
) -> tuple[tuple[PointingGameResult, PointingGameResult], Tensor]:
    """((all, difficult) pointing games of the valid (image, class) pairs, (P,) hits).

    Each valid pair becomes one row with T = 1, so padding never counts twice."""
    index = valid.nonzero()
    pair_maps = maps.cpu()[index[:, 0], index[:, 1]][:, None]
    pair_targets = targets[index[:, 0], index[:, 1]][:, None]
    pair_masks = masks[index[:, 0]]
    results = tuple(pointing_game(pair_maps, pair_targets, pair_masks, tolerance, difficult=d) for d in (False, True))
    class_masks = pair_masks[torch.arange(len(index)), pair_targets[:, 0]]
    return results, pointing_hits(pair_maps[:, 0], class_masks, tolerance)


def center_maps(shape: torch.Size | tuple[int, ...], size: tuple[int, int]) -> Tensor:
    """(B, T, H, W) maps peaking at the image centre (minus the squared distance to it)."""
    rows = torch.arange(size[0], dtype=torch.float32) - (size[0] - 1) / 2
    cols = torch.arange(size[1], dtype=torch.float32) - (size[1] - 1) / 2
    centre = -(rows[:, None] ** 2 + cols[None, :] ** 2)
    return centre.expand(*shape[:2], *size).contiguous()


def add_result(total: PointingGameResult | None, result: PointingGameResult) -> PointingGameResult:
    """``total + result``, where a missing total (the first chunk) counts as zero."""
    return result if total is None else total + result


def pointing_se(result: PointingGameResult) -> float:
    """Standard error of :attr:`PointingGameResult.accuracy` (a mean of C per-class binomial
    proportions p_c over n_c pairs): √(Σ_c p_c(1 − p_c)/n_c) / C over the evaluated classes."""
    total = (result.hits + result.misses).double()
    seen = total > 0
    p = result.hits.double()[seen] / total[seen]
    return float((p * (1 - p) / total[seen]).sum().sqrt() / seen.sum()) if seen.any() else math.nan


def pointing_pairs(result: PointingGameResult) -> int:
    """How many (image, class) pairs the pointing game scored."""
    return int((result.hits + result.misses).sum())


def class_mean_se(values: Tensor, classes: Tensor) -> float:
    """SE of the mean over classes of per-class means of ``values`` (paired differences)."""
    variance, count = 0.0, 0
    for c in classes.unique():
        v = values[classes == c]
        variance += float(v.var() / len(v)) if len(v) > 1 else 0.0
        count += 1
    return math.sqrt(variance) / count if count else math.nan
