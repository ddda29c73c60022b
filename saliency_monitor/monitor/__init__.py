"""The Lightning side: a callback that evaluates saliency on fixed probes while a model trains.

=============  ==============================================================================
config         every option, checked once (:class:`MonitorConfig`)
logic          the callback's hooks: when to evaluate, what a fault does
fit_start      probes drawn, layers / task / meta step settled, the plan checked on one probe
resume         what a checkpoint contributes at a resume, option by option
rng            the monitor's own RNG streams
inputs         single-logit classifiers and integer images, settled at fit start
probes/        the user's batches read, probe sets drawn deterministically (:class:`ProbeBatch`)
evaluation     one evaluation of a probe set: maps and per-probe metrics
degenerate     maps with no spatial information (1×1, constant), left out
meta_step      the calibrated meta-saliency step
distributed    probe sharding across DDP ranks and the gather that undoes it
keys           the logged names (:class:`MetricKey`, :class:`KeyLayout`)
report         summary numbers, pictures and per-probe tables
render         pictures: colour maps, overlays, captioned grids (``colormaps``: the tables)
filmstrip      each logged probe's combined map across evaluations, in one picture
publish        callback metrics, every logger, the run's config and summary
workspace      a curated W&B workspace (``wandb-workspaces``), train and val on one chart
loggers/       W&B, TensorBoard, CSV and generic adapters
trainer        what is read from the Trainer; warnings, progress
state          what the monitor remembers, and its checkpoint
=============  ==============================================================================

No module here imports Lightning at run time (the two Lightning namespaces get their
``SaliencyMonitor`` in :mod:`saliency_monitor.callback` and :mod:`saliency_monitor.lightning`).
"""

from .config import MonitorConfig
from .keys import KeyLayout, MetricKey
from .logic import SaliencyMonitorLogic
from .trainer import SaliencyMonitorWarning, refuse_sharded_strategy

__all__ = [
    "KeyLayout",
    "MetricKey",
    "MonitorConfig",
    "SaliencyMonitorLogic",
    "SaliencyMonitorWarning",
    "refuse_sharded_strategy",
]
