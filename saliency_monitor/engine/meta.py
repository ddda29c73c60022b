"""Meta-saliency (Rebuffi et al. 2020, §4.4, eqs. 4-6; supp. D).

For image x_i and target c, take one SGD step on that single loss,

    θ' = θ − lr · ∇_θ ℓ(θ; x_i, c),

and compute the saliency map at θ'. With lr = 2ε this is the first-order expansion of
∇_θ ℓ(θ − ε∇_θ ℓ; x_i, c) (the paper's ε = 0.001 gives lr = 0.002); lr < 0 is gradient
ascent ("negative meta-saliency"). The model is never mutated: θ' is a dict of new tensors
that :func:`at_parameters` (``torch.func.functional_call``) puts in place for a whole forward
and backward; no weight, ``.grad``, buffer or flag changes.

Losses (``task``, :mod:`saliency_monitor.engine.task`): ``"multiclass"`` softmax
cross-entropy of class c; ``"multilabel"`` binary cross-entropy of logit c toward 1, i.e.
softplus(−logit_c). Both in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_choice, check_number
from .capture import Captured, capture
from .checkpointing import checkpoints_run_directly
from .model_io import OutputToLogits, check_logits, check_targets_range, eval_mode
from .task import class_loss

R = TypeVar("R")
Parameters = dict[str, Tensor]
"""θ' as a name -> tensor mapping (``torch.func.functional_call``'s parameters)."""

DEFAULT_META_LR = 0.002
"""The paper's ε = 0.001 (§4.4) as an SGD learning rate: lr = 2ε."""
META_PARAMS = ("all", "trainable")


def check_meta_lr(meta_lr: object) -> float:
    """The meta step: a finite, non-zero number (negative: gradient ascent)."""
    return check_number(meta_lr, "meta_lr", expected="a finite non-zero number", valid=lambda v: v != 0)


def check_meta_params(meta_params: object) -> str:
    """Which parameters step: ``"all"`` (the paper) or ``"trainable"`` (``requires_grad``)."""
    return check_choice(meta_params, "meta_params", META_PARAMS)


def stepped_parameter_names(model: nn.Module, meta_params: str) -> list[str]:
    """The names of the parameters the meta step moves; an error when there are none."""
    names = [n for n, p in model.named_parameters() if meta_params == "all" or p.requires_grad]
    if not names:
        what = "parameters" if meta_params == "all" else "parameters with requires_grad=True"
        raise ValueError(f"Expected `model` to have {what} for the meta step, but it has none.")
    return names


