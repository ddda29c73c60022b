"""The task a classifier is trained for, and what it means for a class's loss and probability.

- ``"multiclass"``: one class per image; probabilities are the softmax of the logits and the
  loss of class c is the softmax cross-entropy −log softmax(z)_c.
- ``"multilabel"``: any number of classes per image; probabilities are sigmoids and the loss of
  class c is the binary cross-entropy of logit c toward 1, softplus(−z_c).

The meta step of meta-saliency (§4.4) descends this loss; the map itself always
backpropagates the class logit.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice

TASKS = ("multiclass", "multilabel")


def check_task(task: object) -> str:
    """``task`` if it is one of :data:`TASKS`."""
    return check_choice(task, "task", TASKS)


def class_loss(logits: Tensor, target: Tensor, task: str) -> Tensor:
    """ℓ(θ; x, c) for one image's logits (C,) and class c (0-d long tensor)."""
    if task == "multiclass":
        return F.cross_entropy(logits.unsqueeze(0), target.view(1))
    return F.softplus(-logits.gather(0, target.view(1))[0])  # BCE-with-logits toward 1 (gather: vmap-able)


def class_losses(logits: Tensor, classes: Tensor, task: str) -> Tensor:
    """ℓ of class ``classes[n]`` for each row of (N, C) logits, as :func:`class_loss`: (N,) float32."""
    logits = logits.float()
    if task == "multiclass":
        return F.cross_entropy(logits, classes, reduction="none")
    return F.softplus(-logits.gather(1, classes[:, None])[:, 0])


def class_probabilities(logits: Tensor, task: str) -> Tensor:
    """Softmax (``"multiclass"``) or sigmoid (``"multilabel"``) of (N, C) logits, in float32."""
    logits = logits.float()
    return logits.softmax(dim=-1) if task == "multiclass" else logits.sigmoid()
