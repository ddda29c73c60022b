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

Non-reentrant checkpointing (``use_reentrant=False``) is left alone: it supports
``autograd.grad``. It recomputes the block during the backward with the parameters the module
holds at that time, so a pass at other parameters keeps its forward and backward inside one
reparametrisation (:func:`saliency_monitor.engine.meta.at_parameters`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.utils.checkpoint

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


@contextmanager
def checkpoints_run_directly() -> Iterator[None]:
    """Within the block, reentrant ``torch.utils.checkpoint`` calls run their function directly.

    Nested blocks are fine; the original ``CheckpointFunction.apply`` is restored on exit.
    """
    function_class = getattr(torch.utils.checkpoint, "CheckpointFunction", None)
    if function_class is None or not callable(getattr(function_class, "apply", None)):
        yield  # torch's own error says what to do if a reentrant checkpoint is reached
        return
    previous = vars(function_class).get("apply", _INHERITED)
    function_class.apply = staticmethod(_run_directly)
    try:
        yield
    finally:
        if previous is _INHERITED:
            del function_class.apply
        else:
            function_class.apply = previous
