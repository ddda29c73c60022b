"""The Lightning side: a callback that evaluates saliency on fixed probes while a model trains.

=============  ==============================================================================
config         every option, checked once (:class:`MonitorConfig`)
logic          the callback's hooks: when to evaluate, what a fault does
fit_start      probes drawn (or re-read on resume), layers / task / meta step settled
probes/        the user's batches read, probe sets drawn deterministically (:class:`ProbeBatch`)
evaluation     one evaluation of a probe set: maps and per-probe metrics
meta_step      the calibrated meta-saliency step
distributed    probe sharding across DDP ranks and the gather that undoes it
keys           the logged names (:class:`MetricKey`, :func:`format_key`)
report         summary numbers, pictures and per-probe tables
render         pictures: colour maps, overlays, captioned grids (``colormaps``: the tables)
publish        callback metrics and every logger
loggers/       W&B, TensorBoard, CSV and generic adapters
trainer        what is read from the Trainer; warnings, progress
state          what the monitor remembers, and its checkpoint
=============  ==============================================================================

No module here imports Lightning at run time (the two Lightning namespaces get their
``SaliencyMonitor`` in :mod:`saliency_monitor.callback` and :mod:`saliency_monitor.lightning`).
"""

from .config import MonitorConfig
from .keys import MetricKey, format_key
from .logic import SaliencyMonitorLogic
from .trainer import SaliencyMonitorWarning, refuse_sharded_strategy

__all__ = [
    "MetricKey",
    "MonitorConfig",
    "SaliencyMonitorLogic",
    "SaliencyMonitorWarning",
    "format_key",
    "refuse_sharded_strategy",
]
