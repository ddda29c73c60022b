"""``compute_saliency``: validate, extract once, aggregate every method at every layer, resize."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aggregate import AGGREGATIONS, EXTRACTS, NAMED_METHODS, Method, parse_method
from .context_saliency import context_aware_saliency
from .extract import Extraction, extract
from .meta import meta_extract, meta_per_target, validate_meta
from .metrics import _normalize_size
from .relevance import RelevanceModel, check_composite
from .smooth import check_smooth
from .layers import _check_images, default_layers, validate_layer_names

RELEVANCE_METHODS = ("lrp", "salient_relevance")
"""Methods from relevance propagation rather than gradients (:mod:`saliency_monitor.relevance`)."""
DEFAULT_CONTEXT_SIZE = 64
"""Long edge (px) at which ``salient_relevance`` runs context-aware saliency detection."""

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
    lrp_composite: object = "epsilon_plus_flat",
    context_size: int = DEFAULT_CONTEXT_SIZE,
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
            ``"extract:aggregation"`` pair (see :mod:`saliency_monitor.aggregate`); or
            ``"lrp"`` (layer-wise relevance propagation, summed over channels; see
            :mod:`saliency_monitor.relevance`) and ``"salient_relevance"`` (Beyond Saliency's
            SR map: context-aware saliency detection of the LRP map, see
            :mod:`saliency_monitor.context_saliency`).
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
            The meta step itself is never smoothed. Not defined for the relevance methods.
        lrp_composite: the LRP rules: ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"`` or a
            ``zennit.core.Composite`` (see :mod:`saliency_monitor.relevance`).
        context_size: ``salient_relevance`` resizes each LRP map so its long edge has this
            many pixels before the detection (Goferman et al. use 250; cost grows with its
            4th power) and returns maps of that size (before ``output_size``).

    Returns:
        ``maps[method][layer]``: float32 (B, T, h, w), detached, on the images' device.
    """
    _check_images(images)
    targets = _normalize_targets(targets, images)
    layers = default_layers(model, images) if layers is None else validate_layer_names(model, layers)
    parsed, relevance = _parse_methods(methods)
    size = _normalize_size(output_size, "output_size")
    check_smooth(smooth)
    if relevance:
        check_relevance_options(relevance, smooth, lrp_composite, context_size)
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

    names = validate_meta(model, meta_lr, task, meta_params) if meta_lr is not None else []
    maps: SaliencyMaps = {}
    if parsed:
        maps.update(_gradient_maps(model, images, targets, layers, parsed, size, keep_inputs, names,
                                   meta_lr=meta_lr, task=task, output_to_logits=output_to_logits, smooth=smooth))
    if relevance:
        relevance_model = RelevanceModel(model, lrp_composite, output_to_logits)
        if meta_lr is None:
            lrp = relevance_model.maps(images, targets, layers)
        else:
            lrp = _meta_relevance(model, relevance_model, images, targets, layers, names,
                                  lr=float(meta_lr), task=task, output_to_logits=output_to_logits)
        maps.update(_relevance_methods(lrp, relevance, size, context_size))
    return {name: maps[name] for name in _method_names(methods)}


def _gradient_maps(
    model: nn.Module, images: Tensor, targets: Tensor, layers: list[str], parsed: list[Method],
    size: tuple[int, int] | None, keep_inputs: set[str], names: list[str], *, meta_lr: float | None,
    task: str, output_to_logits: Callable[[object], Tensor] | None, smooth: str | None,
) -> SaliencyMaps:
    if meta_lr is None:
        extraction = extract(model, images, targets, layers, keep_inputs=keep_inputs,
                             output_to_logits=output_to_logits, smooth=smooth)
        return _aggregate(extraction, parsed, layers, size, images.device.type)
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


