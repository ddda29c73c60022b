"""Summaries over probes: the mean and its standard error, NaN entries left out."""

from __future__ import annotations

import math

from torch import Tensor


def mean_stderr(values: Tensor) -> tuple[float, float, int]:
    """(mean, standard error = sample std / √count, count) over the non-NaN entries.

    The mean is NaN when no entry is finite, the standard error when fewer than two are.
    """
    finite = values[~values.isnan()].double()
    count = finite.numel()
    mean = float(finite.mean()) if count else math.nan
    stderr = float(finite.std() / math.sqrt(count)) if count > 1 else math.nan
    return mean, stderr, count
