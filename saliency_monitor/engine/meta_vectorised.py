"""Meta-saliency for many (image, class) pairs at once, with ``torch.func`` (``vmap``).

The same maps as the one-pair-at-a-time loop (:mod:`saliency_monitor.engine.meta`), shaped
for a GPU, where a batch-1 pass costs about as much as a batch-32 one (it is bound by kernel
launches and Python dispatch, not FLOPs). For a chunk of P pairs (b_p, c_p):

1. the per-pair gradients in one batched pass, ``vmap(grad(ℓ))`` over the pairs:
   g_p = ∇_θ ℓ(θ; x_{b_p}, c_p), and θ'_p = θ − lr·g_p (written over g_p);
2. the forward at every θ'_p and the activation backward in one ``vmap``-ed
   ``functional_call`` over the stacked θ' (the model-ensembling pattern). The activation
   gradients are taken functionally: each captured layer's output a is handed on as a + δ with
   δ = 0, and ``grad`` w.r.t. δ is d logit_c / d a.

A chunk holds P = ⌊``memory`` / bytes of the stepped parameters⌋ pairs (at least 1): its θ'
(the gradients, overwritten) is P copies of them (default: a quarter of what a CUDA device can
still give, 2 GiB elsewhere; :func:`default_meta_memory`). Cost against the loop: each pair runs its own
forward at θ (the loop shares one per image), so on a CPU, bound by FLOPs, the loop is faster
(:func:`resolve_meta_batching`); the aten operator calls per evaluation drop by the chunk size.
The model is never written: parameters enter as ``functional_call`` arguments, eval mode and
hooks are restored on exit. A model drawing random numbers in eval mode (MC dropout) draws them
independently per pair (``randomness="different"``), as the loop does one pair after another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .._checks import check_choice, check_int
from .capture import Capture, Captured, LayerRecorder
from .checkpointing import checkpoints_run_directly
from .layers import INPUT
from .layout_detection import LayoutTracker
from .meta import Parameters, TargetPairs
from .model_io import OutputToLogits, check_logits, check_targets_range, eval_mode
from .smoothing import smoothing
from .task import class_loss

META_BATCHING = ("auto", "loop", "vmap")
CPU_META_MEMORY = 2 * 1024**3
"""Bytes of θ' a vectorised chunk holds off CUDA by default (2 GiB: 20 pairs of a ResNet-50)."""


def check_meta_batching(meta_batching: object) -> str:
    """How meta maps are batched: ``"loop"`` (a pair at a time), ``"vmap"`` or ``"auto"``."""
    return check_choice(meta_batching, "meta_batching", META_BATCHING)


def check_meta_memory(meta_memory: object) -> int | None:
    """Bytes of stepped parameters the vectorised path holds at a time: a positive int, or None
    for :func:`default_meta_memory`."""
    return None if meta_memory is None else check_int(meta_memory, "meta_memory", minimum=1)


def default_meta_memory(device: torch.device) -> int:
    """On CUDA a quarter of the memory the device can still give (free, plus what torch's caching
    allocator holds unused); elsewhere :data:`CPU_META_MEMORY`."""
    if device.type != "cuda":
        return CPU_META_MEMORY
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1, (free + cached) // 4)


def resolve_meta_batching(meta_batching: str, device: torch.device) -> str:
    """``"auto"``: ``"vmap"`` on CUDA, where batch-1 passes are launch-bound, the loop elsewhere
    (on a 2-core CPU the loop took half of vmap's time, 3.4 s against 6.7 s for 16 pairs of a
    ResNet-50 at 224²: FLOP-bound, and vmap adds a forward per pair). The monitor measures both
    at fit start instead (:func:`time_meta_batching`)."""
    if meta_batching != "auto":
        return meta_batching
    return "vmap" if device.type == "cuda" else "loop"


def stepped_bytes(model: nn.Module, names: Sequence[str]) -> int:
    """Bytes of one copy of the stepped parameters."""
    parameters = dict(model.named_parameters())
    return sum(parameters[n].numel() * parameters[n].element_size() for n in names)


