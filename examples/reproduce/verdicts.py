"""The paper's claims checked against an analysis' numbers: one sentence per claim, 'holds' or 'does not hold'."""

from __future__ import annotations

import math

import torch

from saliency_monitor.metrics import PointingGameResult, mean_stderr

from . import analyses as A
from .gap_vs_loss import GapVsLossResult, spearman

SCRAMBLED = 0.3
"""Randomisation: a mean ρ below this counts as 'scrambled' (the paper judges by eye)."""


def pointing_delta(pointing: dict[str, dict[str, PointingGameResult]], layer: str) -> float:
    """|Δ| (pp) between the pointing-game accuracies with and without the identity trick at ``layer``."""
    a, b = (pointing[m][layer] for m in A.IDENTITY_METHODS)
    return abs(float(a.accuracy) - float(b.accuracy)) * 100


def identity_verdict(result: A.IdentityResult) -> str:
    """Supp. Table 4: ρ ≥ 0.94 at every conv layer; pointing-game |Δ| within the paper's 0.53 ± 2 × 0.62 pp."""
    means = {layer: mean_stderr(result.correlations[layer])[0] for layer in result.layers}
    deltas = [] if result.pointing is None else [pointing_delta(result.pointing, layer) for layer in result.layers]
    low = min(means, key=lambda k: means[k])
    below = [k for k, v in means.items() if not v >= 0.94]
    verdict = (f"{'Holds' if not below else 'Does not hold'}: mean ρ ≥ 0.94 at {len(means) - len(below)} of "
               f"{len(means)} conv layers (lowest {means[low]:.3f} at `{low}`; the paper's lowest: 0.943).")
    if deltas:
        mean_delta, sd = sum(deltas) / len(deltas), torch.tensor(deltas).std().item() if len(deltas) > 1 else 0.0
        verdict += (f" Pointing game: mean |Δ| = {mean_delta:.2f} ± {sd:.2f} pp over layers (paper 0.53 ± 0.62): "
                    f"{'holds' if mean_delta <= 0.53 + 2 * 0.62 else 'does not hold'} (criterion ≤ 1.77 pp).")
    return verdict


def best_combination(result: A.LayersResult, method: str, subset: str) -> str:
    """The combination with the largest gain over the best single layer (the first of ties)."""
    return max(result.combinations, key=lambda n: (result.gain(method, n, subset)[0], -result.combinations.index(n)))


def layers_verdict(result: A.LayersResult) -> str:
    """Table 3 and supp. Table 6 / C: combinations beat single layers, products and probe accuracy win."""
    cases = [(m, s) for m in result.methods for s in A.SUBSETS
             if not math.isnan(float(result.scores[m][result.layers[0]][s].accuracy))]
    tops = {c: best_combination(result, *c) for c in cases}
    beats = [c for c in cases if result.gain(c[0], tops[c], c[1])[0] > 0]
    significant = [c for c in beats if result.gain(c[0], tops[c], c[1])[0] > 2 * result.gain(c[0], tops[c], c[1])[1]]
    product = [c for c in cases if tops[c].endswith("product")]
    probe = [c for c in cases if result.gain(c[0], "probe_accuracy product", c[1])[0] > 0]
    first = [c for c in cases if result.best_layer(*c) == result.layers[0]]

    def share(part: list[tuple[str, str]], claim: str) -> str:
        holds = "holds" if len(part) == len(cases) else "does not hold"
        return f"{claim} in {len(part)} of {len(cases)} (method, subset) cases ({holds})"

    return "; ".join([
        share(beats, "a combination beats the best single layer (Table 3)")
        + f", by more than 2 SE in {len(significant)}",
        share(product, "the best combination is a product (Table 6)"),
        share(probe, "the probe-accuracy product gains (Table 6)"),
        f"the earliest layer is the best single layer in {len(first)} of {len(cases)} cases "
        f"(supp. C: never; {'holds' if not first else 'does not hold'})",
    ]) + "."


def class_sensitivity_verdict(result: A.ClassSensitivityResult) -> str:
    """Fig. 7: meta weakens |ρ| for most pairs; Fig. 6: linear approximation and Grad-CAM are negative."""
    means = {(m, layer, kind): mean_stderr(table[m][layer])[0] for m in result.methods for layer in result.layers
             for kind, table in (("plain", result.plain), ("meta", result.meta))}
    pairs = [(m, layer) for m in result.methods for layer in result.layers
             if not (math.isnan(means[m, layer, "plain"]) or math.isnan(means[m, layer, "meta"]))]
    weaker = [(m, layer) for m, layer in pairs if abs(means[m, layer, "meta"]) < abs(means[m, layer, "plain"])]
    parts = [f"meta weakens |ρ| for {len(weaker)} of {len(pairs)} method × layer pairs (where both are defined) "
             f"({'holds' if len(weaker) >= 0.75 * len(pairs) else 'does not hold'}; criterion ≥ 75%)"]
    for method in ("linear_approx", "grad_cam"):
        if method in result.methods:
            defined = [layer for layer in result.layers if not math.isnan(means[method, layer, "plain"])]
            negative = sum(means[method, layer, "plain"] < 0 for layer in defined)
            parts.append(f"{method} (plain) negative at {negative} of {len(defined)} layers "
                         f"({'holds' if negative > len(defined) / 2 else 'does not hold'}; criterion: most layers)")
    return "; ".join(parts) + "."


