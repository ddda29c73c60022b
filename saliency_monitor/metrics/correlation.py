"""Spearman rank correlation of maps, and the three correlations the monitor logs.

- :func:`rank_correlation`: Spearman's ρ per pair of maps, batched, ties given average ranks
  (Rebuffi et al., "There and Back Again", CVPR 2020, §4 set-up: Spearman on maps upsampled
  to the input resolution).
- :func:`class_sensitivity` (§4.3), :func:`meta_correlation` (supp. D), :func:`drift`:
  :func:`map_correlation` of two sets of maps after bilinear upsampling to a common size.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor

from .._checks import normalize_size
from .maps import check_maps, resize_maps

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
    a = check_maps(a, "a")
    b = check_maps(b, "b")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(
            f"Expected `a` and `b` to have the same leading dimensions, but got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    target = normalize_size(size)
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
