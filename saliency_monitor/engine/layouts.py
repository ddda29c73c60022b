"""How a layer's output reads as a map (B, K, H, W) on the image grid: the layout seam.

==================  ======================  ==================================================
layout              the layer's output      its map (B, K, H, W)
==================  ======================  ==================================================
``channels_first``  (B, K, H, W)            the output itself (CNNs)
``channels_last``   (B, H, W, K)            ``permute(0, 3, 1, 2)`` (Swin stages, the inside of
                                            ConvNeXt blocks, timm's NHWC models)
``tokens``          (B, P + h·w, K)         the h·w patch tokens in raster order as (B, K, h, w);
                                            the P leading class / register tokens are left out
                                            of the map (ViT blocks)
==================  ======================  ==================================================

The recorder (:class:`~saliency_monitor.engine.capture.LayerRecorder`) records
``to_map(output)``, a differentiable view of the output, and hands the rest of the network
``from_map(output, map.clone())`` (or ``map + δ`` on the vectorised meta path): the same
values, the spatial part coming from the recorded map and the class tokens straight from the
output. The gradient with respect to the recorded map is therefore exactly the gradient at
those positions, and every method runs on it in the same closed forms: a token is a location,
its D features are its channels; Grad-CAM's channel weights are the average over the patch
tokens. Class tokens stay in the computation (attention reads them), only out of the map.

Which layout a layer has is detected from the model and the output's shape
(:mod:`saliency_monitor.engine.layout_detection`); :func:`declare_layout` states it where
detection cannot (a patch grid no module of the model produces, an ambiguous shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, normalize_size

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
TOKENS = "tokens"
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST, TOKENS)
LAYOUT_ATTRIBUTE = "_saliency_map_layout"
"""The module attribute :func:`declare_layout` writes (copied with the module by ``copy.deepcopy``)."""


@dataclass(frozen=True)
class MapLayout:
    """How one layer's output maps to (B, K, H, W) and back."""

    kind: str
    """One of :data:`LAYOUTS`."""
    grid: tuple[int, int] | None = None
    """The patch grid (h, w) of ``tokens`` (None for the other layouts: their shape holds it)."""
    prefix_tokens: int = 0
    """Leading non-patch tokens of ``tokens`` (class, distillation and register tokens)."""

    def to_map(self, output: Tensor) -> Tensor:
        """The map view (B, K, H, W) of ``output``: a view, so gradients reach the output's positions."""
        if self.kind == CHANNELS_LAST:
            return output.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            assert self.grid is not None
            return output[:, self.prefix_tokens :].transpose(1, 2).unflatten(2, self.grid)
        return output

    def from_map(self, output: Tensor, values: Tensor) -> Tensor:
        """``output`` rebuilt with its map positions taken from ``values`` (B, K, H, W)."""
        if self.kind == CHANNELS_LAST:
            return values.permute(0, 2, 3, 1)
        if self.kind == TOKENS:
            tokens = values.flatten(2).transpose(1, 2)
            return torch.cat([output[:, : self.prefix_tokens], tokens], dim=1) if self.prefix_tokens else tokens
        return values

    def map_shape(self, shape: tuple[int, ...] | torch.Size) -> torch.Size:
        """The map's shape (B, K, H, W) for an output of ``shape``."""
        if self.kind == CHANNELS_LAST:
            return torch.Size((shape[0], shape[3], shape[1], shape[2]))
        if self.kind == TOKENS:
            assert self.grid is not None
            return torch.Size((shape[0], shape[2], *self.grid))
        return torch.Size(shape)

    def fits(self, shape: tuple[int, ...]) -> str | None:
        """None if an output of ``shape`` has this layout's rank (and token count), else why not."""
        if self.kind == TOKENS:
            assert self.grid is not None
            tokens = self.prefix_tokens + self.grid[0] * self.grid[1]
            if len(shape) != 3 or shape[1] != tokens:
                return (f"its declared layout is {self.describe()}, which needs (B, {tokens}, D) "
                        f"({self.prefix_tokens} + {self.grid[0]}×{self.grid[1]} tokens)")
        elif len(shape) != 4:
            return f"its declared layout is {self.describe()}, which needs a 4-D output"
        return None

    def describe(self) -> str:
        if self.kind == TOKENS:
            assert self.grid is not None
            prefix = f"{self.prefix_tokens} + " if self.prefix_tokens else ""
            return f"tokens (B, {prefix}{self.grid[0]}×{self.grid[1]}, D)"
        return "channels-last (B, H, W, C)" if self.kind == CHANNELS_LAST else "channels-first (B, K, H, W)"


def declare_layout(
    module: nn.Module, layout: str | None, *, grid: object = None, prefix_tokens: object = 0
) -> None:
    """State how ``module``'s output reads as a map, where detection cannot tell.

    Args:
        module: the layer's module (a module of the model, e.g. ``model.blocks[3]``).
        layout: ``"channels_first"`` (B, K, H, W), ``"channels_last"`` (B, H, W, C) or ``"tokens"``
            (B, P + h·w, D); None removes a declaration.
        grid: the patch grid (h, w) (or one int for a square grid) of ``"tokens"``; only for tokens.
        prefix_tokens: how many leading tokens (class, register) are not patches; only for tokens.

    The declaration is an attribute of the module (deep copies keep it); the output is still
    checked against it at every pass, and a 1×1 grid is still refused.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"Expected `module` to be a torch.nn.Module, but got {module!r}.")
    kind = check_choice(layout, "layout", LAYOUTS, or_none=True)
    if kind is None:
        if hasattr(module, LAYOUT_ATTRIBUTE):
            delattr(module, LAYOUT_ATTRIBUTE)
        return
    if kind == TOKENS:
        size = normalize_size(grid, "grid")
        if size is None:
            raise ValueError("Expected `grid` to be the tokens' patch grid (h, w), but got None.")
        declared = MapLayout(kind, size, check_int(prefix_tokens, "prefix_tokens"))
    else:
        if grid is not None or prefix_tokens != 0:
            raise ValueError(
                f"Expected `grid=None` and `prefix_tokens=0` for layout {kind!r} (its shape holds the grid), "
                f"but got grid={grid!r}, prefix_tokens={prefix_tokens!r}."
            )
        declared = MapLayout(kind)
    setattr(module, LAYOUT_ATTRIBUTE, declared)


def declared_layout(module: nn.Module) -> MapLayout | None:
    """The layout :func:`declare_layout` gave ``module``, if any."""
    declared = getattr(module, LAYOUT_ATTRIBUTE, None)
    return declared if isinstance(declared, MapLayout) else None
