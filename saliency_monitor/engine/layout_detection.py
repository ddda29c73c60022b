"""Which :class:`~saliency_monitor.engine.layouts.MapLayout` a layer's output has, found from the
model's structure and the output's shape during the forward pass itself.

A :class:`LayoutTracker` watches one forward at a time. It learns the batch size B and the
image grid (H, W) from the model's input, and the *grids of the model* from the modules whose
type fixes their layout: convolutions, 2-D batch / group / instance norms, 2-D pools and
upsampling are channels-first, so their (h, w) is a grid (a ViT's patch embedding gives its
patch grid); ``nn.Linear`` and ``nn.LayerNorm`` (not the 2-D variants) act on the last axis,
so a 4-D output of theirs is channels-last. A grid is *plausible* if it is the image's, one of
the model's, or comes from one of the model's by halvings (floor or ceil, up to 2⁶: Swin's
patch merging has no conv).

A layer's output (first axis B, or it is refused: window-partitioned rows) is then read as

* 4-D from a channels-first module: channels-first, its own grid; an adaptive pool that
  upsamples is refused (its map replicates the previous layer's);
* 4-D otherwise: (B, K, H, W) if (H, W) is plausible, (B, H, W, C) if (H, W) is (the former
  ruled out for ``Linear`` / ``LayerNorm``); when both fit (C = H = W), the reading of the last
  channels-first / channels-last module that produced that exact shape in this pass; neither:
  refused (MaxViT's (B, windows, tokens, C) attention internals). Softmax weights (non-negative,
  summing to 1 along the last axis) are refused even on a plausible grid: an attention matrix
  of N×N weights, N a grid side (SwinV2 at 256 px, one window in its last stage);
* 3-D (B, N, D): tokens, if N = P + h·w for a plausible grid, P the model's prefix token
  count (timm's ``num_prefix_tokens``; class / distillation / register token parameters) or 0
  (0-8 for a model that says nothing); else refused;
* any other rank, or a map of 1×1: refused; so is every output between a window partition
  module and its departition (torchvision MaxViT: ``WindowPartition`` ... ``WindowDepartition``),
  whatever its shape.

A layout declared with :func:`~saliency_monitor.engine.layouts.declare_layout` replaces the
detection (the output's rank and token count are still checked).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import describe
from .layouts import CHANNELS_FIRST, CHANNELS_LAST, TOKENS, MapLayout, declared_layout

MAX_HALVINGS = 6
MAX_PREFIX_TOKENS = 8
"""Leading non-patch tokens accepted when the model does not say how many it has."""
TOKEN_PARAMETERS = ("class_token", "cls_token", "dist_token", "reg_token", "register_tokens")
"""Parameter names (as in torchvision and timm) of leading tokens, each (1, P, D)."""
_CHANNELS_FIRST_TYPES = (
    nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.GroupNorm,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.LPPool2d,
)
_SEQUENCE_TYPES = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
NOT_A_MAP = "Expected layer {name!r} to output a 4-D (B, K, H, W) tensor, but got {got}."
HOW_MAPS_ARE_READ = (
    " Maps are read from (B, K, H, W) and channels-last (B, H, W, C) outputs and from (B, N, D) tokens on a "
    "patch grid."
)


def fixed_kind(module: nn.Module) -> str | None:
    """The layout a module's type fixes for its 4-D output: channels first or last, or None."""
    if isinstance(module, nn.LayerNorm):  # LayerNorm2d (torchvision, timm) normalises channels first
        if "2d" in type(module).__name__.lower():
            return CHANNELS_FIRST
        return CHANNELS_LAST if len(module.normalized_shape) == 1 else None  # not over (C, H, W) at once
    if isinstance(module, nn.Linear):
        return CHANNELS_LAST
    return CHANNELS_FIRST if isinstance(module, _CHANNELS_FIRST_TYPES) else None


def prefix_tokens_of(model: nn.Module) -> int | None:
    """How many leading non-patch tokens the model's token layers hold, if it says."""
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    shapes = [p.shape for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in TOKEN_PARAMETERS]
    return sum(shape[1] for shape in shapes if len(shape) == 3) if shapes else None


