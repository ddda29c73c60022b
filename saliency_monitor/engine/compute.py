"""``compute_saliency``: check the options once, capture once, make every method's maps, resize.

:class:`SaliencyOptions` holds everything besides the model, the images and the targets,
checked by :func:`saliency_options` where it enters (``compute_saliency``, the monitor's
config); :func:`saliency_maps` computes maps for checked options, so a caller that holds
them (the monitor, at every evaluation) never checks them again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_callable, normalize_size
from ..metrics.maps import resize_maps
from .capture import Captured, capture
from .layers import INPUT, check_layer_names, default_layers, validate_layer_names
from .meta import (
    Parameters,
    TargetPairs,
    check_meta_lr,
    check_meta_params,
    meta_capture,
    meta_per_pair,
    stepped_parameter_names,
)
from .meta_vectorised import (
    check_meta_batching,
    check_meta_memory,
    resolve_meta_batching,
    vectorised_captures,
)
from .methods import DEFAULT_METHOD, GRADIENT, RELEVANCE, Method, parse_methods, with_sources
from .model_io import OutputToLogits, check_images, normalize_targets
from .relevance import DEFAULT_CONTEXT_SIZE, RelevanceModel, check_composite, check_context_size
from .smoothing import check_smooth
from .task import check_task

SaliencyMaps = dict[str, dict[str, Tensor]]
"""``maps[method][layer]`` -> float32 (B, T, h, w)."""


def map_each(maps: Mapping[str, Mapping[str, Tensor]], fn: Callable[[Tensor], Tensor]) -> dict[str, dict[str, Tensor]]:
    """``fn`` applied to every method's map at every layer (the nesting kept)."""
    return {method: {layer: fn(value) for layer, value in per_layer.items()} for method, per_layer in maps.items()}


@dataclass(frozen=True)
class SaliencyOptions:
    """What to compute, besides the model, images and targets (see :func:`compute_saliency`).

    Build it with :func:`saliency_options`, which checks every field; derive variants with
    ``dataclasses.replace`` from checked values.
    """

    layers: tuple[str, ...] | None
    """Layer names, or None for :func:`~saliency_monitor.engine.layers.default_layers`."""
    methods: tuple[Method, ...]
    meta_lr: float | None = None
    task: str = "multiclass"
    meta_params: str = "all"
    meta_batching: str = "auto"
    meta_memory: int | None = None
    output_size: tuple[int, int] | None = None
    output_to_logits: OutputToLogits | None = None
    smooth: str | None = None
    lrp_composite: object = "epsilon_plus_flat"
    context_size: int = DEFAULT_CONTEXT_SIZE


def saliency_options(
    layers: object = None,
    methods: object = (DEFAULT_METHOD,),
    *,
    meta_lr: object = None,
    task: object = "multiclass",
    meta_params: object = "all",
    meta_batching: object = "auto",
    meta_memory: object = None,
    output_size: object = None,
    output_to_logits: object = None,
    smooth: object = None,
    lrp_composite: object = "epsilon_plus_flat",
    context_size: object = DEFAULT_CONTEXT_SIZE,
) -> SaliencyOptions:
    """Check every option (the model-independent part) and return them as :class:`SaliencyOptions`."""
    parsed = parse_methods(methods)
    relevance = [m.name for m in parsed if m.computed_by == RELEVANCE]
    if relevance and smooth is not None:
        raise ValueError(
            f"Expected `smooth=None` with the relevance methods {relevance} (smoothing changes gradients, "
            f"not relevance rules), but got smooth={smooth!r}."
        )
    check_composite(lrp_composite)
    return SaliencyOptions(
        layers=None if layers is None else check_layer_names(layers),
        methods=parsed,
        meta_lr=None if meta_lr is None else check_meta_lr(meta_lr),
        task=check_task(task),
        meta_params=check_meta_params(meta_params),
        meta_batching=check_meta_batching(meta_batching),
        meta_memory=check_meta_memory(meta_memory),
        output_size=normalize_size(output_size, "output_size"),
        output_to_logits=check_callable(output_to_logits, "output_to_logits"),
        smooth=check_smooth(smooth),
        lrp_composite=lrp_composite,
        context_size=check_context_size(context_size),
    )


