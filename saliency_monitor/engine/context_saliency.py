"""Context-aware saliency detection (Goferman, Zelnik-Manor, Tal, CVPR 2010, §3), batched in torch.

"Beyond saliency" (arXiv 1712.08268) refines an LRP relevance map into a Salient Relevance
map by running this detector on it. A pixel is salient when the patch around it is unlike the
patches it most resembles, near and far, at several scales:

- Eq. 1: d(p_i, q_j) = d_colour(p_i, q_j) / (1 + c · d_position(p_i, q_j)).
- Eq. 2/3: S_i^r = 1 − exp(−(1/K) Σ_{k≤K} d(p_i, q_k)) over the K candidates q_k most similar
  to p_i (smallest d); the candidates are the patches of the scale-r image shrunk by each
  query factor (the paper's R_q = {r, r/2, r/4}).
- Eq. 4: S̄_i = mean over the scales r ∈ R of S_i^r, upsampled to the working resolution.
- Eq. 5: Ŝ_i = S̄_i (1 − d_foci(i)), d_foci the distance to the nearest attended pixel
  (S̄ ≥ ``focus_threshold`` · max S̄), divided by its maximum over the image.
- Optional high-level factor: a centre prior exp(−‖p − centre‖² / (2σ²)).

Everything runs on the maps' device, without gradients, vectorised over patches and images
(one matrix product per chunk of patches, then a K-smallest selection); memory is bounded by
chunking the patch-to-candidate distances.

Exactly, per image: resize so the long edge is ``size`` (aspect kept; bilinear, antialiased
when shrinking); min-max normalise every plane to [0, 1] (a constant plane becomes 0).
For each scale r in ``scales``: the image at r (h·r × w·r); its ``patch_size`` patches on a
grid of stride ``patch_size // 2`` (50% overlap); candidates: the same grid of patches of
the scale-r image shrunk by each factor in ``query_scales`` (a factor whose image is
smaller than a patch is skipped), their centres mapped back to the scale-r frame. Eq. 1
with d_colour the Euclidean distance of the vectorised patches divided by
sqrt(C · patch_size²) (the largest possible distance of [0, 1] patches, so the result
does not depend on the patch size) and d_position the distance of the patch centres in
coordinates divided by the larger side of the scale-r image. Eq. 2/3 over the K =
min(k, candidates − 1) most similar candidates, the patch itself excluded (only that
patch at query factor 1, not other identical patches). The per-patch values of each
scale are upsampled bilinearly to the working size and averaged (Eq. 4), weighted by
1 − (distance to the nearest pixel with S̄ ≥ ``focus_threshold`` · max S̄) / (its
maximum) (Eq. 5, an exact Euclidean distance), optionally multiplied by the centre
prior, and divided by their maximum (an all-zero map stays zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, check_number, is_real
from ..metrics.maps import minmax_normalize, resize_maps

__all__ = ["context_aware_saliency"]

_CHUNK_ELEMENTS = {"cpu": 1 << 19, "default": 1 << 24}
"""Patch-to-candidate distances computed at once: on CPU a chunk (2 MB in float32) stays in
cache, which makes the matrix product and the selection 2-3x faster than larger chunks; on an
accelerator it bounds the transient memory (64 MB in float32)."""


def context_aware_saliency(
    maps: Tensor,
    *,
    size: int = 250,
    patch_size: int = 7,
    k: int = 64,
    c: float = 3.0,
    scales: Sequence[float] = (1.0, 0.8, 0.5, 0.3),
    query_scales: Sequence[float] = (1.0, 0.5, 0.25),
    focus_threshold: float = 0.8,
    center_sigma: float | None = None,
) -> Tensor:
    """Context-aware saliency (Goferman et al. 2010, Eq. 1-5) of each map or image in a batch.

    The exact steps are in the module docstring.

    Args:
        maps: (B, C, H, W) floating point, finite. C = 1 for a relevance map; for C = 3 the
            channels are the colour planes as given: convert an RGB image to CIE Lab first
            to match the paper.
        size: long edge of the working resolution (250 in the paper).
        patch_size: odd patch side >= 3 (7 in the paper).
        k: number of most similar candidates averaged (64 in the paper).
        c: weight of the position distance in Eq. 1 (3 in the paper), >= 0.
        scales: distinct factors in (0, 1], the paper's R = {100%, 80%, 50%, 30%}.
        query_scales: distinct factors in (0, 1] of the scale-r image the candidates come
            from, the paper's {r, r/2, r/4} as (1, 0.5, 0.25).
        focus_threshold: attended pixels are those with S̄ >= this fraction of the maximum
            (0.8 in the paper), in (0, 1].
        center_sigma: None (no centre prior) or σ > 0 of the prior, in units of the larger
            image side.

    Returns:
        (B, h, w) float32 in [0, 1], (h, w) the input resized to long edge ``size``; the
        maximum of each map is 1 unless the map is all zero (a constant input).

    Raises:
        TypeError: ``maps`` is not a floating-point tensor.
        ValueError: a bad shape, a non-finite value, a bad argument, or a ``size`` whose
            smallest scale leaves no patch or no candidate.
    """
    maps = _check_maps(maps)
    size = check_int(size, "size", minimum=1)
    patch_size = _check_patch_size(patch_size)
    k = check_int(k, "k", minimum=1)
    c = check_number(c, "c", expected="a finite number >= 0", valid=lambda v: v >= 0)
    scales = _check_scales("scales", scales)
    query_scales = _check_scales("query_scales", query_scales)
    focus_threshold = check_number(
        focus_threshold, "focus_threshold", expected="a number in (0, 1]", valid=lambda v: 0 < v <= 1
    )
    if center_sigma is not None:
        center_sigma = check_number(
            center_sigma, "center_sigma", expected="None or a number > 0", valid=lambda v: v > 0
        )

    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    height, width = _working_shape(maps.shape[-2], maps.shape[-1], size)
    shapes = [_scale_shape(height, width, r, patch_size, size) for r in scales]
    if maps.shape[0] == 0:
        return torch.zeros(0, height, width, dtype=torch.float32, device=maps.device)
    image = minmax_normalize(resize_maps(maps.to(dtype), (height, width), antialias=True))
    per_scale = []
    for shape in shapes:
        scaled = image if shape == (height, width) else resize_maps(image, shape, antialias=True)
        grid = _scale_saliency(scaled, patch_size, k, c, query_scales)
        per_scale.append(F.interpolate(grid[:, None], size=(height, width), mode="bilinear", align_corners=False))
    mean = torch.cat(per_scale, dim=1).mean(dim=1)  # Eq. 4
    saliency = mean * (1 - _focus_distance(mean, focus_threshold))  # Eq. 5
    if center_sigma is not None:
        saliency = saliency * _center_prior(height, width, center_sigma, saliency)
    return _divide_by_max(saliency).float()


# --------------------------------------------------------------------------- per scale


def _scale_saliency(image: Tensor, patch_size: int, k: int, c: float, query_scales: tuple[float, ...]) -> Tensor:
    """Eq. 1-3 at one scale: (B, C, h, w) in [0, 1] -> (B, nh, nw) per-patch saliency."""
    batch, channels, height, width = image.shape
    stride = max(1, patch_size // 2)
    patches, centres, grid = _patches(image, patch_size, stride, (height, width))
    candidates, candidate_centres, self_offset = _candidates(image, patches, centres, patch_size, stride, query_scales)
    available = candidates.shape[1] - (self_offset is not None)
    if available < 1:
        raise ValueError(
            f"Expected at least one candidate patch besides each patch itself, but the {height}x{width} "
            f"image at this scale holds a single {patch_size}x{patch_size} patch and no query scale adds "
            f"one: increase `size`."
        )
    num_k = min(k, available)
    sums = _nearest_distance_sums(patches, centres, candidates, candidate_centres, self_offset, channels, num_k, c)
    mean_distance = sums / (num_k * math.sqrt(channels * patch_size * patch_size))
    return (1 - torch.exp(-mean_distance)).view(batch, *grid)


def _candidates(
    image: Tensor, patches: Tensor, centres: Tensor, patch_size: int, stride: int, query_scales: tuple[float, ...]
) -> tuple[Tensor, Tensor, int | None]:
    """The patches of ``image`` shrunk by each query factor (skipping images smaller than a
    patch): (B, M, C·p²), their centres in ``image``'s frame (M, 2), and where the factor-1
    block (the patches themselves) starts among them (None without factor 1)."""
    height, width = image.shape[-2:]
    blocks, block_centres, self_offset, offset = [], [], None, 0
    for factor in query_scales:
        shape = (_scaled(height, factor), _scaled(width, factor))
        if min(shape) < patch_size:
            continue
        if factor == 1:
            self_offset = offset
            block, block_centre = patches, centres
        else:
            shrunk = resize_maps(image, shape, antialias=True)
            block, block_centre, _ = _patches(shrunk, patch_size, stride, (height, width))
        blocks.append(block)
        block_centres.append(block_centre)
        offset += block.shape[1]
    return torch.cat(blocks, dim=1), torch.cat(block_centres), self_offset


def _nearest_distance_sums(
    patches: Tensor,
    centres: Tensor,
    candidates: Tensor,
    candidate_centres: Tensor,
    self_offset: int | None,
    channels: int,
    num_k: int,
    c: float,
) -> Tensor:
    """Σ of the ``num_k`` smallest ‖p − q‖ / (1 + c·d_position) of each patch: (B, N).

    Chunks of patches × all candidates: one matrix product for the colour distances, then
    one pass applying the position weight and excluding each patch itself, then a K-smallest
    selection. The squared colour distance is split into the patches' mean part and their
    zero-mean part, ‖p − q‖² = P·Σ_c(μ_pc − μ_qc)² + ‖p̃ − q̃‖² (P pixels per patch and
    channel): the product's rounding error then scales with the patches' contrast, not their
    brightness, so near-identical flat patches (frequent in relevance maps) keep accurate
    small distances (float32 error ~1e-6 instead of ~1e-3).
    """
    batch, num_patches = patches.shape[:2]
    num_candidates = candidates.shape[1]
    pixels = patches.shape[2] // channels
    lhs, means = _split_patches(patches, channels, left=True)
    rhs, candidate_means = _split_patches(candidates, channels, left=False)
    rhs = rhs.transpose(1, 2)
    budget = _CHUNK_ELEMENTS.get(patches.device.type, _CHUNK_ELEMENTS["default"])
    rows = max(1, min(num_patches, budget // num_candidates))
    images_per_chunk = max(1, budget // (rows * num_candidates))
    sums = torch.empty(batch, num_patches, dtype=patches.dtype, device=patches.device)
    buffer = patches.new_empty(images_per_chunk * rows * num_candidates)
    scratch = torch.empty_like(buffer)  # preallocated: a fresh 2 MB block per chunk costs page faults
    for start in range(0, num_patches, rows):
        stop = min(start + rows, num_patches)
        weight = _position_weight(centres[start:stop], candidate_centres, c)  # (1 + c·d_pos)^-2
        excluded = torch.zeros_like(weight)  # +inf at each patch itself
        if self_offset is not None:
            local = torch.arange(stop - start, device=patches.device)
            excluded[local, self_offset + start + local] = math.inf
        for first in range(0, batch, images_per_chunk):
            last = min(first + images_per_chunk, batch)
            shape = (last - first, stop - start, num_candidates)
            d2 = torch.bmm(lhs[first:last, start:stop], rhs[first:last], out=_view(buffer, shape))
            diff = _view(scratch, shape)
            for ch in range(channels):
                torch.sub(means[first:last, start:stop, ch, None], candidate_means[first:last, None, :, ch], out=diff)
                d2.addcmul_(diff, diff, value=pixels)
            torch.addcmul(excluded, d2, weight, out=d2)
            sums[first:last, start:stop] = _smallest(d2, num_k).clamp_min_(0).sqrt_().sum(dim=-1)
    return sums


def _patches(
    image: Tensor, patch_size: int, stride: int, frame: tuple[int, int]
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """(B, C, h, w) -> patches (B, L, C·p²) in row-major grid order, their centres (L, 2) in
    the ``frame`` image's pixel coordinates divided by its larger side, and the grid (nh, nw).

    A centre at pixel u of this image lies at (u + 0.5)·(frame / size) − 0.5 in the frame
    (the pixel-centre convention of bilinear resizing with ``align_corners=False``)."""
    height, width = image.shape[-2:]
    patches = F.unfold(image, patch_size, stride=stride).transpose(1, 2)
    rows = (height - patch_size) // stride + 1
    cols = (width - patch_size) // stride + 1
    ys = _grid_centres(rows, stride, patch_size, frame[0] / height, image) / max(frame)
    xs = _grid_centres(cols, stride, patch_size, frame[1] / width, image) / max(frame)
    centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    return patches, centres, (rows, cols)


def _grid_centres(count: int, stride: int, patch_size: int, ratio: float, like: Tensor) -> Tensor:
    """Centres of ``count`` patches along one axis, mapped to the frame by ``ratio``."""
    pixels = torch.arange(count, dtype=like.dtype, device=like.device) * stride + (patch_size - 1) / 2
    return (pixels + 0.5) * ratio - 0.5


def _split_patches(patches: Tensor, channels: int, left: bool) -> tuple[Tensor, Tensor]:
    """Patches (B, L, C·P) -> (matrix-product operand for ‖p̃ − q̃‖², per-channel means (B, L, C)).

    Left operand rows [p̃, ‖p̃‖², 1], right [−2q̃, 1, ‖q̃‖²]: their product is ‖p̃‖² + ‖q̃‖² − 2p̃·q̃.
    """
    split = patches.reshape(*patches.shape[:2], channels, -1)
    means = split.mean(dim=-1)
    residual = (split - means[..., None]).flatten(2)
    norms = residual.square().sum(dim=-1, keepdim=True)
    ones = torch.ones_like(norms)
    operand = torch.cat([residual, norms, ones] if left else [-2 * residual, ones, norms], dim=-1)
    return operand, means


def _position_weight(centres: Tensor, candidate_centres: Tensor, c: float) -> Tensor:
    """(n, 2), (m, 2) -> (n, m) 1 / (1 + c·d_position)², exact (no matrix-product cancellation)."""
    dy = centres[:, None, 0] - candidate_centres[None, :, 0]
    dx = centres[:, None, 1] - candidate_centres[None, :, 1]
    return (dy.square_().add_(dx.square_()).sqrt_().mul_(c).add_(1)).square_().reciprocal_()


def _view(buffer: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A contiguous tensor of ``shape`` on the start of a flat preallocated ``buffer``."""
    return buffer[: math.prod(shape)].view(shape)


