"""Numbers the monitor logs about saliency maps: pure functions on tensors, no Lightning.

- :func:`rank_correlation`: Spearman's ρ per pair of maps, batched, ties given average ranks
  (Rebuffi et al., "There and Back Again", CVPR 2020, §4 set-up: Spearman on maps upsampled
  to the input resolution).
- :func:`class_sensitivity` (§4.3), :func:`meta_correlation` (supp. D), :func:`drift`:
  :func:`map_correlation` of two sets of maps after bilinear upsampling to a common size.
- :func:`total_variation`: map noise as in Smooth Deep Saliency (anisotropic L1 TV of
  per-channel standardised maps).
- :func:`pointing_game` (supp. A, Zhang et al. 2016 via TorchRay), its "difficult" subset,
  and :func:`voc_boxes_to_masks`.
- :func:`structural_similarity`: SSIM (Wang et al. 2004) per pair of maps, the measure
  "Beyond Saliency" uses between a relevance map and its Salient Relevance map.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PointingGameResult",
    "class_sensitivity",
    "difficult_pairs",
    "drift",
    "map_correlation",
    "max_min_targets",
    "meta_correlation",
    "minmax_normalize",
    "pointing_game",
    "pointing_hits",
    "rank_correlation",
    "rank_data",
    "resize_maps",
    "structural_similarity",
    "total_variation",
    "voc_boxes_to_masks",
]

_NUMPY = importlib.util.find_spec("numpy") is not None
_CHUNK_ELEMENTS = {"cpu": 1 << 17, "default": 1 << 22}
"""Maps are ranked a few rows at a time, about this many elements per chunk: on CPU a chunk
stays in cache (the whole batch at once is memory bound and no faster); on an accelerator
it bounds the transient memory (about 50 bytes per element) and is usually the batch."""


# --------------------------------------------------------------------------- ranks


def rank_data(x: Tensor) -> Tensor:
    """Average ranks (1-based, ties share the mean of their positions) over all trailing dims.

    ``x`` (N, ...) -> float64 ranks of the same shape, equal to
    ``scipy.stats.rankdata(x.reshape(N, -1), axis=1)`` reshaped; a map holding a NaN gets
    NaN ranks (scipy's ``nan_policy="propagate"``).
    """
    flat = _flatten_rows(x, "x")
    length = flat.shape[1]
    out = torch.empty(flat.shape, dtype=torch.float64, device=flat.device)
    for rows in _row_slices(flat):
        chunk = flat[rows]
        ranks, extremes = _centered_ranks(_sort_keys(chunk))
        ranks.add_((length + 1) / 2)
        out[rows] = ranks.masked_fill_(_nan_rows(extremes, chunk.dtype)[:, None], float("nan"))
    return out.view(x.shape)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of ``a[n]`` and ``b[n]`` over all trailing dimensions.

    ρ_n = Pearson(rank(a_n), rank(b_n)), ranks averaged over ties (selective maps hold many
    exact zeros), computed exactly in float64 on the inputs' device, batched over n (on
    CPU the one sort per chunk is numpy's, see :func:`_sort_rows`). Matches
    ``scipy.stats.spearmanr(a[n].ravel(), b[n].ravel())``.

    Args:
        a, b: (N, ...) real tensors of the same shape on the same device (any real dtype;
            ties are decided on the values as given).

    Returns:
        (N,) float32, or float64 when either input is float64. An entry is NaN, never 0 and
        never an exception, when either map is constant (ρ undefined) or holds a NaN.
        Not differentiable (ranks are piecewise constant): inputs are detached.
    """
    flat_a = _flatten_rows(a, "a")
    flat_b = _flatten_rows(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"Expected `a` and `b` to have the same shape, but got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"Expected `a` and `b` on the same device, but got {a.device} and {b.device}.")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    out = torch.empty(flat_a.shape[0], dtype=torch.float64, device=a.device)
    for rows in _row_slices(flat_a):
        chunk_a, chunk_b = flat_a[rows], flat_b[rows]
        keys_a, keys_b = _sort_keys(chunk_a), _sort_keys(chunk_b)
        if keys_a.dtype == keys_b.dtype:  # one pass for both
            ranks, extremes = _centered_ranks(torch.cat([keys_a, keys_b]))
            (ranks_a, ranks_b), (ends_a, ends_b) = ranks.chunk(2), extremes.chunk(2)
        else:
            (ranks_a, ends_a), (ranks_b, ends_b) = _centered_ranks(keys_a), _centered_ranks(keys_b)
        cov = torch.linalg.vecdot(ranks_a, ranks_b)
        var = torch.linalg.vecdot(ranks_a, ranks_a) * torch.linalg.vecdot(ranks_b, ranks_b)
        rho = (cov / var.sqrt()).clamp_(-1.0, 1.0)
        undefined = (var == 0) | _nan_rows(ends_a, a.dtype) | _nan_rows(ends_b, b.dtype)
        out[rows] = rho.masked_fill_(undefined, float("nan"))
    return out.to(dtype)


def _flatten_rows(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(x).__name__}.")
    if x.is_complex():
        raise TypeError(f"Expected `{name}` to be a real tensor, but got dtype {x.dtype}.")
    if x.ndim < 2:
        raise ValueError(
            f"Expected `{name}` of shape (N, ...) with at least 2 dimensions, but got shape {tuple(x.shape)}."
        )
    if math.prod(x.shape[1:]) == 0:
        raise ValueError(f"Expected `{name}` to hold at least one element per map, but got shape {tuple(x.shape)}.")
    return x.detach().reshape(x.shape[0], math.prod(x.shape[1:]))


def _row_slices(flat: Tensor) -> list[slice]:
    budget = _CHUNK_ELEMENTS.get(flat.device.type, _CHUNK_ELEMENTS["default"])
    step = max(1, budget // flat.shape[1])
    return [slice(i, i + step) for i in range(0, flat.shape[0], step)]


def _nan_rows(extremes: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows holding a NaN, from each row's lowest and highest sort key (n, 2).

    NaN keys lie beyond those of ±inf (positive NaNs above +inf, negative NaNs below −inf).
    """
    if not dtype.is_floating_point:
        return torch.zeros(len(extremes), dtype=torch.bool, device=extremes.device)
    low, high = _sort_keys(torch.tensor([[-math.inf, math.inf]], dtype=dtype, device=extremes.device))[0]
    return (extremes[:, 0] < low) | (extremes[:, 1] > high)


def _sort_keys(x: Tensor) -> Tensor:
    """Integers in the order of ``x``'s values, equal exactly when the values are equal.

    Floats become their IEEE bit patterns with the non-sign bits of negatives flipped
    (int32 for up to 32-bit floats, int64 for float64), after ``+ 0.0`` turns −0 into +0:
    sorting int32 is a third faster than sorting float32 on CPU. NaN keys fall outside
    the keys of ±inf (see :func:`_nan_rows`); rows holding one are masked by the callers.
    """
    if not x.is_floating_point():
        return x.to(torch.int64)
    if x.dtype == torch.float64:
        bits, mask = (x + 0.0).view(torch.int64), 0x7FFF_FFFF_FFFF_FFFF
    else:
        bits, mask = (x.float() + 0.0).view(torch.int32), 0x7FFF_FFFF
    return bits ^ ((bits >> (bits.element_size() * 8 - 1)) & mask)


def _centered_ranks(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(n, L) sort keys -> (average rank − (L+1)/2, float64 (n, L); lowest and highest key (n, 2)).

    Sort each row, mark where a run of equal keys starts, and give every member of a run
    its mean 0-based position ``first + (count − 1)/2`` (exact in float64). Runs are found
    on the flattened sorted rows (a run never crosses rows since every row starts one), so
    the whole chunk takes one ``nonzero`` and one ``repeat_interleave``; one scatter puts
    the ranks back in the original order.
    """
    n, length = keys.shape
    values, order = _sort_rows(keys)
    starts = torch.empty((n, length), dtype=torch.bool, device=keys.device)
    starts[:, 0] = True
    torch.ne(values[:, 1:], values[:, :-1], out=starts[:, 1:])
    first = starts.view(-1).nonzero().squeeze(1)
    counts = torch.diff(first, append=first.new_tensor([n * length]))
    run_rank = first.double().add_(counts.double().sub_(1).mul_(0.5))
    sorted_ranks = torch.repeat_interleave(run_rank, counts, output_size=n * length).view(n, length)
    offsets = torch.arange(n, dtype=torch.float64, device=keys.device).mul_(length).add_((length - 1) / 2)
    sorted_ranks.sub_(offsets[:, None])
    ranks = torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)
    return ranks, values[:, [0, -1]]


def _sort_rows(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(keys, dim=1)``; on CPU, 32-bit keys go through numpy's vectorised sort.

    There each key and its column index are packed in one int64 (key · 2³² + index), sorted
    as plain integers in place (``ndarray.sort``, SIMD quicksort: 2-3x faster than
    ``torch.sort``, which moves (key, index) pairs) and unpacked: same values, and an order
    that is ascending in index within ties (any order within ties gives the same ranks).
    """
    if not _NUMPY or keys.device.type != "cpu" or keys.dtype != torch.int32 or keys.shape[1] > 1 << 32:
        return torch.sort(keys, dim=1)
    packed = (keys.to(torch.int64) << 32).bitwise_or_(torch.arange(keys.shape[1]))
    packed.numpy().sort(axis=1)
    return packed >> 32, packed.bitwise_and_(0xFFFF_FFFF)


# --------------------------------------------------------------------------- map correlations


def map_correlation(a: Tensor, b: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    """Spearman ρ of each map in ``a`` with the matching map in ``b`` at resolution ``size``.

    ``a`` (..., h, w) and ``b`` (..., h', w') with the same leading dims are upsampled
    bilinearly (``align_corners=False``) to ``size`` (the input resolution, 224 in the
    paper), then compared with :func:`rank_correlation`. ``size=None`` compares them as
    they are (then their shapes must match). Returns (...), NaN where a map is constant.
    """
    a = _check_maps(a, "a")
    b = _check_maps(b, "b")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(
            f"Expected `a` and `b` to have the same leading dimensions, but got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    target = _normalize_size(size)
    if target is not None:
        a, b = resize_maps(a, target), resize_maps(b, target)
    lead = a.shape[:-2]
    return rank_correlation(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])).view(lead)


def class_sensitivity(max_maps: Tensor, min_maps: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    """§4.3: ρ between the maps of the max- and the min-predicted class of each image.

    Close to 0 is good (the min class is absent, its map should be uninformative); see
    :func:`max_min_targets` for the targets and :func:`map_correlation` for shapes.
    """
    return map_correlation(max_maps, min_maps, size)


def meta_correlation(maps: Tensor, meta_maps: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    """Supp. D: ρ between a map and its meta-saliency map (lower on unseen images)."""
    return map_correlation(maps, meta_maps, size)


def drift(maps: Tensor, previous_maps: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    """ρ between a probe's map now and the same probe's map at the previous evaluation."""
    return map_correlation(maps, previous_maps, size)


def max_min_targets(logits: Tensor) -> Tensor:
    """(B, C) logits -> (B, 2) long targets [argmax, argmin] for :func:`class_sensitivity`."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected `logits` of shape (B, C) with C >= 2, but got {shape}.")
    return torch.stack([logits.argmax(dim=1), logits.argmin(dim=1)], dim=1)


def _check_maps(maps: Tensor, name: str, min_dim: int = 3) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(maps).__name__}.")
    if not maps.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {maps.dtype}.")
    if maps.ndim < min_dim:
        raise ValueError(
            f"Expected `{name}` to have at least {min_dim} dimensions (..., h, w), but got "
            f"shape {tuple(maps.shape)}."
        )
    return maps.detach()


def _normalize_size(size: object, name: str = "size") -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)
    ):
        return (int(pair[0]), int(pair[1]))
    raise ValueError(f"Expected `{name}` to be None, a positive int or (h, w), but got {size!r}.")


