"""Extract & Aggregate (Rebuffi et al., "There and Back Again", CVPR 2020, §3, Tables 1-2).

At a layer with activation x (B, K, H, W) and gradient g = d score / d x, every spatial
location u contributes a term to the gradient of a spatially shared weight (*extract*),
and an aggregation turns each term into one number (*aggregate*):

==================  ==================================  =====================================
extract             term at u                           weight it is the gradient of
==================  ==================================  =====================================
bias                g_u                                 virtual identity bias   (eq. 3)
scaling             g_u ⊙ x_u                           virtual identity scale  (eq. 3)
conv1x1             g_u x_uᵀ                            virtual identity 1x1 conv (eq. 2)
conv3x3             g_u x_{u,3x3}ᵀ                      virtual identity 3x3 conv, zero padded
conv3x3_depthwise   (g_{k,u} x_{k,u+δ})_{k, δ∈3x3}      virtual identity depthwise 3x3 conv
conv                g^out_u x^in_{u,N×N}ᵀ               the layer's real Conv2d weight (eq. 2)
==================  ==================================  =====================================

aggregations: ``sum`` Σ, ``max`` max (signed, the official code's Phase 2 ``max``),
``maxabs`` max|·|, ``norm`` ‖·‖ (L2 / Frobenius), ``filter_norm`` ‖(·)₊‖ (positive filtering
then norm). Outer-product terms are never materialised:

    Σ_ij g_i p_j = (Σ g)(Σ p)                max_ij |g_i p_j| = max|g| · max|p|
    ‖g pᵀ‖_F = ‖g‖ ‖p‖                        ‖(g pᵀ)₊‖² = ‖g₊‖²‖p₊‖² + ‖g₋‖²‖p₋‖²
    max_ij g_i p_j = max of the four products of {min g, max g} and {min p, max p}

and statistics of an unfolded patch p_u are box filters (sum or max pooling, with the
conv's own kernel, stride, padding and dilation) of per-location channel statistics of x.
For a grouped conv the term is block-diagonal: statistics are taken per group and the
aggregation combines groups (Σ for sum and squared norms, max for max and maxabs); the
depthwise extract is the grouped case with one channel per group.
Memory is O(B·T·K·H·W) for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import Capture

EXTRACTS = ("bias", "scaling", "conv1x1", "conv3x3", "conv3x3_depthwise", "conv")
AGGREGATIONS = ("sum", "max", "maxabs", "norm", "filter_norm")


def cell_map(extract: str, aggregation: str, capture: Capture) -> Tensor:
    """The (B, T, h, w) float32 map of one cell of the grid from one layer's capture."""
    g = capture.gradient.float()
    x = capture.activation.float()
    if extract in ("bias", "scaling"):
        return aggregate_vector(g if extract == "bias" else g * x.unsqueeze(1), aggregation)
    if extract == "conv":
        if capture.layer_input is None:
            raise ValueError("Expected the layer's input to be captured for the real-conv extract ('conv:*').")
        return aggregate_outer(g, capture.layer_input.float(), ConvGeometry.of(capture.module), aggregation)
    if extract == "conv3x3_depthwise":
        return aggregate_outer(g, x, ConvGeometry.identity(3, groups=x.shape[1]), aggregation)
    return aggregate_outer(g, x, ConvGeometry.identity(1 if extract == "conv1x1" else 3), aggregation)


def grad_cam_map(capture: Capture) -> Tensor:
    """Grad-CAM's (B, T, h, w) float32 map from one layer's capture (see :func:`grad_cam`)."""
    return grad_cam(capture.gradient.float(), capture.activation.float())


def grad_cam(g: Tensor, x: Tensor) -> Tensor:
    """Grad-CAM: relu(Σ_k mean_u(g_k) x_k). g (B, T, K, H, W), x (B, K, H, W) -> (B, T, H, W)."""
    weights = g.mean(dim=(-2, -1))
    return torch.einsum("btk,bkhw->bthw", weights, x).clamp_min(0)


def aggregate_vector(term: Tensor, aggregation: str) -> Tensor:
    """Aggregate a per-location vector term (B, T, K, H, W) over K."""
    if aggregation == "sum":
        return term.sum(dim=2)
    if aggregation == "max":
        return term.amax(dim=2)
    if aggregation == "maxabs":
        return term.abs().amax(dim=2)
    if aggregation == "norm":
        return torch.linalg.vector_norm(term, dim=2)
    if aggregation == "filter_norm":
        return torch.linalg.vector_norm(term.clamp_min(0), dim=2)
    raise ValueError(f"Expected aggregation in {list(AGGREGATIONS)}, but got {aggregation!r}.")


