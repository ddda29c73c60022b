"""Alias kept for code written against 0.1: the detector now lives in
:mod:`saliency_monitor.engine.context_saliency`."""

from .engine.context_saliency import context_aware_saliency

__all__ = ["context_aware_saliency"]
