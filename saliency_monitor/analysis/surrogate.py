"""Bilinear surrogate (Smooth Deep Saliency, arXiv 2404.02282, the paper's first remedy).

Each stride-2 ``nn.Conv2d`` of a model is replaced by :class:`BilinearDownsample`: a 3×3
convolution at stride 1, a bilinear (antialiased) downsampling to the original output size
and a second 3×3 convolution. Every replacement is fitted layer-locally: the (input, output)
pairs of the original convolution are recorded on the fitting images (frozen copy, eval mode,
no_grad) and the replacement is trained with Adam on the L1 loss to map input -> output.
Saliency is then computed on the surrogate, whose gradients carry no stride-2 checkerboard.

The caller's model is never touched (the work happens on a deep copy) and the global RNG
state is restored afterwards; all randomness (init, shuffling) comes from a local generator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..engine.task import check_task, class_probabilities
from ..monitor.probes import parse_batch


@dataclass(frozen=True)
class SurrogateReport:
    """How closely the surrogate reproduces the original model.

    Attributes:
        layers: names of the replaced stride-2 convolutions (``model.named_modules()`` order).
        fit_l1: per layer, mean |replacement(x) − conv(x)| / mean |conv(x)| over the fitting data
            after training.
        accuracy: the surrogate's accuracy on the images (see :func:`fit_bilinear_surrogate`).
        original_accuracy: the same for the original model.
        prediction_difference: mean over images and classes of |p_surrogate − p_original|,
            p = softmax (``"multiclass"``) or sigmoid (``"multilabel"``) of the logits.
    """

    layers: tuple[str, ...]
    fit_l1: dict[str, float]
    accuracy: float
    original_accuracy: float
    prediction_difference: float


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class BilinearDownsample(nn.Module):
    """conv3x3 (stride 1, pad 1) -> bilinear antialiased resize to the original output size -> conv3x3.

    The target size is the original convolution's output size,
    ⌊(H + 2·p − d·(k − 1) − 1) / s⌋ + 1 per axis, from its stored kernel/stride/padding/dilation
    (``padding="valid"`` counts as 0).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...],
        padding: int | tuple[int, ...],
        dilation: int | tuple[int, ...],
        *,
        groups: int = 1,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups,
                               padding_mode=padding_mode, dtype=dtype, device=device)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype, device=device)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, generator: torch.Generator | None = None) -> BilinearDownsample:
        """A replacement for ``conv`` that starts close to it.

        conv1 copies ``conv``'s weight and bias when its kernel is 3×3 and undilated (else a
        Kaiming-uniform init drawn from ``generator``, zero bias); conv2 is the identity (Dirac
        weight, zero bias).
        """
        padding = (0, 0) if isinstance(conv.padding, str) else conv.padding  # "same" needs stride 1
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                     conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode,
                     dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            if tuple(conv.kernel_size) == (3, 3) and tuple(conv.dilation) == (1, 1):
                module.conv1.weight.copy_(conv.weight)
            else:
                nn.init.kaiming_uniform_(module.conv1.weight, a=5 ** 0.5, generator=generator)
            nn.init.zeros_(_bias(module.conv1))
            if conv.bias is not None:
                _bias(module.conv1).copy_(conv.bias)
            nn.init.dirac_(module.conv2.weight)
            nn.init.zeros_(_bias(module.conv2))
        return module

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The original convolution's output size for an (height, width) input."""
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip((height, width), self.padding, self.dilation, self.kernel_size, self.stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = self.output_size(*x.shape[-2:])
        y = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.conv2(y)


def fit_bilinear_surrogate(
    model: nn.Module,
    images: Iterable[Tensor] | Tensor,
    *,
    labels: Tensor | None = None,
    task: str = "multiclass",
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[nn.Module, SurrogateReport]:
    """A copy of ``model`` with every stride-2 ``nn.Conv2d`` replaced by a fitted :class:`BilinearDownsample`.

    Args:
        model: maps (N, C, H, W) images to (N, K) logits. Not modified (deep-copied; the copy
            runs in eval mode); every stride-2 convolution must run exactly once per forward.
        images: the fitting images, a (N, C, H, W) floating tensor or an iterable of such
            batches, or a DataLoader of batches :func:`~saliency_monitor.monitor.probes.parse_batch`
            reads (its labels are not used: pass ``labels`` for accuracies); consumed once. The same
            images serve for the report's accuracies
            (in-sample evaluation). All recorded (input, output) pairs are kept in memory.
        labels: for the accuracies: (N,) class indices (top-1 accuracy) or (N, K) multi-hot
            (fraction of images whose top class is a true class). Without labels, both
            accuracies measure agreement of top-1 with the original model's top-1 (so
            ``original_accuracy`` is 1).
        task: ``"multiclass"`` (softmax) or ``"multilabel"`` (sigmoid) for the prediction difference.
        epochs: Adam epochs per replaced layer (0: the initialisation only).
        lr: Adam learning rate.
        batch_size: images per Adam step and per recording/evaluation forward.
        seed: seeds the local generator for init and shuffling; the result is deterministic
            given the seed and the global RNG state is left as it was.

    Returns:
        (surrogate in eval mode, report). Only the replacements' parameters were trained.
    """
    _check_options(task, epochs, lr, batch_size)
    x = _stack_images(images)
    names = _strided_names(model)
    if labels is not None:
        labels = _check_labels(labels, x.shape[0])
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        generator = torch.Generator().manual_seed(seed)
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.grad = None
        records, original = _record(frozen, x, names, batch_size)
        fit_l1 = {}
        for name in names:
            conv = frozen.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)  # _strided_names found it as one
            replacement = BilinearDownsample.from_conv(conv, generator=generator)
            inputs, outputs = records.pop(name)
            fit_l1[name] = _train(replacement, inputs, outputs, epochs, lr, batch_size, generator)
            _replace(frozen, name, replacement.eval())
        with torch.no_grad():
            surrogate_logits = torch.cat([frozen(b) for b in x.split(batch_size)])
    report = SurrogateReport(
        layers=tuple(names),
        fit_l1=fit_l1,
        accuracy=_accuracy(surrogate_logits, labels, original),
        original_accuracy=_accuracy(original, labels, original),
        prediction_difference=float((class_probabilities(surrogate_logits, task) - class_probabilities(original, task))
                                    .abs().mean()),
    )
    return frozen, report


def _check_options(task: object, epochs: object, lr: object, batch_size: object) -> None:
    check_task(task)
    check_int(epochs, "epochs", expected="a non-negative int")
    check_number(lr, "lr", expected="a positive number", valid=lambda v: v > 0)
    check_int(batch_size, "batch_size", minimum=1)


def _check_batch(batch: object) -> Tensor:
    if not isinstance(batch, Tensor):
        raise TypeError(f"Expected `images` to be a tensor or an iterable of tensors, but got {type(batch).__name__}.")
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ValueError(
            f"Expected `images` of shape (N, C, H, W) and floating dtype, but got shape "
            f"{tuple(batch.shape)} and dtype {batch.dtype}."
        )
    return batch.detach()


def _stack_images(images: object) -> Tensor:
    if isinstance(images, Tensor):
        x = _check_batch(images)
    elif isinstance(images, Iterable) and not isinstance(images, (str, bytes)):
        # a DataLoader of the user's batches works too: (images, labels, ...) -> images
        batches = [_check_batch(parse_batch(b).images if isinstance(b, (tuple, list, dict)) else b) for b in images]
        if not batches:
            raise ValueError("Expected `images` to hold at least one batch, but got an empty iterable.")
        shapes = {tuple(b.shape[1:]) for b in batches}
        if len(shapes) > 1:
            raise ValueError(f"Expected `images` batches of one (C, H, W) shape, but got {sorted(shapes)}.")
        x = torch.cat(batches)
    else:
        raise TypeError(f"Expected `images` to be a tensor or an iterable of tensors, but got {type(images).__name__}.")
    if x.shape[0] == 0:
        raise ValueError("Expected `images` to hold at least one image, but got 0.")
    return x


def _strided_names(model: nn.Module) -> list[str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2)]
    if not names:
        raise ValueError(
            f"Expected `model` to contain a stride-2 torch.nn.Conv2d, but got none in {type(model).__name__}."
        )
    return names