def meta_gap_verdict(result: A.MetaGapResult) -> str:
    """Supp. D: train > val at most trained checkpoints, and by more than 2 SE at the last one."""
    last = len(result.epochs) - 1
    parts = []
    for method in result.methods:
        gaps = [mean_stderr(result.train[method][A.COMBINED][e])[0] - mean_stderr(result.val[method][A.COMBINED][e])[0]
                for e in range(len(result.epochs))]
        trained = [g for epoch, g in zip(result.epochs, gaps, strict=True) if epoch > 0] or gaps
        t, v = mean_stderr(result.train[method][A.COMBINED][last]), mean_stderr(result.val[method][A.COMBINED][last])
        se = math.hypot(t[1], v[1])
        positive = sum(g > 0 for g in trained)
        holds = positive >= 0.75 * len(trained) and gaps[-1] > 2 * se
        parts.append(f"{method}: train > val at {positive} of {len(trained)} trained checkpoints, last gap "
                     f"{gaps[-1]:+.3f} ± {se:.3f} ({'holds' if holds else 'does not hold'}; criterion: ≥ 75% of "
                     "checkpoints and last gap > 2 SE)")
    return "; ".join(parts) + "."


def randomization_verdict(analysis: A.RandomizationAnalysis) -> str:
    """Per method: scrambled once all is random (every layer), and meta later (≥ 75% of layers)."""
    result, layers, claims = analysis.result, analysis.layers, []
    for method in analysis.methods:
        final = [float(result.mean(method, layer)[-1]) for layer in layers]
        low = sum(f < SCRAMBLED for f in final)
        claims.append(f"{method} scrambled (final mean ρ < {SCRAMBLED}) at {low} of {len(layers)} layers, final ρ "
                      f"{min(final):.2f} to {max(final):.2f} ({'holds' if low == len(layers) else 'does not hold'})")
        if f"{method}+meta" in result.correlations:
            diffs = [float(result.mean(f"{method}+meta", layer)[1:].nanmean()
                           - result.mean(method, layer)[1:].nanmean()) for layer in layers]
            later = sum(d > 0 for d in diffs)
            holds = later >= 0.75 * len(layers) and sum(diffs) > 0
            claims.append(f"{method}+meta randomises later (higher mean ρ over the steps) at {later} of {len(layers)} "
                          f"layers, by {sum(diffs) / len(diffs):+.3f} on average "
                          f"({'holds' if holds else 'does not hold'}; criterion ≥ 75% of layers)")
    return "; ".join(claims) + "."


def gap_vs_loss_verdict(result: GapVsLossResult) -> str:
    """No paper claim: how closely the meta gap follows the loss gap, and which score separates train from val."""
    parts = []
    for method in result.methods:
        stats = result.series(method)
        meta, loss = (torch.tensor([getattr(s, k)[0] for s in stats]) for k in ("meta_gap", "loss_gap"))
        both = sum(s.meta_gap[0] > 2 * s.meta_gap[1] and s.loss_gap[0] > 2 * s.loss_gap[1] for s in stats)
        only_meta = sum(s.meta_gap[0] > 2 * s.meta_gap[1] and not s.loss_gap[0] > 2 * s.loss_gap[1] for s in stats)
        wins = [s for s in stats if s.auc_rho > s.auc_loss]
        best = max(stats, key=lambda s: s.auc_rho - s.auc_loss if not math.isnan(s.auc_rho - s.auc_loss) else -math.inf)
        per_all = torch.tensor([s.spearman_all for s in stats]).nanmean()
        per_val = torch.tensor([s.spearman_val for s in stats]).nanmean()
        parts.append(
            f"{method}: the meta gap follows the loss gap with Spearman {spearman(meta, loss):+.2f} over {len(stats)} "
            f"checkpoints; both gaps > 2 SE at {both}, the meta gap alone at {only_meta}; AUC(1 − ρ) > AUC(loss) at "
            f"{len(wins)} of {len(stats)} checkpoints (largest difference {best.auc_rho - best.auc_loss:+.2f}: "
            f"{best.auc_rho:.2f} vs {best.auc_loss:.2f}); per-image Spearman(loss, 1 − ρ) averages "
            f"{float(per_all):+.2f} over all images and {float(per_val):+.2f} over validation images"
        )
    return "; ".join(parts) + "."