def _meta_relevance(
    model: nn.Module, relevance_model: RelevanceModel, images: Tensor, targets: Tensor, layers: list[str],
    names: list[str], *, lr: float, task: str, output_to_logits: Callable[[object], Tensor] | None,
) -> dict[str, Tensor]:
    """LRP maps of every (image, target) at its own θ' (§4.4), as :func:`meta_extract` does for gradients."""

    def at_theta(image: Tensor, target: Tensor, theta: dict[str, Tensor]) -> dict[str, Tensor]:
        with relevance_model.at(theta):
            return relevance_model.maps(image, target, layers)

    rows: list[list[dict[str, Tensor]]] = [[] for _ in range(images.shape[0])]
    for b, maps in meta_per_target(model, images, targets, at_theta, lr=lr, task=task, names=names,
                                   output_to_logits=output_to_logits):
        rows[b].append(maps)
    return {name: torch.cat([torch.cat([m[name] for m in row], 1) for row in rows]) for name in layers}


def _relevance_methods(
    lrp: dict[str, Tensor], methods: list[str], size: tuple[int, int] | None, context_size: int
) -> SaliencyMaps:
    maps: SaliencyMaps = {}
    for method in methods:
        maps[method] = {}
        for name, relevance in lrp.items():
            if method == "salient_relevance":
                relevance = _salient_relevance(relevance, context_size)
            if size is not None:
                relevance = F.interpolate(relevance, size=size, mode="bilinear", align_corners=False)
            maps[method][name] = relevance
    return maps


def _salient_relevance(relevance: Tensor, context_size: int) -> Tensor:
    """Context-aware saliency of each (B, T, h, w) signed LRP map: strong evidence for and against
    the class both stand out from the near-zero background, as in the heatmap picture "Beyond
    Saliency" processes. A map with inf/NaN (an overflowing meta step) gives a NaN map."""
    batch, num_targets = relevance.shape[:2]
    flat = relevance.flatten(0, 1)
    finite = flat.flatten(1).isfinite().all(dim=1)
    detected = context_aware_saliency(torch.where(finite[:, None, None], flat, 0.0)[:, None], size=context_size)
    detected = torch.where(finite[:, None, None], detected, torch.nan)
    return detected.reshape(batch, num_targets, *detected.shape[-2:])


def check_relevance_options(relevance: Sequence[str], smooth: object, lrp_composite: object, context_size: object) -> None:
    """Errors for the options of the relevance methods ``relevance`` (smoothing is gradient-only)."""
    if relevance and smooth is not None:
        raise ValueError(
            f"Expected `smooth=None` with the relevance methods {list(relevance)} (smoothing changes gradients, "
            f"not relevance rules), but got smooth={smooth!r}."
        )
    check_composite(lrp_composite)
    check_context_size(context_size)


def check_context_size(context_size: object) -> None:
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 32:
        raise ValueError(
            f"Expected `context_size` to be an int >= 32 (pixels: the smallest of the 4 scales must hold several "
            f"7x7 patches), but got {context_size!r}."
        )


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


def _method_names(methods: Sequence[str] | str) -> list[str]:
    return [methods] if isinstance(methods, str) else list(methods)


def check_method(spec: object) -> Method | str:
    """A gradient method (:func:`~saliency_monitor.aggregate.parse_method`) or a relevance method's name."""
    if spec in RELEVANCE_METHODS:
        return str(spec)
    try:
        return parse_method(spec)
    except ValueError:
        raise ValueError(
            f"Expected a method in {sorted([*NAMED_METHODS, *RELEVANCE_METHODS])} or 'extract:aggregation' with "
            f"extract in {list(EXTRACTS)} and aggregation in {list(AGGREGATIONS)}, but got {spec!r}."
        ) from None


def _parse_methods(methods: Sequence[str] | str) -> tuple[list[Method], list[str]]:
    """(gradient methods, relevance method names), checked, in the given order."""
    names = _method_names(methods)
    if not names:
        raise ValueError("Expected `methods` to name at least one method, but got an empty list.")
    checked = [check_method(m) for m in names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Expected distinct methods, but got duplicates: {duplicates}.")
    return [m for m in checked if isinstance(m, Method)], [m for m in checked if isinstance(m, str)]
