"""saliency-monitor: backpropagation saliency (Extract & Aggregate, NormGrad, meta-saliency)
for PyTorch, and a Lightning callback that watches it evolve during training.

The package is layered; imports only go down:

- :mod:`saliency_monitor.metrics`: maps in, numbers out (correlations, localisation, layer
  combination); pure tensor math.
- :mod:`saliency_monitor.engine`: model in, maps out (``compute_saliency``); uses metrics' map
  utilities, never Lightning or wandb.
- :mod:`saliency_monitor.monitor`: the Lightning side (config, probes, evaluation, logging).
- :mod:`saliency_monitor.analysis`: research tools on top of the engine (sanity check,
  bilinear surrogate, data-driven layer weights); the monitor never imports them.
- :mod:`saliency_monitor.callback` / :mod:`saliency_monitor.lightning`: ``SaliencyMonitor``
  for ``pytorch_lightning`` and ``lightning.pytorch`` Trainers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .engine import AGGREGATIONS, DEFAULT_META_LR, EXTRACTS, METHODS, NAMED_METHODS, compute_saliency, default_layers

if TYPE_CHECKING:
    from .callback import SaliencyMonitor
    from .monitor.config import MonitorConfig

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_META_LR",
    "EXTRACTS",
    "METHODS",
    "NAMED_METHODS",
    "MonitorConfig",
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
    if name == "MonitorConfig":
        from .monitor.config import MonitorConfig

        return MonitorConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