def vectorised_captures(
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
    memory: int | None = None,
) -> Iterator[Captured]:
    """For chunks of pairs in order, the captures of each pair's class at its θ'
    (B = chunk size, T = 1), two ``vmap``-ed passes per chunk (see the module docstring)."""
    budget = default_meta_memory(images.device) if memory is None else memory
    per_chunk = max(1, budget // max(1, stepped_bytes(model, names)))
    with torch.inference_mode(False), eval_mode(model), checkpoints_run_directly(non_reentrant=True):
        images = images.detach().clone()
        shapes = _layer_shapes(model, images[:1], layers, pairs.classes, output_to_logits)
        parameters = dict(model.named_parameters())
        theta = {n: parameters[n].detach() for n in names}
        for start in range(0, len(pairs), per_chunk):
            index = torch.tensor(pairs.images[start : start + per_chunk], device=images.device)
            chunk_images = images.index_select(0, index)
            classes = torch.tensor(pairs.classes[start : start + per_chunk], device=images.device)
            stepped = _steps(model, theta, chunk_images, classes, lr, task, output_to_logits)
            with smoothing(model, smooth):
                yield _captures(model, stepped, chunk_images, classes, layers, shapes, keep_inputs, output_to_logits)
            del stepped


def _logits(model: nn.Module, parameters: Parameters, image: Tensor, to_logits: OutputToLogits | None) -> Tensor:
    """One image's (C,) logits at ``parameters`` (the others and the buffers: the model's own)."""
    output = functional_call(model, parameters, (image[None],))
    return check_logits(output if to_logits is None else to_logits(output), 1)[0]


def _steps(
    model: nn.Module, theta: Parameters, images: Tensor, classes: Tensor, lr: float, task: str,
    to_logits: OutputToLogits | None,
) -> Parameters:
    """θ'_p = θ − lr·∇_θ ℓ(θ; x_p, c_p) for every pair p of the chunk: (P, *shape) per parameter."""

    def loss(parameters: Parameters, image: Tensor, target: Tensor) -> Tensor:
        return class_loss(_logits(model, parameters, image, to_logits), target, task)

    with torch.enable_grad():
        gradients: Parameters = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(theta, images, classes)
    storages: set[int] = set()
    for name, gradient in gradients.items():  # one gradient can view another's memory (a ViT's class token's
        storage = gradient.untyped_storage().data_ptr()  # is a slice of its position embedding's): own copies
        if storage in storages:
            gradients[name] = gradient.clone()
        storages.add(storage)
    stepped = list(gradients.values())
    with torch.no_grad():  # θ − lr·g, written over g, in two fused calls over all tensors
        torch._foreach_mul_(stepped, -lr)
        torch._foreach_add_(stepped, [theta[name].expand_as(g) for name, g in gradients.items()])
    return gradients


def _captures(
    model: nn.Module, stepped: Parameters, images: Tensor, classes: Tensor, layers: Sequence[str],
    shapes: dict[str, Tensor], keep_inputs: set[str], to_logits: OutputToLogits | None,
) -> Captured:
    """Forward at every θ'_p and d logit_{c_p} / d activation at every layer, vmapped over the pairs."""
    hidden = [n for n in layers if n != INPUT]

    def score(parameters: Parameters, image: Tensor, target: Tensor, deltas: dict[str, Tensor]) -> tuple[
            Tensor, tuple[dict[str, Tensor], dict[str, Tensor], Tensor]]:
        recorder = LayerRecorder(model, hidden, keep_inputs, perturbations=deltas)
        try:
            x = image + deltas[INPUT][0] if INPUT in deltas else image
            logits = _logits(model, parameters, x, to_logits)
        finally:
            recorder.remove()
        recorder.check_complete(hidden)
        activations = {n: x[None] if n == INPUT else recorder.outputs[n] for n in layers}
        return logits.gather(0, target.view(1))[0], (activations, recorder.inputs, logits)

    count = images.shape[0]
    deltas = {n: shapes[n].new_zeros(count, *shapes[n].shape) for n in layers}
    batched = vmap(grad(score, argnums=3, has_aux=True), in_dims=(0, 0, 0, 0), randomness="different")
    with torch.enable_grad():
        gradients, (activations, inputs, logits) = batched(stepped, images, classes, deltas)
    modules = dict(model.named_modules())
    return Captured(logits=logits.detach(), layers={
        name: Capture(
            activation=activations[name][:, 0].detach(),
            gradient=gradients[name].detach(),  # (P, 1, K, H, W): B = P pairs, T = 1
            module=None if name == INPUT else modules[name],
            layer_input=inputs[name][:, 0].detach() if name in inputs else None,
        ) for name in layers
    })


def _layer_shapes(
    model: nn.Module, image: Tensor, layers: Sequence[str], classes: list[int], to_logits: OutputToLogits | None,
) -> dict[str, Tensor]:
    """Each layer's map for one image (1, K, H, W) as a one-element tensor expanded to its shape
    (shape, dtype and device, no memory), from one no-grad forward that also checks the logits and
    the classes' range (inside ``vmap`` a bad index has no clear message)."""
    shapes: dict[str, Tensor] = {INPUT: image.new_empty(()).expand(image.shape)} if INPUT in layers else {}
    modules = dict(model.named_modules())
    tracker = LayoutTracker(model)  # each output read as a map in its layout, as the recorder does

    def keep_shape(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            layout = tracker.layout(name, module, args, output)
            assert isinstance(output, Tensor)
            shapes[name] = output.new_empty(()).expand(layout.map_shape(output.shape))
        return hook

    handles = [modules[n].register_forward_hook(keep_shape(n)) for n in layers if n != INPUT]
    try:
        with torch.no_grad():
            output = model(image)
            logits = check_logits(output if to_logits is None else to_logits(output), 1)
    finally:
        for handle in handles:
            handle.remove()
        tracker.remove()
    check_targets_range(torch.tensor(classes), logits.shape[1])
    missing = [n for n in layers if n not in shapes]
    if missing:
        raise ValueError(f"Expected the forward pass to reach every requested layer, but it never ran {missing}.")
    return shapes


def time_meta_batching(run: Callable[[str], object], repeat: int = 2) -> dict[str, float]:
    """Seconds of ``run(batching)`` for ``"loop"`` and ``"vmap"``: the faster of ``repeat``
    runs after one untimed warm-up each; a path that raises gets ``inf``."""
    seconds = {}
    for batching in ("loop", "vmap"):
        try:
            run(batching)
            times = []
            for _ in range(repeat):
                begin = time.perf_counter()
                run(batching)
                _synchronize()
                times.append(time.perf_counter() - begin)
            seconds[batching] = min(times)
        except Exception:  # noqa: BLE001 - a model vmap cannot run through keeps the loop
            seconds[batching] = float("inf")
    return seconds


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
