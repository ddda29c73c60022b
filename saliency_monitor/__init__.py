"""saliency-monitor: backpropagation saliency (Extract & Aggregate, NormGrad, meta-saliency)
for PyTorch, and a Lightning callback that watches it evolve during training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aggregate import AGGREGATIONS, EXTRACTS, NAMED_METHODS
from .layers import default_layers
from .meta import DEFAULT_META_LR
from .saliency import compute_saliency

if TYPE_CHECKING:
    from .callback import SaliencyMonitor

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_META_LR",
    "EXTRACTS",
    "NAMED_METHODS",
    "SaliencyMonitor",
    "compute_saliency",
    "default_layers",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: the pure-math API stays importable without paying for (or needing) Lightning.
    if name == "SaliencyMonitor":
        from .callback import SaliencyMonitor

        return SaliencyMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