@dataclass(frozen=True)
class ConvGeometry:
    """Where a conv's patches come from: kernel, stride, dilation, padding (l, r, t, b)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    padding_mode: str
    groups: int

    @classmethod
    def identity(cls, kernel: int, groups: int = 1) -> ConvGeometry:
        """A virtual identity N×N conv: stride 1, zero 'same' padding (N odd); ``groups`` equal to
        the channel count makes it depthwise (each channel sees only its own patch)."""
        pad = kernel // 2
        return cls((kernel, kernel), (1, 1), (1, 1), (pad, pad, pad, pad), "zeros", groups)

    @classmethod
    def of(cls, module: nn.Module | None) -> ConvGeometry:
        if not isinstance(module, nn.Conv2d):
            raise ValueError(
                "Expected a torch.nn.Conv2d layer for the real-conv extract ('conv'), "
                f"but got {type(module).__name__}."
            )
        kh, kw = module.kernel_size
        dh, dw = module.dilation
        if isinstance(module.padding, str):
            total_h, total_w = (0, 0) if module.padding == "valid" else (dh * (kh - 1), dw * (kw - 1))
            padding = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        else:
            ph, pw = module.padding
            padding = (pw, pw, ph, ph)
        sh, sw = module.stride
        return cls((kh, kw), (sh, sw), (dh, dw), padding, module.padding_mode, module.groups)

    def unfold_padded(self, stats: Tensor) -> Tensor:
        """Pad per-location statistics (B, S, H, W) as the conv pads its input."""
        if not any(self.padding):
            return stats
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(stats, self.padding, mode=mode)

    def patch_sum(self, stats: Tensor) -> Tensor:
        """Σ over each patch of per-location statistics (B, S, H, W) -> (B, S, H', W')."""
        if self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.padding):
            return stats
        ones = stats.new_ones(stats.shape[1], 1, *self.kernel)
        return F.conv2d(
            self.unfold_padded(stats), ones, stride=self.stride, dilation=self.dilation,
            groups=stats.shape[1],
        )

    def patch_max(self, stats: Tensor) -> Tensor:
        """max over each patch of per-location statistics (B, S, H, W) -> (B, S, H', W')."""
        if self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.padding):
            return stats
        return F.max_pool2d(
            self.unfold_padded(stats), self.kernel, stride=self.stride, dilation=self.dilation
        )


def _grouped(t: Tensor, groups: int, dim: int) -> Tensor:
    """Split channel dim ``dim`` into (groups, K // groups)."""
    return t.unflatten(dim, (groups, t.shape[dim] // groups))


def aggregate_outer(g: Tensor, x: Tensor, geometry: ConvGeometry, aggregation: str) -> Tensor:
    """Aggregate outer-product terms g_u p_uᵀ, p_u the patch of x at u, in closed form.

    g (B, T, K', H', W') at the conv output, x (B, K, H, W) at its input -> (B, T, H', W').
    """
    groups = geometry.groups
    gg = _grouped(g, groups, 2)  # (B, T, G, K'/G, H', W')
    xg = _grouped(x, groups, 1)  # (B, G, K/G, H, W)

    def channel_stat(fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        return fn(gg).sum(dim=3), fn(xg).sum(dim=2)  # (B, T, G, H', W'), (B, G, H, W)

    if aggregation == "sum":
        sg, sx = channel_stat(lambda t: t)
        return (sg * geometry.patch_sum(sx).unsqueeze(1)).sum(dim=2)
    if aggregation == "max":  # max_ij g_i p_j is at a corner of [min g, max g] x [min p, max p]
        g_high, g_low = gg.amax(dim=3), gg.amin(dim=3)
        p_high = geometry.patch_max(xg.amax(dim=2)).unsqueeze(1)
        p_low = -geometry.patch_max(-xg.amin(dim=2)).unsqueeze(1)
        high = torch.maximum(g_high * p_high, g_high * p_low).maximum(torch.maximum(g_low * p_high, g_low * p_low))
        return high.amax(dim=2)
    if aggregation == "maxabs":
        mg, mx = gg.abs().amax(dim=3), xg.abs().amax(dim=2)
        return (mg * geometry.patch_max(mx).unsqueeze(1)).amax(dim=2)
    if aggregation == "norm":
        qg, qx = channel_stat(torch.square)
        return (qg * geometry.patch_sum(qx).unsqueeze(1)).sum(dim=2).sqrt()
    if aggregation == "filter_norm":
        pg, px = channel_stat(lambda t: t.clamp_min(0).square())
        ng, nx = channel_stat(lambda t: t.clamp_max(0).square())
        pooled = geometry.patch_sum(torch.cat([px, nx], dim=1)).unsqueeze(1)
        p_pos, p_neg = pooled[:, :, :groups], pooled[:, :, groups:]
        return (pg * p_pos + ng * p_neg).sum(dim=2).sqrt()
    raise ValueError(f"Expected aggregation in {list(AGGREGATIONS)}, but got {aggregation!r}.")