def _smallest(values: Tensor, count: int) -> Tensor:
    """The ``count`` smallest of each row of ``values`` (..., n), in any order.

    On CPU numpy's SIMD partition of the float bit patterns is 2-4x faster than
    ``torch.topk``: as integers they sort like the non-negative floats they encode, and below
    them all negative ones (here only rounding noise of a zero distance, clamped by the caller).
    """
    if values.device.type != "cpu":
        return values.topk(count, dim=-1, largest=False, sorted=False).values
    bits = torch.int64 if values.dtype == torch.float64 else torch.int32
    array = values.view(bits).numpy()
    if count < values.shape[-1]:
        array.partition(count - 1, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array[..., :count])).view(values.dtype)


# --------------------------------------------------------------------------- immediate context


def _focus_distance(saliency: Tensor, threshold: float) -> Tensor:
    """Eq. 5's d_foci: (B, h, w) -> Euclidean distance to the nearest focus / its maximum.

    Foci are the pixels with S̄ >= ``threshold`` · max S̄. Exact and separable: g = distance to
    the nearest focus in the same column (two cumulative scans), then
    D²(i, j) = min_j' g(i, j')² + (j − j')² (chunked over rows), all in integers.
    """
    batch, height, width = saliency.shape
    foci = saliency >= threshold * saliency.flatten(1).amax(dim=1)[:, None, None]
    far = height + width  # more than any distance inside the image
    rows = torch.arange(height, dtype=torch.int32, device=saliency.device)[None, :, None]
    above = torch.where(foci, rows, -far).cummax(dim=1).values
    below = torch.where(foci, rows, height + far).flip(1).cummin(dim=1).values.flip(1)
    column = torch.minimum(rows - above, below - rows).clamp_max_(far)
    column = column.square_().view(batch * height, 1, width)
    cols = torch.arange(width, dtype=torch.int32, device=saliency.device)
    offsets = (cols[:, None] - cols[None, :]).square_()  # (j, j')
    budget = _CHUNK_ELEMENTS.get(saliency.device.type, _CHUNK_ELEMENTS["default"])
    step = max(1, budget // (width * width))
    squared = torch.cat([(column[i : i + step] + offsets).amin(dim=-1) for i in range(0, batch * height, step)])
    distance = squared.view(batch, height, width).to(saliency.dtype).sqrt_()
    return _divide_by_max(distance)


def _center_prior(height: int, width: int, sigma: float, like: Tensor) -> Tensor:
    """(h, w) exp(−‖p − centre‖² / (2σ²)), positions divided by the larger side."""
    scale = max(height, width)
    ys = (torch.arange(height, dtype=like.dtype, device=like.device) - (height - 1) / 2) / scale
    xs = (torch.arange(width, dtype=like.dtype, device=like.device) - (width - 1) / 2) / scale
    return torch.exp(-(ys[:, None].square() + xs[None, :].square()) / (2 * sigma**2))


# --------------------------------------------------------------------------- resizing and normalising


def _working_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) -> (h, w) with long edge ``size``, aspect kept (short edge rounded, >= 1)."""
    long_edge = max(height, width)
    return (_scaled(height, size / long_edge), _scaled(width, size / long_edge))


def _scaled(length: int, factor: float) -> int:
    """round(length · factor), halves up, at least 1."""
    return max(1, math.floor(length * factor + 0.5))


def _scale_shape(height: int, width: int, factor: float, patch_size: int, size: int) -> tuple[int, int]:
    shape = (_scaled(height, factor), _scaled(width, factor))
    if min(shape) < patch_size:
        raise ValueError(
            f"Expected every scale to leave an image of at least {patch_size}x{patch_size} pixels, but "
            f"scale {factor} of the {height}x{width} working image is {shape[0]}x{shape[1]}: increase "
            f"`size` (got {size}) or the smallest of `scales`."
        )
    return shape


def _divide_by_max(x: Tensor) -> Tensor:
    """(B, h, w) non-negative maps divided by their maximum; an all-zero map stays zero."""
    top = x.flatten(1).amax(dim=1)[:, None, None]
    return torch.where(top > 0, x / torch.where(top > 0, top, 1), 0)


# --------------------------------------------------------------------------- validation


def _check_maps(maps: object) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(f"Expected `maps` to be a torch.Tensor, but got {type(maps).__name__}.")
    if not maps.is_floating_point():
        raise TypeError(f"Expected `maps` to be a floating-point tensor, but got dtype {maps.dtype}.")
    if maps.ndim != 4 or 0 in maps.shape[1:]:
        raise ValueError(
            f"Expected `maps` of shape (B, C, H, W) with C, H, W >= 1, but got shape {tuple(maps.shape)}."
        )
    bad = int((~torch.isfinite(maps)).sum())
    if bad:
        raise ValueError(f"Expected `maps` to hold only finite values, but got {bad} NaN or infinite value(s).")
    return maps.detach()


def _check_patch_size(value: object) -> int:
    size = check_int(value, "patch_size", minimum=3, expected="an odd int >= 3")
    if size % 2 == 0:
        raise ValueError(f"Expected `patch_size` to be an odd int >= 3, but got {value!r}.")
    return size


def _check_scales(name: str, value: object) -> tuple[float, ...]:
    if (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(is_real(v) and 0 < float(v) <= 1 for v in value)
        and len(set(value)) == len(value)
    ):
        return tuple(float(v) for v in value)
    raise ValueError(f"Expected `{name}` to be a non-empty sequence of distinct numbers in (0, 1], but got {value!r}.")
