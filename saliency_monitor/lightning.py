"""``SaliencyMonitor`` for ``lightning.pytorch`` Trainers (the ``lightning`` package; a
separate class tree from ``pytorch_lightning``, whose Trainers take
:class:`saliency_monitor.SaliencyMonitor`)."""

from __future__ import annotations

import lightning.pytorch as L

from .monitor.logic import SaliencyMonitorLogic


class SaliencyMonitor(SaliencyMonitorLogic, L.Callback):
    __doc__ = SaliencyMonitorLogic.__doc__
