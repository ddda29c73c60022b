"""Capture, in one forward and one backward, each layer's activation x and the gradient
g = d score_c / d x of every target class c.

The backward is ``torch.autograd.grad`` with respect to the captured activations only: no
parameter gradient is computed, nothing is written to ``.grad``, and autograd stops at the
earliest requested layer. All T targets share the one forward (see
``_backward_per_target``). The model runs in eval mode and every hook is removed and
every ``training`` flag restored on exit, also when something raises. Reentrant activation
checkpoints run directly during the pass (:mod:`saliency_monitor.engine.checkpointing`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checkpointing import checkpoints_run_directly
from .layers import INPUT
from .layout_detection import LayoutTracker
from .layouts import MapLayout
from .model_io import OutputToLogits, check_logits, check_targets_range, eval_mode
from .smoothing import smoothing


@dataclass(frozen=True)
class Capture:
    """One layer's tensors, detached. T is the number of targets per image."""

    activation: Tensor
    """(B, K, H, W) the layer's map: its output read in its layout (:mod:`.layouts`: channels last
    permuted, tokens on their patch grid), the image for ``"input"``."""
    gradient: Tensor
    """(B, T, K, H, W) d logit[b, targets[b, t]] / d activation[b]."""
    module: nn.Module | None
    """The layer's module (None for ``"input"``)."""
    layer_input: Tensor | None = None
    """(B, K_in, H_in, W_in) the module's input, kept only when asked for (real-conv terms)."""


@dataclass(frozen=True)
class Captured:
    """One forward and backward: the logits and every requested layer's :class:`Capture`."""

    logits: Tensor
    """(B, C) the model's output, detached."""
    layers: dict[str, Capture]


class LayerRecorder:
    """Forward hooks that keep each layer's map (with its graph) and optionally its input.

    Each layer's output is read as a map (B, K, H, W) in its layout (:mod:`.layouts`, detected by
    a :class:`~saliency_monitor.engine.layout_detection.LayoutTracker`; an output that is not a map
    is refused). The map view is recorded, and the rest of the network gets the output rebuilt
    from a *clone* of it: the same values, so in-place ops downstream (``out += identity``,
    ``ReLU(inplace=True)``) cannot overwrite the captured tensor or re-point its ``grad_fn``, and
    the gradient w.r.t. the recorded map is the gradient at its positions; no module flag is
    toggled. With ``perturbations`` (the functional form, for ``torch.func`` transforms) the map
    handed on is ``map + δ`` instead, δ a zero tensor of the map's shape: d score / d δ is the
    gradient at the layer.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], keep_inputs: Collection[str],
                 differentiable_images: bool = True, perturbations: Mapping[str, Tensor] | None = None):
        # integer images cannot require grad: an output that does not is made a leaf that does
        self.differentiable_images = differentiable_images
        self.perturbations = perturbations
        self.modules = dict(model.named_modules())
        self.outputs: dict[str, Tensor] = {}
        """Each layer's map (B, K, H, W), a view of its output."""
        self.layouts: dict[str, MapLayout] = {}
        self.versions: dict[str, int] = {}
        self.inputs: dict[str, Tensor] = {}
        self.tracker = LayoutTracker(model)  # its hooks run before the recorder's
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for name in layers:
            if name != INPUT:
                hook = self._make_hook(name, keep_input=name in keep_inputs)
                self.handles.append(self.modules[name].register_forward_hook(hook))

    def _make_hook(self, name: str, keep_input: bool) -> Callable[[nn.Module, tuple[object, ...], object], Tensor]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> Tensor:
            if name in self.outputs:
                raise ValueError(
                    f"Expected layer {name!r} to run once per forward pass, but it ran again: "
                    "its activation is ambiguous (a module reused in forward, e.g. a shared "
                    "ReLU). Choose a module that runs once, such as its parent block."
                )
            layout = self.tracker.layout(name, module, args, output)
            assert isinstance(output, Tensor)
            self.layouts[name] = layout
            if self.perturbations is not None:
                return self._perturbed(name, args, output, layout, keep_input)
            if not output.requires_grad and not self.differentiable_images:
                output = output.detach().requires_grad_(True)
            if not output.requires_grad:
                raise ValueError(
                    f"Expected the output of layer {name!r} to depend differentiably on the "
                    "images, but it does not require grad (is it detached or constant?)."
                )
            values = layout.to_map(output)
            self._keep(name, args, values, keep_input)
            return layout.from_map(output, values.clone())

        return hook

    def _keep(self, name: str, args: tuple[object, ...], values: Tensor, keep_input: bool) -> None:
        if keep_input:
            if not args or not isinstance(args[0], Tensor):
                raise ValueError(f"Expected layer {name!r} to take a tensor as first input.")
            self.inputs[name] = args[0].detach().clone()
        self.outputs[name] = values
        self.versions[name] = values._version

    def _perturbed(
        self, name: str, args: tuple[object, ...], output: Tensor, layout: MapLayout, keep_input: bool
    ) -> Tensor:
        """``output`` with ``map + δ`` at its map positions: under ``torch.func.grad`` the gradient
        w.r.t. δ is the layer's gradient."""
        assert self.perturbations is not None
        if not torch.is_grad_enabled():
            raise ValueError(
                f"Expected the output of layer {name!r} to depend differentiably on the images, but the layer "
                "runs with gradients disabled (inside torch.no_grad())."
            )
        values = layout.to_map(output)
        self._keep(name, args, values, keep_input)
        return layout.from_map(output, values + self.perturbations[name])

    def check_complete(self, layers: Sequence[str]) -> None:
        """Errors unless every layer ran and no captured output was later modified in place."""
        missing = [n for n in layers if n != INPUT and n not in self.outputs]
        if missing:
            raise ValueError(
                f"Expected the forward pass to reach every requested layer, but it never ran {missing}."
            )
        modified = [n for n, v in self.versions.items() if self.outputs[n]._version != v]
        if modified:
            raise RuntimeError(
                f"The outputs of layers {modified} were modified in place after they ran "
                "(the module returns a tensor that something else writes to later), so "
                "their captured values are wrong. Choose a neighbouring layer."
            )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.tracker.remove()


