"""Spearman correlation of 32 map pairs of 224x224 with many ties: ours vs scipy vs torchmetrics.

    .ci/venv python benchmarks/bench_rank_correlation.py [--pairs 32] [--size 224] [--repeats 5]

Maps are clamped uniform noise with 50% exact zeros (like selective NormGrad maps), float32,
on CPU (and on CUDA too when available). Each method's time is the median over repeats,
after one warm-up; the ratios printed come from this one run. Ours runs with torch's default
thread count and with one thread (scipy is single-threaded). Results are checked against scipy before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import spearmanr
from torchmetrics.functional import spearman_corrcoef

from saliency_monitor.metrics import rank_correlation


def median_seconds(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``fn`` after one warm-up call."""
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    shape = (args.pairs, args.size, args.size)
    a = (torch.rand(shape, generator=generator) - 0.5).clamp_min(0)
    b = (torch.rand(shape, generator=generator) - 0.5).clamp_min(0)
    a_np, b_np = a.flatten(1).numpy(), b.flatten(1).numpy()

    def scipy_loop() -> list[float]:
        return [spearmanr(x, y).statistic for x, y in zip(a_np, b_np)]

    def torchmetrics_loop() -> list[torch.Tensor]:
        return [spearman_corrcoef(x, y) for x, y in zip(a.flatten(1), b.flatten(1))]

    reference = np.array(scipy_loop())
    error = np.abs(rank_correlation(a, b).double().numpy() - reference).max()
    error_tm = np.abs(torch.stack(torchmetrics_loop()).double().numpy() - reference).max()

    print(f"command: .ci/venv python {' '.join(sys.argv)}")
    print(
        f"{args.pairs} pairs of {args.size}x{args.size} float32 maps, "
        f"{(a == 0).float().mean():.0%} exact zeros; torch {torch.__version__}; median of {args.repeats}"
    )
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (multi-threaded timings mean little when "
          "the load exceeds the idle cores)")
    print(f"max |ours - scipy| = {error:.1e}, max |torchmetrics - scipy| = {error_tm:.1e}")
    threads = torch.get_num_threads()
    ours, ours_cpu = median_seconds(lambda: rank_correlation(a, b), args.repeats)
    torch.set_num_threads(1)
    ours_1, ours_1_cpu = median_seconds(lambda: rank_correlation(a, b), args.repeats)
    torch.set_num_threads(threads)
    scipy_s, scipy_cpu = median_seconds(scipy_loop, args.repeats)
    tm_s, tm_cpu = median_seconds(torchmetrics_loop, max(1, args.repeats // 2))
    print(f"{'':36s}{'wall ms':>9s}{'cpu ms':>9s}")
    for name, wall, cpu in [
        (f"rank_correlation ({threads} threads)", ours, ours_cpu),
        ("rank_correlation (1 thread)", ours_1, ours_1_cpu),
        ("scipy.stats.spearmanr loop", scipy_s, scipy_cpu),
        ("torchmetrics spearman_corrcoef loop", tm_s, tm_cpu),
    ]:
        print(f"  {name:34s}{wall * 1e3:9.1f}{cpu * 1e3:9.1f}")
    print(
        f"wall-clock speedup vs scipy: {scipy_s / ours:.2f}x ({threads} threads), {scipy_s / ours_1:.2f}x "
        f"(1 thread; cpu time {scipy_cpu / ours_1_cpu:.2f}x); vs torchmetrics: {tm_s / ours:.2f}x; "
        f"torchmetrics / scipy: {tm_s / scipy_s:.2f}x"
    )
    if torch.cuda.is_available():
        a_gpu, b_gpu = a.cuda(), b.cuda()
        gpu, _ = median_seconds(lambda: rank_correlation(a_gpu, b_gpu), args.repeats, torch.cuda.synchronize)
        print(f"  rank_correlation (cuda)            {gpu * 1e3:8.1f} ms  -> {scipy_s / gpu:.1f}x vs scipy")


if __name__ == "__main__":
    main()