class _Holder(nn.Module):
    """Holds the model as ``model`` and runs any function as its forward, so that
    ``functional_call`` on it reparametrises the model for the whole function."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, function: Callable[[], R]) -> R:
        return function()


def at_parameters(model: nn.Module, parameters: Parameters, function: Callable[[], R]) -> R:
    """``function()`` with ``model``'s parameters replaced by ``parameters`` (the others kept)
    for its whole run, through ``torch.func.functional_call``; restored on exit, also on error.

    The whole run, backward included: a backward can run the model's modules again (non-reentrant
    activation checkpointing recomputes its blocks then) and must see the forward's parameters.
    """
    return functional_call(_Holder(model), {f"model.{n}": t for n, t in parameters.items()}, (function,))


def for_each_step(
    model: nn.Module,
    image: Tensor,
    targets: Tensor,
    compute: Callable[[Tensor, Tensor, Parameters], R],
    *,
    lr: float,
    task: str,
    names: Sequence[str],
    output_to_logits: OutputToLogits | None = None,
) -> list[R]:
    """``compute(image, target_t, θ'_t)`` for each target t of one image, sharing its forward pass.

    image (1, C, H, W), targets (T,), target_t (1, 1). Gradients are taken w.r.t. detached
    aliases of the parameters (no copy, original ``requires_grad`` untouched), the forward and
    every gradient inside one :func:`at_parameters` with those aliases; ``compute`` runs nested
    in it (it can reparametrise the model again). Parameters not in ``names`` or not reached by
    the loss keep their value. Memory: the image's graph plus, at a time, one gradient and one
    θ' (at most 2 extra copies of the stepped parameters).
    """
    params = dict(model.named_parameters())
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}

    def forward_and_steps() -> list[R]:
        output = model(image)
        if output_to_logits is not None:
            output = output_to_logits(output)
        logits = check_logits(output, 1)
        check_targets_range(targets, logits.shape[1])
        results = []
        for t, target in enumerate(targets):
            loss = class_loss(logits[0], target, task)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), retain_graph=t < len(targets) - 1, allow_unused=True
            )
            stepped = [n for n, g in zip(leaves, grads) if g is not None]
            moved = torch._foreach_add(  # θ − lr·g in one fused pass over all tensors
                [leaves[n].detach() for n in stepped], [g for g in grads if g is not None], alpha=-lr
            )
            del grads  # before compute
            theta = {n: leaves[n].detach() for n in leaves}
            theta.update(zip(stepped, moved))
            results.append(compute(image, target.view(1, 1), theta))
            del theta  # before the next gradient
        return results

    return at_parameters(model, leaves, forward_and_steps)


@dataclass(frozen=True)
class TargetPairs:
    """The distinct (image, class) pairs of (B, T) targets: a class repeated in an image's targets
    (the label class is often the max-predicted one) is one pair, computed once."""

    images: list[int]
    """Image index b of each pair, ascending; an image's pairs in the order its classes first appear."""
    classes: list[int]
    """Class c of each pair."""
    index: Tensor
    """(B, T) int64: the pair of ``targets[b, t]``, so per-pair results ``r`` (P, ...) give ``r[index]`` (B, T, ...)."""

    @classmethod
    def of(cls, targets: Tensor) -> TargetPairs:
        rows = targets.tolist()  # one host read of the (B, T) targets per call
        images: list[int] = []
        classes: list[int] = []
        index = []
        for b, row in enumerate(rows):
            first = {c: len(images) + i for i, c in enumerate(dict.fromkeys(row))}
            images += [b] * len(first)
            classes += list(first)
            index.append([first[c] for c in row])
        return cls(images, classes, torch.tensor(index, dtype=torch.long, device=targets.device))

    def __len__(self) -> int:
        return len(self.images)


def meta_per_pair(
    model: nn.Module,
    images: Tensor,
    pairs: TargetPairs,
    compute: Callable[[Tensor, Tensor, Parameters], R],
    *,
    lr: float,
    task: str,
    names: Sequence[str],
    output_to_logits: OutputToLogits | None = None,
) -> Iterator[R]:
    """For every pair (b, c) in order, ``compute(image_b, c, θ'_{b,c})``, one pair at a time.

    ``image`` is (1, C, H, W), ``c`` (1, 1). A forward of the image at θ gives all its pairs'
    θ' (shared). Eval mode, gradients enabled, inference mode off, reentrant checkpoints run
    directly (:mod:`saliency_monitor.engine.checkpointing`).
    """
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), checkpoints_run_directly():
        images = images.detach().clone()
        device = images.device
        for b in dict.fromkeys(pairs.images):
            classes = [c for i, c in zip(pairs.images, pairs.classes) if i == b]
            yield from for_each_step(model, images[b : b + 1], torch.tensor(classes, device=device), compute, lr=lr,
                                     task=task, names=names, output_to_logits=output_to_logits)


def meta_capture(
    model: nn.Module,
    images: Tensor,
    pairs: TargetPairs,
    layers: Sequence[str],
    *,
    lr: float,
    task: str,
    names: Sequence[str],
    keep_inputs: set[str],
    output_to_logits: OutputToLogits | None = None,
    smooth: str | None = None,
) -> Iterator[Captured]:
    """For every pair (b, c) in order, the capture of c at θ'_{b,c} (B = T = 1): one forward and
    one activation backward at each θ', one pair at a time (see :func:`meta_per_pair`)."""

    def at_theta(image: Tensor, target: Tensor, theta: Parameters) -> Captured:
        return at_parameters(model, theta, partial(
            capture, model, image, target, layers, keep_inputs=keep_inputs, output_to_logits=output_to_logits,
            smooth=smooth,
        ))

    return meta_per_pair(model, images, pairs, at_theta, lr=lr, task=task, names=names,
                         output_to_logits=output_to_logits)
