"""``SaliencyMonitor`` for ``lightning.pytorch`` Trainers (the ``lightning`` package; a
separate class tree from ``pytorch_lightning``, whose Trainers take
:class:`saliency_monitor.SaliencyMonitor`)."""

from __future__ import annotations

import lightning.pytorch as L

from .monitor.logic import SaliencyMonitorLogic


# The logic's hooks are typed against pytorch_lightning's Callback; lightning.pytorch's is a
# separate class tree with the same signatures, which mypy cannot reconcile with the first.
class SaliencyMonitor(SaliencyMonitorLogic, L.Callback):  # type: ignore[misc]
    __doc__ = SaliencyMonitorLogic.__doc__
