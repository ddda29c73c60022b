"""What goes into and comes out of the model: images, targets and logits, checked once.

Every engine entry point reads its inputs through these functions, so a bad tensor gets the
same message wherever it is passed.

- Images are floating point or integer (e.g. uint8 for a model that converts inside
  ``forward``); integer images are passed to the model as they are and cannot be
  differentiated, so only hidden layers have maps for them.
- A single-logit binary classifier ((B, 1) or (B,) logits trained with binary cross-entropy)
  becomes a two-class one through :func:`two_class_logits`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

OutputToLogits = Callable[[object], Tensor]
"""Maps a model's output (a dict, a tuple, ...) to its (B, C) logits tensor."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def check_images(images: object) -> Tensor:
    """A (B, C, H, W) tensor of floating-point or integer (not bool) values."""
    if not isinstance(images, Tensor):
        raise TypeError(f"Expected `images` to be a torch.Tensor, but got {type(images).__name__}.")
    if images.ndim != 4:
        raise ValueError(
            f"Expected `images` to be a 4-D (B, C, H, W) tensor, but got shape {tuple(images.shape)}."
        )
    if images.is_complex() or images.dtype == torch.bool:
        raise TypeError(f"Expected `images` to be a floating-point or integer tensor, but got {images.dtype}.")
    return images


def normalize_targets(targets: object, images: Tensor) -> Tensor:
    """(B,) or (B, T) class indices (tensor or nested sequence) -> (B, T) int64 on the images' device."""
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


def check_logits(logits: object, batch_size: int) -> Tensor:
    """The model's output must be (B, C) logits."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch_size:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"Expected `model` to return (B, C) class logits with B={batch_size}, but got {got}."
        )
    return logits


def check_targets_range(targets: Tensor, num_classes: int) -> None:
    """Every target a class index in [0, num_classes)."""
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"Expected `targets` to be class indices in [0, {num_classes}), but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]."
        )


def model_logits(model: nn.Module, images: Tensor, output_to_logits: OutputToLogits | None = None) -> Tensor:
    """(B, C) float32 logits of an eval-mode, no-grad forward; a clear error for any other output."""
    with torch.no_grad(), eval_mode(model):
        logits = model(images)
        if output_to_logits is not None:
            logits = output_to_logits(logits)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != images.shape[0] or logits.shape[1] < 2:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        hint = "" if output_to_logits is not None else " (pass `output_to_logits=` to pick the logits from the output)"
        if isinstance(logits, Tensor) and logits.shape in ((images.shape[0], 1), (images.shape[0],)):
            hint = " (a single-logit binary classifier: pass `output_to_logits=two_class_logits(...)`)"
        raise ValueError(
            f"Expected the model to map (B, C_in, H, W) images to (B, C) class logits with C >= 2, but got {got} "
            f"for B={images.shape[0]}{hint}."
        )
    return logits.float()


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's parameters live and their floating dtype (CPU float32 without parameters)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    return device, dtype


def two_class_logits(output_to_logits: OutputToLogits | None = None) -> OutputToLogits:
    """``output_to_logits`` for a single-logit binary classifier: its logit z as two classes.

    The model (after ``output_to_logits``, when given) returns (B, 1) or (B,) logits z trained
    with binary cross-entropy; the result maps its output to the (B, 2) logits
    ``[-z / 2, z / 2]``. Their softmax is ``[1 - sigmoid(z), sigmoid(z)]``, so the softmax
    cross-entropy of class c is the binary cross-entropy toward label c ("multiclass" meta
    steps are the user's loss) and the max- and min-predicted classes keep their meaning.
    Class 1 explains z, class 0 explains -z (both scaled by 1/2): their gradient maps differ by
    a factor -1 only, so a sign-blind aggregation gives both classes one map.
    """
    return functools.partial(_two_class, output_to_logits)


def _two_class(output_to_logits: OutputToLogits | None, output: object) -> Tensor:
    logit = output if output_to_logits is None else output_to_logits(output)
    if not isinstance(logit, Tensor) or not (logit.ndim == 1 or (logit.ndim == 2 and logit.shape[1] == 1)):
        got = f"shape {tuple(logit.shape)}" if isinstance(logit, Tensor) else type(logit).__name__
        raise ValueError(f"Expected a single-logit binary classifier's (B, 1) or (B,) logits, but got {got}.")
    half = logit.reshape(-1, 1) / 2
    return torch.cat([-half, half], dim=1)