def compute_saliency(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]],
    layers: Sequence[str] | str | None = None,
    methods: Sequence[str] | str = (DEFAULT_METHOD,),
    *,
    meta_lr: float | None = None,
    task: str = "multiclass",
    meta_params: str = "all",
    meta_batching: str = "auto",
    meta_memory: int | None = None,
    output_size: int | tuple[int, int] | None = None,
    output_to_logits: OutputToLogits | None = None,
    smooth: str | None = None,
    lrp_composite: object = "epsilon_plus_flat",
    context_size: int = DEFAULT_CONTEXT_SIZE,
) -> SaliencyMaps:
    """Backpropagation saliency maps of ``targets`` at ``layers`` for every method: one forward and
    one backward to the layer activations (no parameter gradient) serve them all.

    Args:
        model: (B, C_in, H, W) images -> (B, C) logits; run in eval mode and returned exactly as it was.
        images: (B, C_in, H, W) on the model's device, floating point or integer (e.g. uint8
            converted inside ``forward``: then ``"input"`` is refused, hidden layers only).
        targets: (B,) or (B, T) class indices; the map explains logit ``targets[b, t]``.
        layers: names from ``model.named_modules()`` (run once per forward, output on the image
            grid in any layout: :mod:`~saliency_monitor.engine.layouts`) or ``"input"``; None:
            :func:`default_layers`.
        methods: registry names (:mod:`saliency_monitor.engine.methods`): the named gradient
            methods, any ``"extract:aggregation"`` cell, ``"lrp"`` and ``"salient_relevance"``.
        meta_lr: meta-saliency (§4.4): the map of image b and target c at θ' = θ − meta_lr·∇_θ
            ℓ(θ; x_b, c) (the paper: ``DEFAULT_META_LR`` = 0.002; < 0: ascent); the model is not written.
        task: the meta loss, ``"multiclass"`` (softmax CE of c) or ``"multilabel"`` (BCE of logit c toward 1).
        meta_params: ``"all"`` parameters step (the paper) or only ``"trainable"`` ones.
        meta_batching: ``"loop"`` (a pair at a time), ``"vmap"`` (chunks of pairs,
            :mod:`~saliency_monitor.engine.meta_vectorised`; relevance keeps the loop) or ``"auto"``
            (vmap on CUDA, the loop elsewhere). Same maps.
        meta_memory: bytes of θ' a vmap chunk holds; None: a quarter of a CUDA device's free memory, else 2 GiB.
        output_size: maps upsampled bilinearly to it (int or (h, w)); None: the layer's resolution.
        output_to_logits: maps a non-tensor output to (B, C) logits, e.g. ``lambda out: out["logits"]``;
            ``model_io.two_class_logits()`` for a single-logit binary classifier.
        smooth: checkerboard removal at stride-2 convolutions during the pass
            (:mod:`~saliency_monitor.engine.smoothing`): ``"backward"`` or ``"forward"`` (changes
            predictions); never the meta step, not for relevance methods.
        lrp_composite: ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"`` or a ``zennit.core.Composite``.
        context_size: long edge (px) of the LRP map Salient Relevance's detection runs on (cost ∝ its 4th power).

    Returns:
        ``maps[method][layer]``: float32 (B, T, h, w), detached, on the images' device.
    """
    options = saliency_options(
        layers, methods, meta_lr=meta_lr, task=task, meta_params=meta_params, meta_batching=meta_batching,
        meta_memory=meta_memory, output_size=output_size,
        output_to_logits=output_to_logits, smooth=smooth, lrp_composite=lrp_composite, context_size=context_size,
    )
    return saliency_maps(model, images, targets, options)


def saliency_maps(model: nn.Module, images: Tensor, targets: object, options: SaliencyOptions) -> SaliencyMaps:
    """:func:`compute_saliency` for checked options: ``maps[method][layer]`` for every method."""
    check_images(images)
    targets = normalize_targets(targets, images)
    layers = default_layers(model, images) if options.layers is None else validate_layer_names(model, options.layers)
    check_layers_for_images(images, layers)
    methods = with_sources(options.methods)
    keep_inputs = _conv_layers(model, layers, methods)
    names = None if options.meta_lr is None else stepped_parameter_names(model, options.meta_params)
    maps: SaliencyMaps = {}
    gradient = [m for m in methods if m.computed_by == GRADIENT]
    if gradient:
        maps.update(_gradient_maps(model, images, targets, layers, gradient, keep_inputs, names, options))
    relevance = [m for m in methods if m.computed_by == RELEVANCE]
    if relevance:
        maps.update(_relevance_maps(model, images, targets, layers, relevance, names, options))
    if options.output_size is not None:
        size = options.output_size
        maps = map_each(maps, lambda value: resize_maps(value, size))
    return {method.name: maps[method.name] for method in options.methods}


