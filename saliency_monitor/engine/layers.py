"""Layer names: which modules saliency can be computed at, and a sensible default set.

A *layer* is a name from ``model.named_modules()`` whose module runs exactly once per forward
pass and returns a map on the image grid: a (B, K, H, W) tensor, a channels-last (B, H, W, C)
one, or (B, N, D) tokens on a patch grid (:mod:`.layouts`, detected by
:mod:`.layout_detection`), larger than 1×1; or the pseudo-layer ``"input"`` (the image itself).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._checks import check_distinct
from .layout_detection import LayoutTracker
from .layouts import TOKENS, MapLayout
from .model_io import check_images, eval_mode

INPUT = "input"
"""Pseudo-layer name for the image itself (it takes precedence over a module of that name)."""
BLOCKS_PER_PLAIN_MODEL = 4
"""How many evenly spaced blocks :func:`default_layers` picks in a model without resolutions (a ViT)."""


@dataclass
class LayerTrace:
    """What one forward pass did, per named module (root excluded), in completion order."""

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    """Output shape of the first call if it was a tensor, else None."""
    layouts: dict[str, MapLayout | str] = field(default_factory=dict)
    """The first call's layout (:mod:`.layouts`), or why its output is not a map."""
    differentiable: dict[str, bool] = field(default_factory=dict)
    """Whether the first call's output depends differentiably on the images (False for a module
    run under ``torch.no_grad()``, e.g. a frozen backbone in linear probing)."""
    views: set[str] = field(default_factory=set)
    """Modules whose output is their input untouched (``Identity``, eval-mode ``Dropout``) or a new view
    of its data (``Permute``, ``Flatten``): the same activation as the module before, under another name."""

    def usable(self, name: str) -> bool:
        """Saliency can be computed at ``name``: one call, a map that depends on the images."""
        return self.calls.get(name) == 1 and isinstance(self.layouts.get(name), MapLayout) and self.differentiable[name]

    def map_shape(self, name: str) -> tuple[int, ...]:
        """The (1, K, H, W) map shape of a usable layer."""
        layout, shape = self.layouts[name], self.shapes[name]
        assert isinstance(layout, MapLayout) and shape is not None
        return tuple(layout.map_shape(shape))


