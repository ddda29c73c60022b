"""Checkerboard-noise removal for hidden-layer maps (Smooth Deep Saliency, arXiv 2404.02282).

A stride-2 convolution does not multiply every input location with every weight, so the
gradient reaching its input alternates on a 2×2 grid and maps at the layers below it show a
checkerboard. Two of the paper's remedies, active only while saliency is computed:

- ``"backward"`` (the paper's backward hook): the gradient flowing back into each stride-2
  convolution's input is replaced by its 2×2 local average, the mean of the four shifts
  (0,0), (0,1), (1,0), (1,1): g'(i, j) = mean{g(i−a, j−b) : a, b ∈ {0, 1}, inside the map}.
  At the top row / left column the window holds fewer entries and the mean is over those
  (no wrap-around, no zero padding counted). The forward pass, this convolution's own weight
  and bias gradients and the logits are unchanged.
- ``"forward"`` (the paper's forward hook): each stride-2 convolution's output is replaced by
  the mean over its four sampling phases, y'(i, j) = mean_{a,b} conv_stride1(x)(2i+a, 2j+b)
  (phases falling outside the stride-1 output are left out of the mean). This changes the
  model's predictions.

Both are applied by hooks that never outlive the call (:func:`smoothing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice

SMOOTHING = ("backward", "forward")


def check_smooth(mode: object) -> str | None:
    """``mode`` if it is one of :data:`SMOOTHING` or None."""
    return check_choice(mode, "smooth", SMOOTHING, or_none=True)


def strided_convolutions(model: nn.Module) -> list[nn.Conv2d]:
    """The ``nn.Conv2d`` modules of ``model`` with stride (2, 2)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2)]


def average_shifts(g: Tensor) -> Tensor:
    """g'(i, j) = mean of g over the 2×2 window {i−1, i} × {j−1, j} clipped to the map.

    g: (..., H, W). The window's entries outside the map are left out of the mean.
    """
    flat = g.reshape(-1, 1, *g.shape[-2:])
    summed = F.avg_pool2d(F.pad(flat, (1, 0, 1, 0)), 2, stride=1, divisor_override=1)
    ones = torch.ones_like(flat[:1])
    counts = F.avg_pool2d(F.pad(ones, (1, 0, 1, 0)), 2, stride=1, divisor_override=1)
    return (summed / counts).view_as(g)


class _AverageGradient(torch.autograd.Function):
    """Identity forward; backward replaces the incoming gradient by :func:`average_shifts`.
    In the ``setup_context`` form, with a generated vmap rule: usable under ``torch.func``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[Tensor], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return average_shifts(grad)


def phase_averaged_conv(conv: nn.Conv2d, x: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The stride-2 ``conv`` of ``x`` averaged over its four sampling phases (see module doc)."""
    ph, pw = (0, 0) if isinstance(conv.padding, str) else conv.padding  # "same" is refused by strided convs
    padded = F.pad(x, (pw, pw, ph, ph), mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    dense = F.conv2d(padded, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)
    height, width = out_size
    phases = [dense[..., a::2, b::2][..., :height, :width] for a in (0, 1) for b in (0, 1)]
    total = torch.stack([_pad_to(phase, height, width) for phase in phases]).sum(0)
    ones = [torch.ones(phase.shape[-2:], dtype=dense.dtype, device=dense.device) for phase in phases]
    count = torch.stack([_pad_to(one, height, width) for one in ones]).sum(0)  # phases falling outside count 0
    return total / count


def _pad_to(phase: Tensor, height: int, width: int) -> Tensor:
    """``phase`` zero-padded at the bottom and right to (height, width) (out-of-place: vmap-able)."""
    return F.pad(phase, (0, width - phase.shape[-1], 0, height - phase.shape[-2]))


@contextmanager
def smoothing(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Hooks on every stride-2 convolution of ``model`` for ``mode`` (None: nothing), removed on exit."""
    check_smooth(mode)
    if mode is None:
        yield
        return
    handles = []
    try:
        for conv in strided_convolutions(model):
            if mode == "backward":
                handles.append(conv.register_forward_pre_hook(
                    lambda module, args: (_AverageGradient.apply(args[0]), *args[1:])
                ))
            else:
                handles.append(conv.register_forward_hook(
                    lambda module, args, output: phase_averaged_conv(module, args[0], tuple(output.shape[-2:]))
                ))
        yield
    finally:
        for handle in handles:
            handle.remove()