def capture(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    *,
    keep_inputs: Collection[str] = (),
    forward: Callable[[Tensor], object] | None = None,
    output_to_logits: OutputToLogits | None = None,
    smooth: str | None = None,
) -> Captured:
    """Forward ``images`` once and backpropagate each target's logit to every layer.

    Args:
        model: maps (B, C_in, H, W) images to (B, C) logits.
        images: (B, C_in, H, W), left untouched (a detached copy is differentiated).
        targets: (B, T) int64 class indices on the images' device.
        layers: validated layer names (see :mod:`saliency_monitor.engine.layers`).
        keep_inputs: layers whose module input to keep as well.
        forward: calls the model (default ``model``). Hooks are on ``model``'s modules, so it
            must run them. For other parameters, call ``capture`` inside
            :func:`~saliency_monitor.engine.meta.at_parameters` instead: a ``functional_call``
            forward alone leaves the backward (checkpoint recomputation) at the old ones.
        output_to_logits: maps the model's output (e.g. a dict or tuple) to (B, C) logits.
        smooth: checkerboard smoothing at stride-2 convolutions during this forward and
            backward only (:mod:`saliency_monitor.engine.smoothing`): ``"backward"``, ``"forward"`` or None.
    """
    # smoothing hooks first: a recorded stride-2 convolution is captured after its own smoothing
    with smoothing(model, smooth), checkpoints_run_directly():
        recorder = LayerRecorder(model, layers, keep_inputs, differentiable_images=images.is_floating_point())
        try:
            with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
                # Clones are normal tensors even if the inputs were made under inference_mode.
                x = images.detach().clone().requires_grad_(images.is_floating_point())
                targets = targets.clone()
                output = (forward or model)(x)
                if output_to_logits is not None:
                    output = output_to_logits(output)
                recorder.remove()
                logits = check_logits(output, images.shape[0])
                check_targets_range(targets, logits.shape[1])
                recorder.check_complete(layers)
                activations = [x if n == INPUT else recorder.outputs[n] for n in layers]
                gradients = _backward_per_target(logits.gather(1, targets), activations, layers)
        finally:
            recorder.remove()
    captures = {
        name: Capture(
            activation=act.detach(),
            gradient=grad,
            module=None if name == INPUT else recorder.modules[name],
            layer_input=recorder.inputs.get(name),
        )
        for name, act, grad in zip(layers, activations, gradients)
    }
    return Captured(logits=logits.detach(), layers=captures)


def _backward_per_target(scores: Tensor, activations: list[Tensor], names: Sequence[str]) -> list[Tensor]:
    """d scores[:, t].sum() / d activation for every t. Returns (B, T, K, H, W) each.

    Images are independent in eval mode, so the gradient of the summed score w.r.t. image
    b's activation is the gradient of image b's own score. The T targets share the one
    forward graph; each takes the input-gradient path of the graph above the earliest layer
    (``retain_graph``), the minimum work for T distinct gradients. A single vmapped
    backward (``is_grads_batched=True``) does the same FLOPs but was measured slower on CPU
    (resnet50, B=16, T=2: 0.99 vs 0.91 of a training step): torch's batching rule for
    ``convolution_backward`` splits the call and concatenates.
    """
    num_targets = scores.shape[1]
    per_target: list[tuple[Tensor | None, ...]] = []
    for t in range(num_targets):
        per_target.append(
            torch.autograd.grad(
                scores[:, t].sum(), activations, retain_graph=t < num_targets - 1, allow_unused=True
            )
        )
    unused = [n for n, g in zip(names, per_target[0]) if g is None]
    if unused:
        raise ValueError(f"Expected every layer to influence the logits, but {unused} do not.")
    return [torch.stack([_used(grads[i]) for grads in per_target], dim=1) for i in range(len(activations))]


def _used(gradient: Tensor | None) -> Tensor:
    """A gradient ``autograd.grad(..., allow_unused=True)`` returned (None only for unused inputs)."""
    if gradient is None:
        raise RuntimeError("a layer influenced one target's logit but not another's")
    return gradient
