"""Alias kept for code written against 0.1: the randomisation check now lives in
:mod:`saliency_monitor.analysis.sanity`."""

from .analysis.sanity import (
    BATCHNORM_MODES,
    ORIGINAL,
    RandomizationResult,
    cascading_randomization,
    randomization_order,
)

__all__ = ["BATCHNORM_MODES", "ORIGINAL", "RandomizationResult", "cascading_randomization", "randomization_order"]
