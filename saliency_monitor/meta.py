"""Meta-saliency (Rebuffi et al. 2020, §4.4, eqs. 4-6; supp. D).

For image x_i and target c, take one SGD step on that single loss,

    θ' = θ − lr · ∇_θ ℓ(θ; x_i, c),

and compute the saliency map at θ'. With lr = 2ε this is the first-order expansion of
∇_θ ℓ(θ − ε∇_θ ℓ; x_i, c) (the paper's ε = 0.001 gives lr = 0.002); lr < 0 is gradient
ascent ("negative meta-saliency"). The model is never mutated: θ' is a dict of new tensors
passed through ``torch.func.functional_call``; no weight, ``.grad``, buffer or flag changes.

Losses (``task``): ``"multiclass"`` softmax cross-entropy of class c; ``"multilabel"``
binary cross-entropy of logit c toward 1, i.e. softplus(−logit_c). Both in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .extract import Extraction, _check_logits, _check_targets_range, extract
from .layers import eval_mode

R = TypeVar("R")

DEFAULT_META_LR = 0.002
"""The paper's ε = 0.001 (§4.4) as an SGD learning rate: lr = 2ε."""
TASKS = ("multiclass", "multilabel")
META_PARAMS = ("all", "trainable")


def validate_meta(model: nn.Module, meta_lr: object, task: object, meta_params: object) -> list[str]:
    """Check meta-saliency arguments; return the names of the parameters that step."""
    if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not math.isfinite(meta_lr) or meta_lr == 0:
        raise ValueError(f"Expected `meta_lr` to be a finite non-zero number, but got {meta_lr!r}.")
    if task not in TASKS:
        raise ValueError(f"Expected `task` to be one of {list(TASKS)}, but got {task!r}.")
    if meta_params not in META_PARAMS:
        raise ValueError(f"Expected `meta_params` to be one of {list(META_PARAMS)}, but got {meta_params!r}.")
    names = [n for n, p in model.named_parameters() if meta_params == "all" or p.requires_grad]
    if not names:
        what = "parameters" if meta_params == "all" else "parameters with requires_grad=True"
        raise ValueError(f"Expected `model` to have {what} for the meta step, but it has none.")
    return names


def meta_loss(logits: Tensor, target: Tensor, task: str) -> Tensor:
    """ℓ(θ; x, c) for one image's logits (C,) and class c (0-d long tensor)."""
    if task == "multiclass":
        return F.cross_entropy(logits.unsqueeze(0), target.view(1))
    return F.softplus(-logits[target])  # BCE-with-logits toward 1


def stepped_parameters(
    model: nn.Module,
    image: Tensor,
    targets: Tensor,
    lr: float,
    task: str,
    names: Sequence[str],
    output_to_logits: Callable[[object], Tensor] | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Yield θ' for each target of one image, sharing that image's forward pass.

    image (1, C, H, W), targets (T,). Gradients are taken w.r.t. detached aliases of the
    parameters (no copy, original ``requires_grad`` untouched); parameters not in ``names``
    or not reached by the loss keep their value. Memory: the image's graph plus, at a time,
    one gradient and one θ' (about 2 extra copies of the stepped parameters).
    """
    params = dict(model.named_parameters())
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    output = functional_call(model, leaves, (image,))
    if output_to_logits is not None:
        output = output_to_logits(output)
    _check_logits(output, 1)
    _check_targets_range(targets, output.shape[1])
    logits = output[0]
    for t, target in enumerate(targets):
        loss = meta_loss(logits, target, task)
        grads = torch.autograd.grad(
            loss, list(leaves.values()), retain_graph=t < len(targets) - 1, allow_unused=True
        )
        stepped = [n for n, g in zip(leaves, grads) if g is not None]
        moved = torch._foreach_add(  # θ − lr·g in one fused pass over all tensors
            [leaves[n].detach() for n in stepped], [g for g in grads if g is not None], alpha=-lr
        )
        theta = {n: leaves[n].detach() for n in leaves}
        theta.update(zip(stepped, moved))
        yield theta


def meta_per_target(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    compute: Callable[[Tensor, Tensor, dict[str, Tensor]], R],
    *,
    lr: float,
    task: str,
    names: Sequence[str],
    output_to_logits: Callable[[object], Tensor] | None = None,
) -> Iterator[tuple[int, R]]:
    """For every image b and target index t, ``compute(image, target, θ'_{b,t})``.

    ``image`` is (1, C, H, W), ``target`` (1, 1). Yields (b, result) in (b, t) order. Runs one
    (image, target) at a time: a forward of the image at θ gives all its targets' θ'
    (shared); a class repeated in an image's targets (e.g. the label class is also the
    max-predicted class) is computed once. Eval mode, gradients enabled, inference mode off.
    """
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        images, targets = images.detach().clone(), targets.clone()
        for b in range(images.shape[0]):
            image = images[b : b + 1]
            classes = list(dict.fromkeys(targets[b].tolist()))
            unique = torch.tensor(classes, dtype=targets.dtype, device=targets.device)
            steps = stepped_parameters(model, image, unique, lr, task, names, output_to_logits)
            done = {c: compute(image, unique[i].view(1, 1), theta) for i, (c, theta) in enumerate(zip(classes, steps))}
            for c in targets[b].tolist():
                yield b, done[c]


def meta_extract(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    *,
    lr: float,
    task: str,
    names: Sequence[str],
    keep_inputs: set[str],
    output_to_logits: Callable[[object], Tensor] | None = None,
    smooth: str | None = None,
) -> Iterator[tuple[int, Extraction]]:
    """For every image b and target index t, the extraction of ``targets[b, t]`` at θ'_{b,t}
    (one forward and one activation backward at each θ', see :func:`meta_per_target`).
    Yields (b, extraction with B = T = 1) in (b, t) order."""

    def at_theta(image: Tensor, target: Tensor, theta: dict[str, Tensor]) -> Extraction:
        return extract(
            model, image, target, layers, keep_inputs=keep_inputs, forward=partial(functional_call, model, theta),
            output_to_logits=output_to_logits, smooth=smooth,
        )

    return meta_per_target(model, images, targets, at_theta, lr=lr, task=task, names=names,
                           output_to_logits=output_to_logits)