def _check_labels(labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim not in (1, 2) or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"Expected `labels` of shape ({n},) or ({n}, K), but got {shape}.")
    if labels.ndim == 1 and (labels.is_floating_point() or labels.is_complex()):
        raise ValueError(f"Expected (N,) `labels` to hold integer class indices, but got dtype {labels.dtype}.")
    return labels


def _record(
    frozen: nn.Module, x: Tensor, names: list[str], batch_size: int
) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
    """Inputs and outputs of each named conv on ``x`` (no_grad), and the logits."""
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in names}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        return lambda module, args, output: seen[name].append((args[0].detach(), output.detach()))

    handles = [frozen.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    logits = []
    try:
        with torch.no_grad():
            for i, batch in enumerate(x.split(batch_size)):
                logits.append(_logits(frozen(batch)))
                for name in names:
                    if len(seen[name]) != i + 1:
                        raise ValueError(
                            f"Expected each stride-2 convolution to run once per forward, but {name!r} ran "
                            f"{len(seen[name]) - i} times."
                        )
    finally:
        for handle in handles:
            handle.remove()
    records = {
        name: (torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])) for name, pairs in seen.items()
    }
    return records, torch.cat(logits)


def _logits(output: object) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"Expected `model` to return (N, K) logits, but got {shape}.")
    return output


def _train(
    module: BilinearDownsample, inputs: Tensor, outputs: Tensor, epochs: int, lr: float, batch_size: int,
    generator: torch.Generator,
) -> float:
    """Adam on L1 for ``epochs``; returns the final relative L1 error over all pairs."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
        for idx in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(module(inputs[idx]), outputs[idx]).backward()
            optimizer.step()
    module.eval()
    with torch.no_grad():
        pairs = zip(inputs.split(batch_size), outputs.split(batch_size))
        error = sum(float((module(a) - b).abs().sum()) for a, b in pairs)
    return error / max(float(outputs.abs().sum()), 1e-12)


def _bias(conv: nn.Conv2d) -> Tensor:
    """The bias of a convolution built with one."""
    if conv.bias is None:
        raise ValueError("Expected a convolution with a bias.")
    return conv.bias


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _accuracy(logits: Tensor, labels: Tensor | None, original: Tensor) -> float:
    top = logits.argmax(-1)
    if labels is None:
        return float((top == original.argmax(-1)).float().mean())
    labels = labels.to(top.device)
    if labels.ndim == 1:
        return float((top == labels).float().mean())
    return float((labels.gather(1, top[:, None]).squeeze(1) > 0).float().mean())
