"""Random-number isolation: the monitor draws from its own streams, never from training's.

Every probe read and every evaluation pass runs under :func:`isolated_rng`: the global torch
(CPU and every initialised CUDA device), ``random`` and numpy generators are saved, seeded
from the monitor's ``seed`` and a key, and restored on exit. So training is bitwise the same
with and without the monitor even for models that draw random numbers in eval mode
(MC-dropout, ``F.dropout(..., training=True)``, noise layers), and two evaluations at the same
weights give the same maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def derived_seed(seed: int, key: int | str, salt: str = "saliency_monitor.probes") -> int:
    """A 63-bit seed from ``(salt, seed, key)``."""
    # the default salt names 0.1's module: changing it would change every drawn probe set
    digest = hashlib.sha256(f"{salt}:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU, initialised CUDA devices), ``random`` and numpy; restore them on exit.

    Only the CPU generator and initialised CUDA devices' generators are seeded, never through
    ``torch.manual_seed``: with CUDA not yet initialised that would queue a seed that CUDA
    applies later, outside this block.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for device in cuda:
                torch.cuda.default_generators[device].manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def evaluation_seed(seed: int, split: str) -> int:
    """The seed of every evaluation pass over ``split``'s probes (the same at each evaluation)."""
    return derived_seed(seed, split, salt="saliency_monitor.evaluation")