def check_layers_for_images(images: Tensor, layers: Sequence[str]) -> None:
    """Integer images (converted inside the model's ``forward``) have no gradient: no ``"input"`` maps."""
    if INPUT in layers and not images.is_floating_point():
        raise TypeError(
            f"Expected floating-point images for layer {INPUT!r} (its maps differentiate the images), but got "
            f"{images.dtype} images. Choose hidden layers only, or convert the images to float before the model."
        )


def _conv_layers(model: nn.Module, layers: list[str], methods: Sequence[Method]) -> set[str]:
    """The layers whose module input must be kept (the real-conv extract); each must be a Conv2d."""
    users = [m.name for m in methods if m.needs_conv_layer]
    if not users:
        return set()
    modules = dict(model.named_modules())
    for name in layers:
        if not isinstance(modules.get(name), nn.Conv2d):
            what = "the input image" if name == INPUT else type(modules[name]).__name__
            raise ValueError(f"Expected a torch.nn.Conv2d layer for {users}, but layer {name!r} is {what}.")
    return set(layers)


def _gradient_maps(
    model: nn.Module, images: Tensor, targets: Tensor, layers: list[str], methods: list[Method],
    keep_inputs: set[str], names: list[str] | None, options: SaliencyOptions,
) -> SaliencyMaps:
    to_logits, smooth = options.output_to_logits, options.smooth
    if names is None or options.meta_lr is None:
        captured = capture(model, images, targets, layers, keep_inputs=keep_inputs, output_to_logits=to_logits,
                           smooth=smooth)
        return _aggregate(captured, methods, layers)
    pairs, lr, task = TargetPairs.of(targets), options.meta_lr, options.task

    def by_target(captures: Iterable[Captured]) -> SaliencyMaps:
        per_pair = [_aggregate(captured, methods, layers) for captured in captures]  # (P_chunk, 1, h, w) maps
        return {m.name: {layer: _by_target(pairs, [part[m.name][layer] for part in per_pair]) for layer in layers}
                for m in methods}

    if resolve_meta_batching(options.meta_batching, images.device) == "vmap":
        try:
            return by_target(vectorised_captures(
                model, images, pairs, layers, lr=lr, task=task, names=names, keep_inputs=keep_inputs,
                output_to_logits=to_logits, smooth=smooth, memory=options.meta_memory))
        except Exception as error:
            if options.meta_batching != "auto":
                raise
            warnings.warn(f"meta_batching='auto': the vectorised meta path cannot run this model "
                          f"({type(error).__name__}: {error}); running the loop.", stacklevel=4)
    return by_target(meta_capture(model, images, pairs, layers, lr=lr, task=task, names=names,
                                  keep_inputs=keep_inputs, output_to_logits=to_logits, smooth=smooth))


def _relevance_maps(
    model: nn.Module, images: Tensor, targets: Tensor, layers: list[str], methods: list[Method],
    names: list[str] | None, options: SaliencyOptions,
) -> SaliencyMaps:
    """LRP maps (at θ, or at every (image, target)'s θ' for meta, a pair at a time), then each
    method's refinement."""
    relevance_model = RelevanceModel(model, options.lrp_composite, options.output_to_logits)
    if names is None or options.meta_lr is None:
        lrp = relevance_model.maps(images, targets, layers)
    else:
        def at_theta(image: Tensor, target: Tensor, theta: Parameters) -> dict[str, Tensor]:
            with relevance_model.at(theta):
                return relevance_model.maps(image, target, layers)

        pairs = TargetPairs.of(targets)
        per_pair = list(meta_per_pair(model, images, pairs, at_theta, lr=options.meta_lr, task=options.task,
                                      names=names, output_to_logits=options.output_to_logits))
        lrp = {layer: _by_target(pairs, [part[layer] for part in per_pair]) for layer in layers}
    return {method.name: {layer: method.refined(value, options.context_size) for layer, value in lrp.items()}
            for method in methods}


def _aggregate(captured: Captured, methods: list[Method], layers: list[str]) -> SaliencyMaps:
    device_type = captured.logits.device.type
    with torch.autocast(device_type, enabled=False):  # float32 maps under autocast too
        return {
            method.name: {name: method.gradient_map(captured.layers[name]) for name in layers}
            for method in methods
        }


def _by_target(pairs: TargetPairs, chunks: list[Tensor]) -> Tensor:
    """Per-pair maps, (P_i, 1, h, w) chunks in pair order -> (B, T, h, w) by ``pairs.index``."""
    return torch.cat(chunks)[:, 0][pairs.index]
