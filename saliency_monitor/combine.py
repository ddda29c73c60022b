"""Alias kept for code written against 0.1: layer combination now lives in
:mod:`saliency_monitor.metrics.combination` and the data-driven layer weights in
:mod:`saliency_monitor.analysis.layer_weights`."""

from .analysis.layer_weights import WEIGHTINGS, feature_spread, layer_weights, probe_accuracy, probe_split
from .metrics.combination import COMBINATIONS, combine_maps, linear_weights, normalize_weights, uniform_weights
from .metrics.maps import minmax_normalize

__all__ = [
    "COMBINATIONS",
    "WEIGHTINGS",
    "combine_maps",
    "feature_spread",
    "layer_weights",
    "linear_weights",
    "minmax_normalize",
    "normalize_weights",
    "probe_accuracy",
    "probe_split",
    "uniform_weights",
]
