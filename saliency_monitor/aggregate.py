"""Extract & Aggregate (Rebuffi et al., "There and Back Again", CVPR 2020, §3, Tables 1-2).

At a layer with activation x (B, K, H, W) and gradient g = d score / d x, every spatial
location u contributes a term to the gradient of a spatially shared weight (*extract*),
and an aggregation turns each term into one number (*aggregate*):

==========  ==================================  =========================================
extract     term at u                           weight it is the gradient of
==========  ==================================  =========================================
bias        g_u                                 virtual identity bias   (eq. 3)
scaling     g_u ⊙ x_u                           virtual identity scale  (eq. 3)
conv1x1     g_u x_uᵀ                            virtual identity 1x1 conv (eq. 2)
conv3x3     g_u x_{u,3x3}ᵀ                      virtual identity 3x3 conv, zero padded
conv        g^out_u x^in_{u,N×N}ᵀ               the layer's real Conv2d weight (eq. 2)
==========  ==================================  =========================================

aggregations: ``sum`` Σ, ``maxabs`` max|·|, ``norm`` ‖·‖ (L2 / Frobenius), ``filter_norm``
‖(·)₊‖ (positive filtering then norm). Outer-product terms are never materialised:

    Σ_ij g_i p_j = (Σ g)(Σ p)                max_ij |g_i p_j| = max|g| · max|p|
    ‖g pᵀ‖_F = ‖g‖ ‖p‖                        ‖(g pᵀ)₊‖² = ‖g₊‖²‖p₊‖² + ‖g₋‖²‖p₋‖²

and statistics of an unfolded patch p_u are box filters (sum or max pooling, with the
conv's own kernel, stride, padding and dilation) of per-location channel statistics of x.
For a grouped conv the term is block-diagonal: statistics are taken per group and the
aggregation combines groups (Σ for sum and squared norms, max for maxabs).
Memory is O(B·T·K·H·W) for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .extract import Capture

EXTRACTS = ("bias", "scaling", "conv1x1", "conv3x3", "conv")
AGGREGATIONS = ("sum", "maxabs", "norm", "filter_norm")

NAMED_METHODS: dict[str, tuple[str, str] | None] = {
    "gradient": ("bias", "maxabs"),  # Simonyan et al. 2014
    "linear_approx": ("scaling", "sum"),  # gradient x input, Kindermans et al. 2016
    "grad_cam": None,  # Selvaraju et al. 2017: not an Extract & Aggregate entry (averages g)
    "norm_grad": ("conv1x1", "norm"),  # ‖g‖‖x‖
    "norm_grad_selective": ("scaling", "filter_norm"),  # ‖(g ⊙ x)₊‖
    "norm_grad_conv": ("conv", "norm"),  # ‖g^out‖‖x^in_{N×N}‖, no identity trick
}


@dataclass(frozen=True)
class Method:
    """A saliency method: a named one, or any ``"extract:aggregation"`` pair of the grid."""

    name: str
    extract: str | None
    aggregation: str | None

    @property
    def needs_layer_input(self) -> bool:
        return self.extract == "conv"

    def __call__(self, capture: Capture) -> Tensor:
        """(B, T, h, w) float32 map from one layer's capture."""
        g = capture.gradient.float()
        x = capture.activation.float()
        if self.extract is None:
            return grad_cam(g, x)
        if self.extract in ("bias", "scaling"):
            term = g if self.extract == "bias" else g * x.unsqueeze(1)
            return aggregate_vector(term, self.aggregation)
        if self.extract == "conv":
            geometry = ConvGeometry.of(capture.module)
            x = capture.layer_input.float()
        else:
            geometry = ConvGeometry.identity(kernel=1 if self.extract == "conv1x1" else 3)
        return aggregate_outer(g, x, geometry, self.aggregation)


def parse_method(spec: str) -> Method:
    """A named method, or ``"extract:aggregation"`` (e.g. ``"conv3x3:norm"``)."""
    if not isinstance(spec, str):
        raise TypeError(f"Expected a method name (str), but got {spec!r}.")
    if spec in NAMED_METHODS:
        pair = NAMED_METHODS[spec]
        return Method(spec, *(pair if pair else (None, None)))
    extract, sep, aggregation = spec.partition(":")
    if sep and extract in EXTRACTS and aggregation in AGGREGATIONS:
        return Method(spec, extract, aggregation)
    raise ValueError(
        f"Expected a method in {sorted(NAMED_METHODS)} or 'extract:aggregation' with extract in "
        f"{list(EXTRACTS)} and aggregation in {list(AGGREGATIONS)}, but got {spec!r}."
    )


def grad_cam(g: Tensor, x: Tensor) -> Tensor:
    """Grad-CAM: relu(Σ_k mean_u(g_k) x_k). g (B, T, K, H, W), x (B, K, H, W) -> (B, T, H, W)."""
    weights = g.mean(dim=(-2, -1))
    return torch.einsum("btk,bkhw->bthw", weights, x).clamp_min(0)


def aggregate_vector(term: Tensor, aggregation: str) -> Tensor:
    """Aggregate a per-location vector term (B, T, K, H, W) over K."""
    if aggregation == "sum":
        return term.sum(dim=2)
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
    def identity(cls, kernel: int) -> ConvGeometry:
        """A virtual identity N×N conv: stride 1, zero 'same' padding (N odd)."""
        pad = kernel // 2
        return cls((kernel, kernel), (1, 1), (1, 1), (pad, pad, pad, pad), "zeros", 1)

    @classmethod
    def of(cls, module: nn.Module | None) -> ConvGeometry:
        if not isinstance(module, nn.Conv2d):
            raise ValueError(
                "Expected a torch.nn.Conv2d layer for the real-conv extract ('conv:*', "
                f"norm_grad_conv), but got {type(module).__name__}."
            )
        kh, kw = module.kernel_size
        dh, dw = module.dilation
        if isinstance(module.padding, str):
            total_h, total_w = (0, 0) if module.padding == "valid" else (dh * (kh - 1), dw * (kw - 1))
            padding = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        else:
            ph, pw = module.padding
            padding = (pw, pw, ph, ph)
        return cls(
            (kh, kw), tuple(module.stride), (dh, dw), padding, module.padding_mode, module.groups
        )

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