def minmax_normalize(maps: Tensor) -> Tensor:
    """(m − min) / (max − min) over the last two dims of (..., h, w); a constant map -> 0 (a map
    holding NaN stays NaN)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span == 0, 0, (maps - low) / torch.where(span == 0, 1, span))


def resize_maps(maps: Tensor, size: tuple[int, int], *, antialias: bool = False) -> Tensor:
    """Bilinear (align_corners=False) resize of the last two dims of (..., h, w); with
    ``antialias``, antialiased when it shrinks either side."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    shrink = antialias and (size[0] < maps.shape[-2] or size[1] < maps.shape[-1])
    resized = F.interpolate(flat.to(dtype), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return resized.view(*maps.shape[:-2], *size)


# --------------------------------------------------------------------------- total variation


def total_variation(maps: Tensor) -> Tensor:
    """Map noise as in Smooth Deep Saliency: TV of per-channel standardised maps.

    For each channel z = (m − mean(m)) / max(mean|m − mean(m)|, 1e-6) (means over H, W),
    then TV = Σ_c Σ_{h,w} |z[h+1, w] − z[h, w]| + |z[h, w+1] − z[h, w]| (anisotropic L1),
    divided by C·H·W. The standardisation makes TV blind to the map's offset and scale.

    Args:
        maps: (N, C, H, W), or (N, H, W) for C = 1. Engine maps (B, T, h, w) give each
            image's mean over its T targets; pass ``maps.flatten(0, 1)[:, None]`` for one
            value per target.

    Returns:
        (N,) in the maps' dtype (float32 for half precision); 0 for a constant map.
    """
    maps = _check_maps(maps, "maps")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4:
        raise ValueError(
            f"Expected `maps` of shape (N, C, H, W) or (N, H, W), but got shape {tuple(maps.shape)}."
        )
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    centered = maps - maps.mean(dim=(-2, -1), keepdim=True)
    z = centered / centered.abs().mean(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    tv = (z[..., 1:, :] - z[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    tv = tv + (z[..., :, 1:] - z[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    return tv / (maps.shape[1] * maps.shape[2] * maps.shape[3])


# --------------------------------------------------------------------------- pointing game


def voc_boxes_to_masks(
    boxes: Tensor | Sequence[Sequence[float]],
    labels: Tensor | Sequence[int],
    num_classes: int,
    image_size: tuple[int, int],
) -> Tensor:
    """Ground-truth regions of one image: the union of each class's boxes, as TorchRay does.

    Args:
        boxes: (K, 4) ``xmin, ymin, xmax, ymax`` in PASCAL VOC's convention: 1-based,
            inclusive pixel coordinates (box (1, 1, 2, 2) is the image's top-left 2×2
            pixels). Pixel (row r, col c), 0-based, is inside iff
            ``xmin − 1 <= c <= xmax − 1`` and ``ymin − 1 <= r <= ymax − 1``, so boxes rescaled
            to a resized image may be fractional. Drop PASCAL "difficult" boxes beforehand
            if they should not count.
        labels: (K,) class index of each box, in [0, num_classes).
        num_classes: number of classes C.
        image_size: (H, W) of the image the boxes refer to.

    Returns:
        (C, H, W) bool; an absent class's mask is all False.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be a positive int, but got {num_classes!r}.")
    size = _normalize_size(image_size, "image_size") if image_size is not None else None
    if size is None:
        raise ValueError(f"Expected `image_size` to be a positive int or (H, W), but got {image_size!r}.")
    height, width = size
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if labels.numel() == 0:
        labels = labels.long()
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"Expected `boxes` of shape (K, 4), but got shape {tuple(boxes.shape)}.")
    if labels.is_floating_point() or labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"Expected `labels` to be {boxes.shape[0]} integer class indices, but got {labels!r}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Expected `labels` in [0, {num_classes}), but got values in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    rows = torch.arange(height, dtype=torch.float64, device=boxes.device)
    cols = torch.arange(width, dtype=torch.float64, device=boxes.device)
    xmin, ymin, xmax, ymax = (boxes[:, i, None] - 1 for i in range(4))
    inside_rows = (rows >= ymin) & (rows <= ymax)  # (K, H)
    inside_cols = (cols >= xmin) & (cols <= xmax)  # (K, W)
    per_box = inside_rows[:, :, None] & inside_cols[:, None, :]
    counts = torch.zeros(num_classes, height, width, dtype=torch.int32, device=boxes.device)
    return counts.index_add_(0, labels.long().to(boxes.device), per_box.int()) > 0


def pointing_hits(maps: Tensor, masks: Tensor, tolerance: float = 15) -> Tensor:
    """Pointing game test of each map against its ground-truth mask (supp. A, TorchRay).

    The map is upsampled bilinearly (``align_corners=False``) to the mask's (H, W); its
    point is the maximum, the first in row-major order when several pixels tie (torch's
    ``argmax``, TorchRay's convention: a constant map points at the top-left pixel). A hit
    is a mask pixel q with ‖q − point‖₂ < ``tolerance`` (strict, as TorchRay: a pixel
    exactly ``tolerance`` away does not count), or the point itself on the mask (which
    only matters for ``tolerance=0``).

    Args:
        maps: (N, h, w) floating point.
        masks: (N, H, W) bool, the class region in image pixels.
        tolerance: radius in image pixels (15 in the paper), >= 0.

    Returns:
        (N,) bool hits; an empty mask is never hit.
    """
    maps = _check_maps(maps, "maps")
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 3:
        raise ValueError(f"Expected `masks` to be a (N, H, W) bool tensor, but got {_describe(masks)}.")
    if maps.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"Expected `maps` of shape (N, h, w) with N={masks.shape[0]}, but got shape {tuple(maps.shape)}."
        )
    tolerance = _check_tolerance(tolerance)
    height, width = masks.shape[1:]
    masks = masks.to(maps.device)
    point = resize_maps(maps, (height, width)).flatten(1).argmax(dim=1)
    py, px = point // width, point % width
    dy = (torch.arange(height, device=maps.device) - py[:, None]).double().square()
    dx = (torch.arange(width, device=maps.device) - px[:, None]).double().square()
    near = dy[:, :, None] + dx[:, None, :] < tolerance**2
    on_mask = masks.flatten(1).gather(1, point[:, None]).squeeze(1)
    return (masks & near).flatten(1).any(dim=1) | on_mask


def difficult_pairs(targets: Tensor, masks: Tensor) -> Tensor:
    """Which (image, class) pairs are in the pointing game's "difficult" subset (supp. A).

    A pair is difficult when its class is present, its boxes cover less than 25% of the
    image (area of their union, the mask) and at least one other class is present.

    Args:
        targets: (B, T) class indices.
        masks: (B, C, H, W) bool, every class's region in each image.

    Returns:
        (B, T) bool.
    """
    targets, masks = _check_targets_masks(targets, masks)
    area = masks.flatten(2).float().mean(dim=2)  # (B, C)
    present = masks.flatten(2).any(dim=2)  # (B, C)
    own_present = present.gather(1, targets)
    others = present.sum(dim=1, keepdim=True) - own_present.long()
    return own_present & (area.gather(1, targets) < 0.25) & (others > 0)


@dataclass(frozen=True)
class PointingGameResult:
    """Per-class hit and miss counts; add results of several batches with ``+``."""

    hits: Tensor
    """(C,) int64."""
    misses: Tensor
    """(C,) int64."""

    @property
    def class_accuracy(self) -> Tensor:
        """(C,) float64 hits / (hits + misses); NaN for a class never evaluated."""
        total = self.hits + self.misses
        return torch.where(total > 0, self.hits / total.clamp_min(1), float("nan"))

    @property
    def accuracy(self) -> Tensor:
        """Mean of :attr:`class_accuracy` over the evaluated classes (NaN if none), supp. A."""
        return self.class_accuracy.nanmean()

    def __add__(self, other: PointingGameResult) -> PointingGameResult:
        if not isinstance(other, PointingGameResult) or other.hits.shape != self.hits.shape:
            return NotImplemented
        return PointingGameResult(self.hits + other.hits, self.misses + other.misses)


def pointing_game(
    maps: Tensor,
    targets: Tensor,
    masks: Tensor,
    tolerance: float = 15,
    difficult: bool = False,
) -> PointingGameResult:
    """Pointing game accuracy: hits/(hits + misses) per class, then the mean over classes.

    Args:
        maps: (B, T, h, w) saliency of target ``targets[b, t]`` in image b.
        targets: (B, T) class indices in [0, C).
        masks: (B, C, H, W) bool ground-truth regions (:func:`voc_boxes_to_masks`), at the
            image resolution the tolerance is measured in.
        tolerance: hit radius in pixels (:func:`pointing_hits`).
        difficult: count only the :func:`difficult_pairs`.

    A pair whose class is absent from the image (empty mask) is not evaluated; a class
    never evaluated gets NaN accuracy and is left out of the mean (TorchRay counts it as 0).
    """
    targets, masks = _check_targets_masks(targets, masks)
    maps = _check_maps(maps, "maps", min_dim=4)
    if maps.ndim != 4 or maps.shape[:2] != targets.shape:
        raise ValueError(
            f"Expected `maps` of shape (B, T, h, w) with (B, T)={tuple(targets.shape)}, but got "
            f"shape {tuple(maps.shape)}."
        )
    batch, num_targets = targets.shape
    class_masks = masks[torch.arange(batch, device=masks.device)[:, None], targets]  # (B, T, H, W)
    evaluated = class_masks.flatten(2).any(dim=2)
    if difficult:
        evaluated &= difficult_pairs(targets, masks)
    hit = pointing_hits(maps.flatten(0, 1), class_masks.flatten(0, 1), tolerance).view(batch, num_targets)
    num_classes = masks.shape[1]
    evaluated = evaluated.cpu()
    classes = targets.cpu()[evaluated]
    hits = torch.bincount(classes[hit.cpu()[evaluated]], minlength=num_classes)
    return PointingGameResult(hits, torch.bincount(classes, minlength=num_classes) - hits)


def _check_targets_masks(targets: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 4:
        raise ValueError(f"Expected `masks` to be a (B, C, H, W) bool tensor, but got {_describe(masks)}.")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"Expected `targets` to be an integer tensor of class indices, but got {_describe(targets)}.")
    batch, num_classes = masks.shape[:2]
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"Expected `targets` of shape (B, T) with B={batch}, but got shape {tuple(targets.shape)}."
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"Expected `targets` in [0, {num_classes}), but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]."
        )
    return targets.long().to(masks.device), masks


def _check_tolerance(tolerance: object) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"Expected `tolerance` to be a number >= 0, but got {tolerance!r}.")
    return float(tolerance)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# --------------------------------------------------------------------------- structural similarity


_SSIM_WINDOW, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03


def structural_similarity(a: Tensor, b: Tensor, *, normalize: bool = True) -> Tensor:
    """Per-map SSIM (Wang et al. 2004) of ``a[n]`` and ``b[n]``, as "Beyond saliency" compares maps.

    SSIM(x, y) = mean over window positions of
    ((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2)),
    with μ, σ², σxy the local means, variances and covariance (population, not sample)
    under an 11×11 Gaussian window of σ = 1.5, C1 = (0.01 L)², C2 = (0.03 L)², data range
    L = 1. The mean runs over the positions where the whole window lies inside the map (the
    (h − 10)×(w − 10) "valid" region of Wang et al.'s reference code): equal to
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``. Hand-written rather than torchmetrics'
    ``structural_similarity_index_measure``: since Lightning-AI/torchmetrics#2721 (2024) its
    mean also covers the border positions, whose windows read a reflect-padded map, while
    earlier versions averaged the valid region, so its number depends on the version installed.

    Args:
        a, b: (N, h, w) or (N, 1, h, w) real floating-point maps of the same shape, on the
            same device, with h, w >= 11 (the window; smaller maps are an error, not a
            shrunk window, which would be a different measure: upsample them first).
        normalize: min-max normalise each map to [0, 1] first (a constant map becomes all
            zeros), so SSIM ignores each map's offset and scale. With ``False`` the maps are
            used as given and must lie in [0, 1].

    Returns:
        (N,) float64 on the maps' device, in [−1, 1]; 1 for identical maps. A map holding a
        NaN gives NaN. Not differentiable: inputs are detached.
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"Expected `normalize` to be a bool, but got {normalize!r}.")
    x, y = _ssim_operand(a, "a"), _ssim_operand(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"Expected `a` and `b` to have the same shape, but got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"Expected `a` and `b` on the same device, but got {a.device} and {b.device}.")
    if min(x.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"Expected maps of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels (the SSIM window), but got "
            f"shape {tuple(a.shape)}."
        )
    if normalize:
        x, y = minmax_normalize(x), minmax_normalize(y)
    else:
        _check_unit_range(x, "a")
        _check_unit_range(y, "b")
    c1, c2 = (_SSIM_K1 * 1.0) ** 2, (_SSIM_K2 * 1.0) ** 2
    stats = _gaussian_window_mean(torch.cat([x, y, x * x, y * y, x * y]))
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)


def _ssim_operand(maps: object, name: str) -> Tensor:
    """(N, h, w) or (N, 1, h, w) floating maps -> detached float64 (N, 1, h, w)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(maps).__name__}.")
    if not maps.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {maps.dtype}.")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"Expected `{name}` of shape (N, h, w) or (N, 1, h, w), but got shape {tuple(maps.shape)}.")
    return maps.detach().double()


def _check_unit_range(x: Tensor, name: str) -> None:
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"Expected `{name}` in [0, 1] with `normalize=False`, but got values in "
            f"[{float(x.min())}, {float(x.max())}]."
        )


def _gaussian_window_mean(x: Tensor) -> Tensor:
    """Weighted means of (M, 1, h, w) under the normalised 11×11 Gaussian, 'valid' positions only."""
    radius = _SSIM_WINDOW // 2
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    weights = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    weights = weights / weights.sum()
    return F.conv2d(F.conv2d(x, weights.view(1, 1, -1, 1)), weights.view(1, 1, 1, -1))