def trace_forward(model: nn.Module, images: Tensor) -> LayerTrace:
    """Run one eval-mode forward of a differentiable copy of ``images`` and record every
    module's calls, output shape and layout, and whether that output depends differentiably on
    the images."""
    trace = LayerTrace()
    floating = images.is_floating_point()
    tracker = LayoutTracker(model)  # its hooks run before the trace's
    versions: dict[str, int] = {}  # each module's first input's version when it starts

    def note_version(name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def pre_hook(_module: nn.Module, args: tuple[object, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                versions.setdefault(name, args[0]._version)

        return pre_hook

    def make_hook(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            count = trace.calls.get(name, 0)
            trace.calls[name] = count + 1
            if count == 0:
                trace.order.append(name)
                trace.shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
                trace.layouts[name] = tracker.classify(module, args, output)
                # integer images cannot require grad: a layer run with autograd on can still be differentiated
                trace.differentiable[name] = isinstance(output, Tensor) and (
                    output.requires_grad or (not floating and torch.is_grad_enabled())
                )
                if _is_view(output, args, versions.get(name)):
                    trace.views.add(name)

        return hook

    named = [(name, module) for name, module in model.named_modules() if name]
    handles = [module.register_forward_pre_hook(note_version(name)) for name, module in named]
    handles += [module.register_forward_hook(make_hook(name)) for name, module in named]
    try:
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
            differentiable = images.detach().clone()
            model(differentiable.requires_grad_(differentiable.is_floating_point()))
    finally:
        for handle in handles:
            handle.remove()
        tracker.remove()
    return trace


def _is_view(output: object, args: tuple[object, ...], version: int | None) -> bool:
    """Whether ``output`` is the module's first input, unmodified (``version``: the input's version when
    the module started; an in-place ``ReLU`` bumps it), or another tensor over its data."""
    source = args[0] if args else None
    if not isinstance(output, Tensor) or not isinstance(source, Tensor):
        return False
    if output is source:
        return source._version == version
    try:
        return output.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    except RuntimeError:  # a tensor without storage (a subclass, a wrapper): not a plain view
        return False


def default_layers(model: nn.Module, images: Tensor) -> list[str]:
    """Pick one layer per spatial resolution (a few evenly spaced blocks in a ViT), in forward order.

    Rule: run one eval-mode forward pass on ``images[:1]`` and keep the modules that run
    exactly once and return a map (:mod:`.layouts`: channels first, channels last or tokens on
    a patch grid) larger than 1x1 that depends differentiably on the images (not computed under
    ``torch.no_grad()``), whose (H, W) scales the input's by about the same factor in both
    dimensions (within 25%), and that do more than pass on or re-view their input (``Identity``,
    ``Permute``), the root module excluded. Group them by map size (H, W). For each size take the *shallowest*
    modules producing it (fewest dots in the name), and container items one level deeper of a
    plain ``nn.Sequential`` / ``nn.ModuleList`` of stages whose own output is at another resolution
    (timm: ``layers.0`` beside ``patch_embed``, ``stages.0`` beside ``stem``), and of those the one
    that finishes last. A stage container therefore wins over the blocks inside it (a container
    finishes after its children), and a block's inner modules never stand for a resolution their
    parent already covers. The result is ordered by when each module finishes.

    A plain transformer (every map on one grid, token layers: ViT, DeiT, Mixer) has one
    resolution but many blocks: the repeated blocks (the shallowest run of sibling modules of
    one class with the same map shape) stand for depth instead, and :data:`BLOCKS_PER_PLAIN_MODEL`
    of them are taken evenly spaced, ending at the last block whose patch tokens reach the
    logits: with class tokens the last block's patch tokens are read by nothing (the head reads
    the class token), so the inputs of the last block of each quarter are taken (ViT-B/16:
    ``encoder.layers.encoder_layer_1/4/7/10``); without, the last block of each quarter.

    torchvision resnet50 at 224 gives ``relu, layer1, layer2, layer3, layer4``; vgg16 gives
    ``features.3/8/15/22/29`` and ``avgpool`` (its 7x7 output; at smaller inputs it upsamples and
    is left out); swin_t gives ``features.1/3/5`` and ``norm``; maxvit_t ``stem, blocks.0/1/2``
    and ``blocks``.
    """
    check_images(images)
    trace = trace_forward(model, images[:1])
    input_size = tuple(images.shape[2:])
    candidates = [name for name in trace.order if trace.usable(name) and name not in trace.views
                  and _is_spatial(trace.map_shape(name)[2:], input_size)]
    if not candidates:
        raise ValueError(
            "Expected `model` to have at least one module returning a 4-D (B, K, H, W) tensor (or a channels-last "
            "or token map on the image grid) larger than 1x1, running once per forward and depending "
            "differentiably on the images, but it has none; pass `layers`."
            + ("" if any(trace.usable(name) for name in trace.order) else NO_GRAD_HINT)
        )
    if len({trace.map_shape(name)[2:] for name in candidates}) == 1:
        blocks = _spaced_blocks(trace, candidates, model)
        if blocks:
            return blocks
    return _per_resolution(trace, candidates, model)


def _per_resolution(trace: LayerTrace, candidates: list[str], model: nn.Module) -> list[str]:
    """One layer per map size (see :func:`default_layers`), in the order they finish."""
    modules = dict(model.named_modules())
    by_size: dict[tuple[int, ...], list[str]] = {}
    for name in candidates:
        by_size.setdefault(trace.map_shape(name)[2:], []).append(name)
    chosen = []
    for names in by_size.values():
        shallowest = min(name.count(".") for name in names)
        eligible = [name for name in names if name.count(".") == shallowest
                    or (name.count(".") == shallowest + 1 and _stage_of_a_sequence(trace, modules, name))]
        chosen.append(eligible[-1])  # candidates are in the order they finish
    return [name for name in candidates if name in chosen]


def _stage_of_a_sequence(trace: LayerTrace, modules: dict[str, nn.Module], name: str) -> bool:
    """Whether ``name`` is a container item of a plain ``nn.Sequential`` / ``nn.ModuleList`` whose own
    output is at another resolution (timm's ``layers.0`` after ``patch_embed``, ``stages.0`` after ``stem``;
    not torchvision ConvNeXt's ``features.2.0``, the norm before a downsampling conv)."""
    parent = name.rpartition(".")[0]
    if type(modules[parent]) not in (nn.Sequential, nn.ModuleList) or next(modules[name].children(), None) is None:
        return False
    return not trace.usable(parent) or trace.map_shape(parent)[2:] != trace.map_shape(name)[2:]


def _spaced_blocks(trace: LayerTrace, candidates: list[str], model: nn.Module) -> list[str]:
    """A plain transformer's evenly spaced blocks (see :func:`default_layers`), or [] if it has no
    repeated token blocks."""
    modules = dict(model.named_modules())
    runs: dict[tuple[str, type, tuple[int, ...]], list[str]] = {}
    for name in candidates:
        layout, module = trace.layouts[name], modules[name]
        if isinstance(layout, MapLayout) and layout.kind == TOKENS and next(module.parameters(), None) is not None:
            parent = name.rpartition(".")[0]
            runs.setdefault((parent, type(module), trace.map_shape(name)), []).append(name)
    repeated = [(key[0].count(".") if key[0] else -1, -len(run), run) for key, run in runs.items() if len(run) > 1]
    if not repeated:
        return []
    blocks = min(repeated)[2]
    first = trace.layouts[blocks[0]]
    assert isinstance(first, MapLayout)
    reaching = len(blocks) - 1 if first.prefix_tokens else len(blocks)
    count = min(BLOCKS_PER_PLAIN_MODEL, reaching)
    return [blocks[(i + 1) * reaching // count - 1] for i in range(count)]


NO_GRAD_HINT = (
    " No module's 4-D output depends differentiably on the images: does the forward run (part of) the model "
    "under torch.no_grad(), as in linear probing? Saliency needs the gradient through those layers: freeze "
    "them with `requires_grad_(False)` instead (the training is the same)."
)


def usable_layers(model: nn.Module, images: Tensor) -> list[str]:
    """The layers saliency can be computed at (see :meth:`LayerTrace.usable`), in forward order."""
    trace = trace_forward(model, images[:1])
    return [name for name in trace.order if trace.usable(name)]


def _is_spatial(size: tuple[int, ...], input_size: tuple[int, ...]) -> bool:
    """Whether ``size`` scales ``input_size`` by roughly one factor in both dimensions."""
    scale_h, scale_w = input_size[0] / size[0], input_size[1] / size[1]
    return abs(scale_h - scale_w) <= 0.25 * max(scale_h, scale_w)


def check_layer_names(layers: object) -> tuple[str, ...]:
    """A layer name or a non-empty sequence of distinct ones (model not needed) -> a tuple."""
    names = [layers] if isinstance(layers, str) else layers
    if isinstance(names, (bytes, Tensor)) or not isinstance(names, Sequence):
        raise TypeError(f"Expected `layers` to be a sequence of layer names (str), but got {layers!r}.")
    if not names:
        raise ValueError("Expected `layers` to name at least one layer, but got an empty list.")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"Expected `layers` to hold layer names (str), but got {name!r}.")
    check_distinct(names, "layers")
    return tuple(names)


def validate_layer_names(model: nn.Module, layers: object) -> list[str]:
    """Check that each name is ``"input"`` or a module of ``model``; return them as a list."""
    names = check_layer_names(layers)
    modules = dict(model.named_modules())
    for name in names:
        if name != INPUT and (name not in modules or name == ""):
            candidates = [n for n in modules if n] + [INPUT]
            close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(
                f"Expected `layers` to be names from model.named_modules() or {INPUT!r}, "
                f"but got {name!r}.{hint}"
            )
    return list(names)
