"""``compute_saliency``: validate, extract once, aggregate every method at every layer, resize."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aggregate import Method, parse_method
from .extract import Extraction, extract
from .meta import meta_extract, validate_meta
from .metrics import _normalize_size
from .smooth import check_smooth
from .layers import _check_images, default_layers, validate_layer_names

SaliencyMaps = dict[str, dict[str, Tensor]]
"""``maps[method][layer]`` -> float32 (B, T, h, w)."""


def compute_saliency(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]],
    layers: Sequence[str] | str | None = None,
    methods: Sequence[str] | str = ("norm_grad_selective",),
    *,
    meta_lr: float | None = None,
    task: str = "multiclass",
    meta_params: str = "all",
    output_size: int | tuple[int, int] | None = None,
    output_to_logits: Callable[[object], Tensor] | None = None,
    smooth: str | None = None,
) -> SaliencyMaps:
    """Backpropagation saliency maps of ``targets`` at ``layers`` for every method.

    One forward and one (batched) backward serve all layers, methods and targets; the
    backward takes gradients w.r.t. the layer activations only (no parameter gradient).

    Args:
        model: maps (B, C_in, H, W) images to (B, C) logits. Run in eval mode; returned with
            every flag, parameter, buffer and ``.grad`` exactly as it was, hooks removed.
        images: (B, C_in, H, W) floating point, on the model's device.
        targets: (B,) or (B, T) class indices; the map explains logit ``targets[b, t]``.
        layers: names from ``model.named_modules()`` (each running once per forward and
            returning a 4-D tensor) or ``"input"``; None means :func:`default_layers`.
        methods: named methods (``gradient``, ``linear_approx``, ``grad_cam``,
            ``norm_grad``, ``norm_grad_selective``, ``norm_grad_conv``) or any
            ``"extract:aggregation"`` pair (see :mod:`saliency_monitor.aggregate`).
        meta_lr: if given, meta-saliency (§4.4): each map of image b and target c is computed
            at θ' = θ − meta_lr·∇_θ ℓ(θ; x_b, c), one SGD step on that single loss (the
            paper: ``DEFAULT_META_LR`` = 0.002; negative = gradient ascent). The model is not
            mutated. Cost per (image, target): about one training step of one image plus
            one plain saliency pass; memory: about two extra copies of the parameters.
        task: the meta loss: ``"multiclass"`` (softmax cross-entropy of class c) or
            ``"multilabel"`` (binary cross-entropy of logit c toward 1). The map itself
            always backpropagates the class logit.
        meta_params: ``"all"`` parameters step (as in the paper) or only ``"trainable"``
            ones (``requires_grad=True``).
        output_size: if given, maps are upsampled bilinearly to it (int or (h, w));
            otherwise they keep the layer's resolution.
        output_to_logits: for models whose output is not the logits tensor (a dict, a
            tuple, ...): maps the output to (B, C) logits, e.g. ``lambda out: out["logits"]``.
        smooth: checkerboard-noise removal at stride-2 convolutions, during the saliency
            pass only (:mod:`saliency_monitor.smooth`): ``"backward"`` (the gradient into each
            such convolution averaged over 2×2 shifts; forward and logits unchanged) or
            ``"forward"`` (outputs averaged over the 4 sampling phases; changes predictions).
            The meta step itself is never smoothed.

    Returns:
        ``maps[method][layer]``: float32 (B, T, h, w), detached, on the images' device.
    """
    _check_images(images)
    targets = _normalize_targets(targets, images)
    layers = default_layers(model, images) if layers is None else validate_layer_names(model, layers)
    parsed = _parse_methods(methods)
    size = _normalize_size(output_size, "output_size")
    check_smooth(smooth)
    if output_to_logits is not None and not callable(output_to_logits):
        raise TypeError(f"Expected `output_to_logits` to be callable, but got {type(output_to_logits).__name__}.")
    modules = dict(model.named_modules())
    keep_inputs = {name for name in layers if any(m.needs_layer_input for m in parsed)}
    for name in keep_inputs:
        if not isinstance(modules.get(name), nn.Conv2d):
            users = [m.name for m in parsed if m.needs_layer_input]
            raise ValueError(
                f"Expected a torch.nn.Conv2d layer for {users}, but layer {name!r} is "
                f"{type(modules.get(name)).__name__ if name in modules else 'the input image'}."
            )

    if meta_lr is None:
        extraction = extract(model, images, targets, layers, keep_inputs=keep_inputs,
                             output_to_logits=output_to_logits, smooth=smooth)
        return _aggregate(extraction, parsed, layers, size, images.device.type)
    names = validate_meta(model, meta_lr, task, meta_params)
    rows: list[list[SaliencyMaps]] = [[] for _ in range(images.shape[0])]
    for b, extraction in meta_extract(
        model, images, targets, layers, lr=float(meta_lr), task=task, names=names,
        keep_inputs=keep_inputs, output_to_logits=output_to_logits, smooth=smooth,
    ):
        rows[b].append(_aggregate(extraction, parsed, layers, size, images.device.type))
    return {
        m.name: {
            name: torch.cat([torch.cat([pair[m.name][name] for pair in row], 1) for row in rows])
            for name in layers
        }
        for m in parsed
    }


def _aggregate(
    extraction: Extraction, methods: list[Method], layers: list[str], size: tuple[int, int] | None,
    device_type: str,
) -> SaliencyMaps:
    maps: SaliencyMaps = {}
    with torch.autocast(device_type, enabled=False):  # float32 maps under autocast too
        for method in methods:
            maps[method.name] = {}
            for name in layers:
                saliency = method(extraction.captures[name])
                if size is not None:
                    saliency = F.interpolate(saliency, size=size, mode="bilinear", align_corners=False)
                maps[method.name][name] = saliency
    return maps


def _normalize_targets(targets: object, images: Tensor) -> Tensor:
    if not isinstance(targets, Tensor):
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Expected `targets` to be a tensor or nested sequence of class indices, but got {targets!r}."
            ) from error
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"Expected `targets` to hold integer class indices, but got dtype {targets.dtype}.")
    batch = images.shape[0]
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.ndim != 2 or targets.shape[0] != batch or targets.shape[1] < 1:
        raise ValueError(
            f"Expected `targets` of shape (B,) or (B, T) with B={batch} and T>=1, but got "
            f"shape {tuple(targets.shape)}."
        )
    return targets.to(device=images.device, dtype=torch.long)


def _parse_methods(methods: Sequence[str] | str) -> list[Method]:
    if isinstance(methods, str):
        methods = [methods]
    parsed = [parse_method(m) for m in methods]
    if not parsed:
        raise ValueError("Expected `methods` to name at least one method, but got an empty list.")
    names = [m.name for m in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Expected distinct methods, but got duplicates: {duplicates}.")
    return parsed
