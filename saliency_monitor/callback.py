"""``SaliencyMonitor`` for ``pytorch_lightning`` Trainers (for ``lightning.pytorch`` ones, see
:mod:`saliency_monitor.lightning`)."""

from __future__ import annotations

import pytorch_lightning as pl

from .monitor.logic import SaliencyMonitorLogic


class SaliencyMonitor(SaliencyMonitorLogic, pl.Callback):
    __doc__ = SaliencyMonitorLogic.__doc__
