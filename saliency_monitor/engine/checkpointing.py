"""Reentrant activation checkpointing, run directly during a saliency pass.

A model may run blocks of its forward through ``torch.utils.checkpoint.checkpoint`` (or
``checkpoint_sequential``) to save training memory. With ``use_reentrant=True`` torch calls
``CheckpointFunction.apply(function, preserve_rng_state, *args)``, an autograd Function whose
forward runs ``function`` under ``torch.no_grad()`` and whose backward runs it again and calls
``torch.autograd.backward`` inside. A saliency pass breaks on both: activations recorded inside
the block do not require grad, and ``torch.autograd.grad`` (every pass uses it, so that no
``.grad`` is written) raises "When use_reentrant=True, torch.utils.checkpoint is incompatible
with .grad()". A pass holds a few images, so checkpointing saves nothing there: inside
:func:`checkpoints_run_directly`, ``CheckpointFunction.apply`` calls ``function(*args)`` as if
the model had no checkpoint (same values, an ordinary graph, no recomputation).

What this relies on: torch's ``checkpoint`` looks ``CheckpointFunction`` up in
``torch.utils.checkpoint`` and calls ``.apply`` on it at every call (torch 2.1 to 2.x). Without
that class (a future torch) nothing is patched and torch's own error above names the remedy,
``use_reentrant=False``. The patch is process-wide while a pass runs (a second thread
checkpointing at that moment would run its blocks directly too) and undone on exit, also on
error.

Non-reentrant checkpointing (``use_reentrant=False``) is left alone by the autograd passes: it
supports ``autograd.grad``. It recomputes the block during the backward with the parameters the
module holds at that time, so a pass at other parameters keeps its forward and backward inside one
reparametrisation (:func:`saliency_monitor.engine.meta.at_parameters`). ``torch.func`` transforms
refuse its saved-tensor hooks, so the vectorised meta path asks for ``non_reentrant=True``:
``checkpoint`` then gets a generator that does nothing around the block (torch 2.4 to 2.x look
``_checkpoint_without_reentrant_generator_impl`` up at every call; without it, torch's own error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.utils.checkpoint

_GENERATOR = "_checkpoint_without_reentrant_generator_impl"
_INHERITED = object()
"""Marks an ``apply`` inherited from ``torch.autograd.Function`` (restored by deleting ours)."""


def _run_directly(function: Callable[..., object], preserve_rng_state: object, *args: object) -> object:
    """``CheckpointFunction.apply``'s stand-in: the checkpointed function, called directly."""
    if not callable(function) or not isinstance(preserve_rng_state, bool):
        raise RuntimeError(
            "Expected torch.utils.checkpoint to call CheckpointFunction.apply(function, preserve_rng_state, "
            f"*args), but got ({function!r}, {preserve_rng_state!r}, ...): this torch version is not supported "
            "for models using checkpoint(..., use_reentrant=True); use use_reentrant=False."
        )
    return function(*args)


def _no_checkpoint(function: object, args: object, kwargs: object, **options: object) -> Iterator[None]:
    """The non-reentrant checkpoint's generator, doing nothing before and after the block."""
    yield


@contextmanager
def checkpoints_run_directly(non_reentrant: bool = False) -> Iterator[None]:
    """Within the block, reentrant ``torch.utils.checkpoint`` calls (and non-reentrant ones if
    ``non_reentrant``) run their function directly.

    Nested blocks are fine; torch's functions are restored on exit.
    """
    function_class = getattr(torch.utils.checkpoint, "CheckpointFunction", None)
    patch_class = function_class is not None and callable(getattr(function_class, "apply", None))
    previous = vars(function_class).get("apply", _INHERITED) if patch_class else None
    generator = getattr(torch.utils.checkpoint, _GENERATOR, None) if non_reentrant else None
    if patch_class:
        function_class.apply = staticmethod(_run_directly)  # type: ignore[union-attr]
    if generator is not None:
        setattr(torch.utils.checkpoint, _GENERATOR, _no_checkpoint)
    try:
        yield  # torch's own error says what to do if an unpatched checkpoint is reached
    finally:
        if generator is not None:
            setattr(torch.utils.checkpoint, _GENERATOR, generator)
        if previous is _INHERITED:
            del function_class.apply  # type: ignore[union-attr]
        elif patch_class:
            function_class.apply = previous  # type: ignore[union-attr]
