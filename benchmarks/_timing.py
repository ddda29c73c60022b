"""Tiny timing helpers shared by the benchmark scripts.

``measure`` reports the **median** wall time of ``repeat`` runs (after ``warmup`` untimed
runs); ``measure_interleaved`` does the same for several functions in round-robin order, so
a change in machine load during the run (a shared box) hits every variant alike and
their ratios stay meaningful. The median, not the min: the scripts compare variants of very different lengths
on a small shared CPU box, and the min rewards whichever variant happened to get one
quiet run, while the median of a few runs is the typical cost and robust to one outlier
either way. The min and max are kept too, so a table can show the spread.

Threads are left at torch's default (``torch.get_num_threads()``); nothing here changes them.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Timing", "measure", "measure_interleaved", "operator_calls", "print_table"]


@dataclass(frozen=True)
class Timing:
    """Wall times in seconds of the timed runs of one function."""

    median: float
    min: float
    max: float
    runs: int

    def __str__(self) -> str:
        return f"{self.median:.3f} s (min {self.min:.3f}, max {self.max:.3f}, n={self.runs})"


def _synchronize() -> None:
    """Wait for queued CUDA work, so a run's time includes it (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed; return the timings.

    Garbage is collected before every run (outside the timed region) so one run's
    leftovers are not freed on the next one's clock. The reported figure is the median.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"Expected repeat >= 1 and warmup >= 0, but got {repeat=}, {warmup=}.")
    for _ in range(warmup):
        fn()
    times = [_timed_run(fn) for _ in range(repeat)]
    return Timing(statistics.median(times), min(times), max(times), repeat)


def _timed_run(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (garbage collected and device synced first)."""
    gc.collect()
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - start


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeat: int | Mapping[str, int] = 3,
    warmup: int | Mapping[str, int] = 1,
    *,
    on_run: Callable[[str, int, float], None] | None = None,
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds; return each one's timings.

    All warm-ups run first (in order); then round ``r`` times, in order, every function
    with ``repeat[name] > r``. ``repeat`` and ``warmup`` are one count for all, or a count
    per name. ``on_run(name, round, seconds)`` is called after each timed run (progress).
    """
    names = list(fns)
    reps = dict.fromkeys(names, repeat) if isinstance(repeat, int) else {n: repeat[n] for n in names}
    warms = dict.fromkeys(names, warmup) if isinstance(warmup, int) else {n: warmup[n] for n in names}
    if any(r < 1 for r in reps.values()) or any(w < 0 for w in warms.values()):
        raise ValueError(f"Expected repeat >= 1 and warmup >= 0, but got {reps=}, {warms=}.")
    for name in names:
        for _ in range(warms[name]):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(max(reps.values())):
        for name in names:
            if reps[name] > round_:
                times[name].append(_timed_run(fns[name]))
                if on_run is not None:
                    on_run(name, round_, times[name][-1])
    return {n: Timing(statistics.median(t), min(t), max(t), len(t)) for n, t in times.items()}


def _is_number(cell: str) -> bool:
    try:
        float(cell.rstrip("xs% "))
    except ValueError:
        return False
    return True


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False) -> None:
    """Print ``rows`` under ``headers`` as an aligned text table (numbers right-aligned).

    With ``markdown=True`` the table is a GitHub-flavoured markdown table, ready to paste.
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(_is_number(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return f"| {' | '.join(parts)} |" if markdown else "  ".join(parts).rstrip()

    print(fmt(cells[0]))
    if markdown:
        print("|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|")
    else:
        print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))


def operator_calls(fn: Callable[[], object]) -> dict[str, int]:
    """The aten operator calls ``fn`` makes, two counts (the same on any device):

    - ``"dispatched"``: calls issued by Python code and by the autograd engine (torch profiler's
      ``aten::*`` events without an ``aten::*`` parent: a C++ operator's internal calls, e.g.
      ``conv2d`` -> ``convolution`` -> ``_convolution``, are not counted again). Each costs Python
      and dispatcher time whatever the batch size: what makes batch-1 passes slow on a GPU.
    - ``"kernels"``: non-view operators reaching the backend (a ``TorchDispatchMode`` below
      autograd and ``vmap``: what the batching rules turn a call into), about one kernel launch each.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
        _synchronize()
    events = [event for event in profile.events() if event.name.startswith("aten::")]
    dispatched = sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    with _BackendCalls() as backend:
        fn()
        _synchronize()
    return {"dispatched": dispatched, "kernels": backend.count}


class _BackendCalls(TorchDispatchMode):
    """Counts the non-view operators that reach the backend while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))