def halvings(grids: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``grids`` and every grid reached from one by up to :data:`MAX_HALVINGS` halvings (floor or
    ceil per axis), without repeats, ``grids`` first."""
    family = dict.fromkeys(grids)
    frontier = list(family)
    for _ in range(MAX_HALVINGS):
        frontier = [(a, b) for h, w in frontier for a in dict.fromkeys((h // 2, -(-h // 2)))
                    for b in dict.fromkeys((w // 2, -(-w // 2))) if a >= 1 and b >= 1 and (a, b) not in family]
        family.update(dict.fromkeys(frontier))
    return list(family)


class LayoutTracker:
    """Forward hooks that learn the batch, the image grid and the model's grids, and read layers' outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.prefix_tokens = prefix_tokens_of(model)
        self.batch: int | None = None
        self.image: tuple[int, int] | None = None
        self.grids: dict[tuple[int, int], None] = {}
        """Grids of channels-first modules, in the order they ran."""
        self.memo: dict[tuple[int, ...], str] = {}
        """The layout of the last fixed-layout module output of each shape in this pass."""
        self._plausible: list[tuple[int, int]] | None = None
        self.partitioned = False
        """Between a window partition module and its departition (torchvision MaxViT's attention)."""
        self.handles = [model.register_forward_pre_hook(self._start)]
        self.handles += [m.register_forward_hook(self._observe) for m in model.modules() if fixed_kind(m)]
        self.handles += [m.register_forward_hook(self._partition) for m in model.modules() if _partitions(m)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _start(self, _module: nn.Module, args: tuple[object, ...]) -> None:
        self.batch, self.image, self.grids, self.memo, self._plausible = None, None, {}, {}, None
        self.partitioned = False
        image = args[0] if args else None
        if isinstance(image, Tensor) and image.ndim == 4:
            self.batch, self.image = image.shape[0], (image.shape[2], image.shape[3])

    def _add_grid(self, grid: tuple[int, int]) -> None:
        if grid not in self.grids:
            self.grids[grid] = None
            self._plausible = None

    def own(self) -> list[tuple[int, int]]:
        """The image's grid and the model's."""
        return list(dict.fromkeys([*([self.image] if self.image else []), *self.grids]))

    def plausible(self) -> list[tuple[int, int]]:
        """The plausible grids: the image's, the model's and their halvings (not the image's: an
        attention matrix of N×N weights would too often read as one)."""
        if self._plausible is None:
            self._plausible = list(dict.fromkeys([*self.own(), *halvings(list(self.grids))]))
        return self._plausible

    def _partition(self, module: nn.Module, _args: tuple[object, ...], _output: object) -> None:
        self.partitioned = _partitions(module) == "partition"

    def _observe(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not isinstance(output, Tensor) or output.ndim != 4 or output.shape[0] != (self.batch or output.shape[0]):
            return
        shape = tuple(output.shape)
        kind = fixed_kind(module)
        if kind == CHANNELS_FIRST and _upsampling_pool(module, args, shape) is None:
            self._add_grid((shape[2], shape[3]))
            self.memo[shape] = CHANNELS_FIRST
        elif kind == CHANNELS_LAST and (shape[1], shape[2]) in self.plausible():
            self.memo[shape] = CHANNELS_LAST

    def layout(self, name: str, module: nn.Module, args: tuple[object, ...], output: object) -> MapLayout:
        """The layout of layer ``name``'s output, or a ValueError saying why it is not a map."""
        found = self.classify(module, args, output)
        if isinstance(found, MapLayout):
            return found
        if not isinstance(output, Tensor) or (output.ndim not in (3, 4) and declared_layout(module) is None):
            got = f"shape {tuple(output.shape)}" if isinstance(output, Tensor) else describe(output)
            raise ValueError(NOT_A_MAP.format(name=name, got=got) + HOW_MAPS_ARE_READ)
        raise ValueError(
            f"Expected layer {name!r} to output a map on the image grid, but got shape {tuple(output.shape)}: "
            f"{found}. Choose a layer whose output lies on the grid (a stage or block output), or state its "
            "layout with saliency_monitor.engine.declare_layout(module, ...)."
        )

    def classify(self, module: nn.Module, args: tuple[object, ...], output: object) -> MapLayout | str:
        """The layout of a module's output, or why it has none (no error raised)."""
        if not isinstance(output, Tensor):
            return f"it returns {describe(output)}"
        shape = tuple(output.shape)
        if self.batch is not None and output.ndim >= 1 and shape[0] != self.batch:
            return (f"its first axis ({shape[0]}) is not the batch of {self.batch} images: a window-partitioned or "
                    "otherwise regrouped tensor")
        declared = declared_layout(module)
        found: MapLayout | str | None
        if self.partitioned and declared is None:
            return "it runs between a window partition and its departition: its axes are windows and window tokens"
        if declared is not None:
            found = declared.fits(shape) or declared
        elif output.ndim == 4:
            found = self._four_d(module, args, output)
        elif output.ndim == 3:
            found = self._tokens(module, shape)
        else:
            return f"it has {output.ndim} axes"
        if isinstance(found, MapLayout) and tuple(found.map_shape(shape)[2:]) == (1, 1):
            return "its map is 1×1 (one value per channel, as after a global pool): no spatial extent"
        return found

    def _four_d(self, module: nn.Module, args: tuple[object, ...], output: Tensor) -> MapLayout | str:
        kind, shape = fixed_kind(module), tuple(output.shape)
        if kind == CHANNELS_FIRST:
            return _upsampling_pool(module, args, shape) or MapLayout(CHANNELS_FIRST)
        plausible = self.plausible()
        first = kind != CHANNELS_LAST and (shape[2], shape[3]) in plausible
        if first and _softmax_rows(output):
            return "it holds weights that are non-negative and sum to 1 along its last axis: attention, not a map"
        last = (shape[1], shape[2]) in plausible
        if first and last:
            remembered = _permuted(args, output, self.memo.get(shape)) or self.memo.get(shape)
            if remembered is None:
                return (f"it reads as (B, K, H, W) on a {shape[2]}×{shape[3]} grid and as channels-last (B, H, W, C) "
                        f"on a {shape[1]}×{shape[2]} grid alike, and no module of known layout produced that shape")
            return MapLayout(remembered)
        if first or last:
            return MapLayout(CHANNELS_FIRST if first else CHANNELS_LAST)
        return (f"neither (B, K, H, W) ({shape[2]}×{shape[3]}) nor channels-last (B, H, W, C) ({shape[1]}×{shape[2]}) "
                f"is a grid of the image or the model ({self._grids_text()}): a window-partitioned or otherwise "
                "regrouped tensor")

    def _tokens(self, module: nn.Module, shape: tuple[int, ...]) -> MapLayout | str:
        if isinstance(module, _SEQUENCE_TYPES) or fixed_kind(module) == CHANNELS_FIRST:
            return "it is a channels-first sequence (B, C, L), not tokens (B, N, D)"
        prefixes = range(MAX_PREFIX_TOKENS + 1) if self.prefix_tokens is None else (self.prefix_tokens, 0)
        own = self.own()
        for prefix in dict.fromkeys(prefixes):
            for candidates in (own, [g for g in self.plausible() if g not in own]):
                grids = [g for g in candidates if g[0] * g[1] == shape[1] - prefix]
                if len(grids) > 1:
                    return f"its {shape[1] - prefix} tokens fit several grids, {grids}"
                if grids:
                    return MapLayout(TOKENS, grids[0], prefix)
        allowed = f"{self.prefix_tokens} or 0" if self.prefix_tokens is not None else f"0 to {MAX_PREFIX_TOKENS}"
        return (f"its {shape[1]} tokens are not {allowed} leading tokens plus a grid of the image or the model "
                f"({self._grids_text()})")

    def _grids_text(self) -> str:
        image = f"image {self.image[0]}×{self.image[1]}; " if self.image else ""
        return image + "model " + ", ".join(f"{h}×{w}" for h, w in self.grids) + " and their halvings"


def _permuted(args: tuple[object, ...], output: Tensor, source_kind: str | None) -> str | None:
    """The layout of ``output`` if it is its input, of layout ``source_kind``, with the channels moved
    last (or first) as a view: a ``Permute`` module of a shape that reads both ways (C = H = W)."""
    source = args[0] if args else None
    if source_kind is None or not isinstance(source, Tensor) or source is output or source.shape != output.shape:
        return None
    try:
        if source.untyped_storage().data_ptr() != output.untyped_storage().data_ptr():
            return None
        to_last, to_first = source.permute(0, 2, 3, 1).stride(), source.permute(0, 3, 1, 2).stride()
    except RuntimeError:  # no storage inside vmap: the unbatched pass before it decided
        return None
    if output.stride() == source.stride() or to_last == to_first:
        return None
    if output.stride() == to_last:
        return CHANNELS_LAST if source_kind == CHANNELS_FIRST else None
    return CHANNELS_FIRST if output.stride() == to_first and source_kind == CHANNELS_LAST else None


def _softmax_rows(output: Tensor) -> bool:
    """Whether ``output`` is non-negative with rows along its last axis summing to 1 (softmax weights)."""
    if not output.is_floating_point() or output.shape[-1] < 2:
        return False
    values = output.detach()
    try:
        return bool((values >= 0).all()) and bool(((values.sum(-1, dtype=torch.float32) - 1).abs() < 1e-3).all())
    except RuntimeError:  # a value cannot steer control flow inside vmap: the unbatched pass before it checked
        return False


def _partitions(module: nn.Module) -> str | None:
    """``"partition"`` / ``"departition"`` for modules that split a grid into windows and back (by
    class name: torchvision MaxViT's ``WindowPartition`` / ``WindowDepartition``), else None."""
    name = type(module).__name__.lower()
    if name.endswith("departition"):
        return "departition"
    return "partition" if name.endswith("partition") else None


def _upsampling_pool(module: nn.Module, args: tuple[object, ...], shape: tuple[int, ...]) -> str | None:
    """Why an adaptive pool's output is not a map of its own (it upsamples), or None."""
    if not isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or not args:
        return None
    source = args[0]
    if not isinstance(source, Tensor) or source.ndim != 4:
        return None
    height, width = source.shape[-2:]
    if shape[2] <= height and shape[3] <= width:
        return None
    return (f"it is an adaptive pool that upsamples its {height}×{width} input to {shape[2]}×{shape[3]}: its map is a "
            "replicated copy of the previous layer's")

