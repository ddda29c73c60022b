"""Layer names: which modules saliency can be computed at, and a sensible default set.

A *layer* is a name from ``model.named_modules()`` whose module returns one 4-D tensor
(B, K, H, W) and runs exactly once per forward pass, or the pseudo-layer ``"input"``
(the image itself).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._checks import check_distinct
from .model_io import check_images, eval_mode

INPUT = "input"
"""Pseudo-layer name for the image itself (it takes precedence over a module of that name)."""


@dataclass
class LayerTrace:
    """What one forward pass did, per named module (root excluded), in completion order."""

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    """Output shape of the first call if it was a tensor, else None."""
    differentiable: dict[str, bool] = field(default_factory=dict)
    """Whether the first call's output depends differentiably on the images (False for a module
    run under ``torch.no_grad()``, e.g. a frozen backbone in linear probing)."""

    def usable(self, name: str) -> bool:
        """Saliency can be computed at ``name``: one call, a 4-D output that depends on the images."""
        shape = self.shapes.get(name)
        return self.calls.get(name) == 1 and shape is not None and len(shape) == 4 and self.differentiable[name]


def trace_forward(model: nn.Module, images: Tensor) -> LayerTrace:
    """Run one eval-mode forward of a differentiable copy of ``images`` and record every
    module's calls, output shape and whether that output depends differentiably on the images."""
    trace = LayerTrace()
    handles = []
    floating = images.is_floating_point()

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            count = trace.calls.get(name, 0)
            trace.calls[name] = count + 1
            if count == 0:
                trace.order.append(name)
                trace.shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
                # integer images cannot require grad: a layer run with autograd on can still be differentiated
                trace.differentiable[name] = isinstance(output, Tensor) and (
                    output.requires_grad or (not floating and torch.is_grad_enabled())
                )

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
            differentiable = images.detach().clone()
            model(differentiable.requires_grad_(differentiable.is_floating_point()))
    finally:
        for handle in handles:
            handle.remove()
    return trace


def default_layers(model: nn.Module, images: Tensor) -> list[str]:
    """Pick one layer per spatial resolution, in forward order.

    Rule: run one eval-mode forward pass on ``images[:1]`` and keep the modules that run
    exactly once and return a 4-D tensor larger than 1x1 that depends differentiably on the
    images (not computed under ``torch.no_grad()``) and whose (H, W) scales the input's
    by about the same factor in both dimensions (within 25%: this drops channels-last
    permutes such as ConvNeXt's (B, H, W, C)), the root module excluded. Group
    them by spatial size (H, W). For each size take the *shallowest* modules producing it
    (fewest dots in the name), and of those the one that finishes last. A stage container
    therefore wins over the blocks inside it (a container finishes after its children), and
    a block's inner modules never stand for a resolution their parent already covers.
    The result is ordered by when each module finishes.

    torchvision resnet50 at 224 gives ``relu, layer1, layer2, layer3, layer4``; vgg16 gives
    ``features.3/8/15/22/29`` and ``avgpool`` (its 7x7 output).
    """
    check_images(images)
    trace = trace_forward(model, images[:1])
    chosen: dict[tuple[int, int], tuple[int, int, str]] = {}  # size -> (depth, -finish, name)
    for finish, name in enumerate(trace.order):
        shape = trace.shapes[name]
        if shape is None or not trace.usable(name) or shape[2:] == (1, 1):
            continue
        if not _is_spatial(shape[2:], tuple(images.shape[2:])):
            continue
        candidate = (name.count("."), -finish, name)
        size = (shape[2], shape[3])
        chosen[size] = min(chosen.get(size, candidate), candidate)
    if not chosen:
        raise ValueError(
            "Expected `model` to have at least one module returning a 4-D (B, K, H, W) tensor larger than 1x1, "
            "running once per forward and depending differentiably on the images, but it has none; pass `layers`."
            + ("" if any(trace.usable(name) for name in trace.order) else NO_GRAD_HINT)
        )
    return [name for _, _, name in sorted(chosen.values(), key=lambda c: -c[1])]


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
