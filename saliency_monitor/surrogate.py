"""Alias kept for code written against 0.1: the bilinear surrogate now lives in
:mod:`saliency_monitor.analysis.surrogate`."""

from .analysis.surrogate import BilinearDownsample, SurrogateReport, fit_bilinear_surrogate

__all__ = ["BilinearDownsample", "SurrogateReport", "fit_bilinear_surrogate"]
