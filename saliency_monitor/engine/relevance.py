"""Layer-wise relevance propagation (LRP) maps, computed with zennit.

LRP (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an
overview") redistributes the explained logit f_c(x) backwards, layer by layer, so that at
every layer the relevances R sum (approximately) to f_c(x). With z_j = Σ_i x_i w_ij + b_j:

- ε rule (dense layers):  R_i = Σ_j x_i w_ij / (z_j + ε·sign z_j) · R_j
- z⁺ rule (convolutions): R_i = Σ_j x_i w⁺_ij / Σ_i' x_i' w⁺_i'j · R_j
- γ rule (convolutions):  w → w + γ·w⁺ in the ε rule's numerator and denominator
- flat (first layer):     R_i = Σ_j 1 / (number of inputs of j) · R_j
- z^B, "box" (first layer): bounds l ≤ x ≤ h of the input domain.

Composites (zennit's names): ``"epsilon_plus_flat"`` = ε for linear layers, z⁺ for
convolutions, flat for the first layer; ``"epsilon_gamma_box"`` = ε, γ = 0.25, and z^B at the
first layer with l, h the per-channel minimum and maximum of each image. Both start from the
explained logit (the relevance at the output is f_c(x) for class c, 0 elsewhere), pass
relevance unchanged through activations and batch norms, and split it proportionally at
average pools and at residual sums. Canonizers put the model into LRP's canonical form first:
batch norms following a convolution are merged into it, and torchvision ResNet blocks compute
their residual sum in a module the rules can see (zennit's ResNetCanonizer); other models
get zennit's SequentialMergeBatchNorm. A residual ``+`` written inline in a custom model is
invisible to the rules (its relevance is counted twice): pass a zennit ``Composite`` with a
canonizer for it.

The relevance map of a layer is its relevance summed over channels (signed; red = evidence
for the class): at ``"input"`` over the colour channels, at a hidden layer over its output
channels. Batched: one forward of the B images, then one relevance backward per target.

Nothing here touches the caller's model: the rules and canonizers (which rewrite weights and
forward methods) run on a private deep copy, so no parameter, buffer, hook, flag or ``.grad``
of the original can change, even when a call raises.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .._checks import check_int
from .capture import LayerRecorder
from .checkpointing import checkpoints_run_directly
from .context_saliency import context_aware_saliency
from .layers import INPUT
from .model_io import OutputToLogits, check_logits, check_targets_range

LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box")
"""Composite names accepted by ``composite=`` (or pass a ``zennit.core.Composite``)."""
DEFAULT_CONTEXT_SIZE = 64
"""Long edge (px) at which Salient Relevance runs context-aware saliency detection."""


def check_composite(composite: object) -> None:
    """A clear error unless ``composite`` is a known name or a zennit Composite (zennit is only
    imported for a value that is not a known name)."""
    if isinstance(composite, str) and composite in LRP_COMPOSITES:
        return
    from zennit.core import Composite

    if not isinstance(composite, Composite):
        raise ValueError(
            f"Expected `lrp_composite` to be one of {list(LRP_COMPOSITES)} or a zennit.core.Composite, "
            f"but got {composite!r}."
        )


class RelevanceModel:
    """A private, frozen copy of ``model`` on which LRP runs; optionally at other parameters.

    The copy is made once; :meth:`maps` can then be called for the original parameters or,
    for meta-saliency, for θ' given as a name -> tensor mapping (copied into the copy's own
    parameters before the canonizers merge batch norms into them).
    """

    def __init__(self, model: nn.Module, composite: object = "epsilon_plus_flat",
                 output_to_logits: OutputToLogits | None = None) -> None:
        check_composite(composite)
        self.composite = composite
        self.output_to_logits = output_to_logits
        self.copy = _frozen_copy(model)
        self.parameters = dict(self.copy.named_parameters())
        self.resnet = any(isinstance(m, (BasicBlock, Bottleneck)) for m in self.copy.modules())
        """torchvision ResNet blocks inside: zennit's ResNetCanonizer, else SequentialMergeBatchNorm."""
        self._original: list[Tensor] | None = None  # saved on the first :meth:`at`

    @contextmanager
    def at(self, theta: Mapping[str, Tensor]) -> Iterator[RelevanceModel]:
        """Within the block, the copy's parameters are ``theta`` (missing names: unchanged)."""
        if self._original is None:
            self._original = [p.detach().clone() for p in self.parameters.values()]
        targets: list[Tensor] = [p for n, p in self.parameters.items() if n in theta]
        with torch.no_grad():
            torch._foreach_copy_(targets, [theta[n] for n in self.parameters if n in theta])
        try:
            yield self
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(self.parameters.values()), self._original)

    def maps(self, images: Tensor, targets: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """``maps[layer]``: (B, T, h, w) float32 relevance of logit ``targets[b, t]`` summed over channels.

        One forward; the T targets each take one relevance backward through the retained graph
        (zennit's rules recompute their modified forwards in the backward, so a batch of B·T
        rows would do the same work with T times the activation memory: measured 1.3-1.6x
        slower on resnet50).
        """
        composite = _make_composite(self.composite, self.resnet, images)
        with (torch.inference_mode(False), torch.enable_grad(), checkpoints_run_directly(),
              composite.context(self.copy) as modified):
            # clones: normal tensors even if the caller's were made under inference_mode
            x = images.detach().clone().requires_grad_(images.is_floating_point())
            targets = targets.clone()
            recorder = LayerRecorder(modified, layers, keep_inputs=(), differentiable_images=x.requires_grad)
            try:
                output = modified(x)
                if self.output_to_logits is not None:
                    output = self.output_to_logits(output)
            finally:
                recorder.remove()
            logits = check_logits(output, x.shape[0])
            check_targets_range(targets, logits.shape[1])
            recorder.check_complete(layers)
            activations = [x if name == INPUT else recorder.outputs[name] for name in layers]
            per_target = []
            for t in range(targets.shape[1]):
                classes = targets[:, t : t + 1]
                start = torch.zeros_like(logits).scatter_(1, classes, logits.detach().gather(1, classes))
                per_target.append(torch.autograd.grad(
                    logits, activations, grad_outputs=start, retain_graph=t < targets.shape[1] - 1, allow_unused=True
                ))
        unused = [n for n, r in zip(layers, per_target[0]) if r is None]
        if unused:
            raise ValueError(f"Expected every layer to influence the logits, but {unused} do not.")
        return {
            name: torch.stack([relevances[i].detach().float().sum(dim=1) for relevances in per_target], dim=1)
            for i, name in enumerate(layers)
        }


def lrp_maps(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    *,
    composite: object = "epsilon_plus_flat",
    output_to_logits: OutputToLogits | None = None,
) -> dict[str, Tensor]:
    """LRP relevance maps (B, T, h, w) of ``targets`` (B, T) at each of ``layers``.

    See the module docstring for the rules; ``composite`` is a name in
    :data:`LRP_COMPOSITES` or a ``zennit.core.Composite`` (used as given, canonizers included).
    """
    return RelevanceModel(model, composite, output_to_logits).maps(images, targets, layers)


def check_context_size(context_size: object) -> int:
    """Salient Relevance's working size: the smallest of the detector's 4 scales must hold several patches."""
    return check_int(context_size, "context_size", minimum=32, expected=(
        "an int >= 32 (pixels: the smallest of the 4 scales must hold several 7x7 patches)"
    ))


def salient_relevance(relevance: Tensor, context_size: int) -> Tensor:
    """Salient Relevance ("Beyond Saliency"): context-aware saliency of each (B, T, h, w) signed LRP
    map, so that strong evidence for and against the class both stand out from the near-zero
    background, as in the heatmap picture the paper processes. Returns (B, T, h', w') maps whose
    long edge is ``context_size``; a map holding inf/NaN (an overflowing meta step) gives NaN."""
    batch, num_targets = relevance.shape[:2]
    flat = relevance.flatten(0, 1)
    finite = flat.flatten(1).isfinite().all(dim=1)
    detected = context_aware_saliency(torch.where(finite[:, None, None], flat, 0.0)[:, None], size=context_size)
    detected = torch.where(finite[:, None, None], detected, torch.nan)
    return detected.reshape(batch, num_targets, *detected.shape[-2:])


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode whose parameters need no gradient (relevance flows to activations)."""
    try:
        with torch.inference_mode(False):
            duplicate = copy.deepcopy(model)
    except Exception as error:
        raise TypeError(
            f"Expected a model that copy.deepcopy can copy (LRP runs on a private copy so that zennit's "
            f"canonizers never touch your model), but copying {type(model).__name__} failed: {error}"
        ) from error
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return duplicate.eval()


def _make_composite(spec: object, resnet: bool, images: Tensor) -> Any:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    if not isinstance(spec, str):
        return spec
    canonizers = [ResNetCanonizer() if resnet else SequentialMergeBatchNorm()]
    if spec == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    # per image, so a map never depends on which other images share its batch (or meta's batch of one)
    low = images.detach().amin(dim=(2, 3), keepdim=True)
    high = images.detach().amax(dim=(2, 3), keepdim=True)
    return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
