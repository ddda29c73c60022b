"""Each analysis' matplotlib figure (Agg backend), drawn from its result and saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from saliency_monitor.metrics import mean_stderr

from . import analyses as A

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .gap_vs_loss import GapVsLossResult


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def identity_figure(result: A.IdentityResult, path: Path) -> None:
    """ρ per conv layer (bars with SE) and, with boxes, both methods' pointing-game accuracy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1 + (result.pointing is not None), 1, figsize=(max(6, 0.45 * len(result.layers)), 6.5),
                             squeeze=False)
    x = range(len(result.layers))
    stats = [mean_stderr(result.correlations[k]) for k in result.layers]
    axes[0, 0].bar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], color="tab:blue")
    axes[0, 0].axhline(0.94, color="k", ls="--", lw=1, label="paper's lowest (0.94)")
    axes[0, 0].set(ylabel="Spearman ρ", title="NormGrad with vs without the identity trick", ylim=(0, 1.05))
    axes[0, 0].legend(loc="lower left")
    if result.pointing is not None:
        for i, method in enumerate(A.IDENTITY_METHODS):
            acc = [float(result.pointing[method][k].accuracy) * 100 for k in result.layers]
            axes[1, 0].bar([j + (i - 0.5) * 0.4 for j in x], acc, width=0.4, label=method)
        axes[1, 0].set(ylabel="pointing game (%)")
        axes[1, 0].legend(loc="lower left")
    for ax in axes[:, 0]:
        ax.set_xticks(list(x), result.layers, rotation=70, fontsize=7)
    _save(fig, path)


def layers_figure(result: A.LayersResult, path: Path) -> None:
    """Per method: accuracy per layer, per subset, against the best combination's (dotted)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(result.methods), figsize=(5.5 * len(result.methods), 4.2), squeeze=False)
    for ax, method in zip(axes[0], result.methods, strict=True):
        for subset, style in zip(A.SUBSETS, ("-o", "--s"), strict=True):
            acc = [result.accuracy(method, layer, subset) * 100 for layer in result.layers]
            line, = ax.plot(range(len(acc)), acc, style, label=f"layers, {subset}")
            combos = {n: result.accuracy(method, n, subset) * 100 for n in result.combinations}
            top = max(combos, key=combos.get)
            ax.axhline(combos[top], color=line.get_color(), ls=":", label=f"best combination ({top}), {subset}")
        ax.set_xticks(range(len(result.layers)), result.layers, rotation=30)
        ax.set(title=method, ylabel="pointing game (%)")
        ax.legend(fontsize=7)
    _save(fig, path)


def class_sensitivity_figure(result: A.ClassSensitivityResult, path: Path) -> None:
    """ρ(max class, min class) per layer for each method: plain (left) and meta (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, table, title in ((axes[0], result.plain, "plain (Fig. 6)"), (axes[1], result.meta, "meta (Fig. 7)")):
        for method in result.methods:
            stats = [mean_stderr(table[method][layer]) for layer in result.layers]
            ax.errorbar(range(len(stats)), [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                        capsize=2, label=method)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(result.layers)), result.layers, rotation=30)
        ax.set(title=title, ylabel="ρ(max class, min class)")
    axes[1].legend(fontsize=7)
    _save(fig, path)


def meta_gap_figure(result: A.MetaGapResult, path: Path) -> None:
    """Per method: the combined map's ρ(map, meta map) per epoch, train vs val, ± SE bands."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(result.methods), figsize=(5.5 * len(result.methods), 4), squeeze=False)
    for ax, method in zip(axes[0], result.methods, strict=True):
        for split, table in (("train", result.train), ("val", result.val)):
            stats = [mean_stderr(row) for row in table[method][A.COMBINED]]
            mean = torch.tensor([s[0] for s in stats])
            se = torch.tensor([s[1] for s in stats]).nan_to_num(0)
            ax.plot(result.epochs, mean, marker="o", label=split)
            ax.fill_between(result.epochs, mean - se, mean + se, alpha=0.2)
        ax.set(title=f"{method} (combined)", xlabel="epoch", ylabel="ρ(map, meta map)")
        ax.legend()
    _save(fig, path)


def randomization_figure(analysis: A.RandomizationAnalysis, path: Path) -> None:
    """Per layer: mean ρ with the trained model's map at each randomisation step, per variant."""
    result = analysis.result
    plt = _pyplot()
    fig, axes = plt.subplots(len(analysis.layers), 1, figsize=(max(8, 0.22 * len(result.steps)),
                                                               3.6 * len(analysis.layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], analysis.layers, strict=True):
        for key in result.correlations:
            ax.plot(range(len(result.steps)), result.mean(key, layer), marker=".", ls="--" if "+meta" in key
                    else "-", label=key)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(result.steps)), result.steps, rotation=90, fontsize=6)
        ax.set(title=f"cascading randomisation, maps at {layer}", ylabel="ρ with the trained model's map")
        ax.legend(fontsize=7)
    _save(fig, path)


def gap_vs_loss_figure(result: GapVsLossResult, path: Path) -> None:
    """Per method: meta gap (left axis) and loss gap (right axis) per epoch ± SE; below, both AUCs."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(result.methods), figsize=(5.5 * len(result.methods), 7), squeeze=False)
    for (top, bottom), method in zip(axes.T, result.methods, strict=True):
        stats = result.series(method)
        loss_axis = top.twinx()
        for ax, key, color, label in ((top, "meta_gap", "tab:blue", "meta gap ρ train − val"),
                                      (loss_axis, "loss_gap", "tab:red", "loss gap val − train")):
            mean = torch.tensor([getattr(s, key)[0] for s in stats])
            se = torch.tensor([getattr(s, key)[1] for s in stats]).nan_to_num(0)
            ax.plot(result.epochs, mean, marker="o", color=color, label=label)
            ax.fill_between(result.epochs, mean - se, mean + se, color=color, alpha=0.2)
            ax.set_ylabel(label, color=color)
        top.axhline(0, color="k", lw=0.8)
        top.set(title=f"{method} (combined map)", xlabel="epoch")
        bottom.plot(result.epochs, [s.auc_rho for s in stats], marker="o", label="AUC(1 − ρ)")
        bottom.plot(result.epochs, [s.auc_loss for s in stats], marker="s", label="AUC(loss)")
        bottom.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
        bottom.set(xlabel="epoch", ylabel="AUC, val vs train images", ylim=(0, 1.02))
        bottom.legend(fontsize=7)
    _save(fig, path)
