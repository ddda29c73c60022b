"""Each analysis' Markdown report (OUT/<name>.md and its figure) and the summary OUT/README.md."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saliency_monitor.metrics import PointingGameResult, mean_stderr

from . import analyses as A
from . import figures
from .gap_vs_loss import GapVsLossResult
from .pointing import pointing_pairs, pointing_se
from .verdicts import (
    SCRAMBLED,
    best_combination,
    class_sensitivity_verdict,
    gap_vs_loss_verdict,
    identity_verdict,
    layers_verdict,
    meta_gap_verdict,
    pointing_delta,
    randomization_verdict,
)

if TYPE_CHECKING:
    from .cli import Context


@dataclass(frozen=True)
class Setting:
    """What a report's header records: the model, the data, the command and the analysis' runtime."""

    model: str
    data: str
    command: str
    seconds: float

    def header(self, title: str, extra: str = "") -> list[str]:
        """The report's first lines: its title and the setting as a list."""
        return [f"# {title}", "", f"- Model: {self.model}", f"- Data: {self.data}",
                f"- Command: `{self.command}` ({self.seconds:.0f} s for this analysis)", *([extra] if extra else []),
                ""]


@dataclass(frozen=True)
class Report:
    """One analysis' written files, its Markdown body and its verdict."""

    markdown: Path
    figure: Path
    table: str
    """The markdown body below the header."""
    verdict: str
    seconds: float


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _pm(mean: float, se: float, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± se`` (both times ``scale``), or n/a for NaN."""
    if math.isnan(mean):
        return "n/a"
    se_text = "n/a" if math.isnan(se) else f"{se * scale:.{digits}f}"
    return f"{round(mean * scale, digits) + 0.0:.{digits}f} ± {se_text}"  # + 0.0: no "-0.00"


def _pct(result: PointingGameResult) -> str:
    return _pm(float(result.accuracy), pointing_se(result), 100, 1)


def _finish(out: Path, name: str, setting: Setting, title: str, body: list[str], verdict: str,
            draw: Callable[[Path], None]) -> Report:
    """Write OUT/<name>.md (header, body, verdict, figure link) and draw OUT/<name>.png."""
    out.mkdir(parents=True, exist_ok=True)
    markdown, figure = out / f"{name}.md", out / f"{name}.png"
    text = "\n".join([*body, "", f"**Verdict.** {verdict}", "", f"![{name}]({name}.png)", ""])
    markdown.write_text("\n".join(setting.header(title)) + "\n" + text)
    draw(figure)
    return Report(markdown, figure, text, verdict, setting.seconds)


# ----- identity


def write_identity(result: A.IdentityResult, out: Path, setting: Setting) -> Report:
    """OUT/identity.md: ρ (and, with boxes, the pointing game) per conv layer."""
    rows = []
    for layer in result.layers:
        mean, se, n = mean_stderr(result.correlations[layer])
        row = [f"`{layer}`", "×".join(map(str, result.kernels[layer])) or "-",
               "×".join(map(str, result.map_sizes.get(layer, ()))) or "-", _pm(mean, se), str(n)]
        if result.pointing is not None:
            a, b = (result.pointing[m][layer] for m in A.IDENTITY_METHODS)
            row += [_pct(a), _pct(b), f"{pointing_delta(result.pointing, layer):.1f}", str(pointing_pairs(a))]
        rows.append(row)
    header = ["layer", "kernel", "map", "ρ(NG identity, NG conv)", "N"]
    if result.pointing is not None:
        header += ["pointing NG (%)", "pointing NG-conv (%)", "\\|Δ\\| (pp)", "pairs"]
    body = [
        "NormGrad with the virtual identity (a 1×1 identity conv after the layer, ‖g_out‖·‖x_out‖, `norm_grad`) vs "
        "without (the layer's own weight gradient, ‖g_out‖·‖unfold(x_in)‖, `norm_grad_conv`), at each real conv "
        "layer: Spearman ρ of the maps of each image's max-predicted class upsampled to the image size; pointing "
        f"game on every present class, tolerance {result.tolerance:.1f} px (15 px at 224 px).", "",
        _md_table(header, rows), "",
        "Where a 3×3 conv's map is tiny (e.g. 2×2), each zero-padded patch covers most of the map, so "
        "‖unfold(x_in)‖ is nearly constant and `norm_grad_conv` ≈ ‖g_out‖ alone: the two maps can differ there "
        "for a reason the paper's 224 px inputs (7×7 last maps) hardly meet.", "",
        "Paper (supp. Table 4, ResNet50 / VGG16 on ImageNet val): ρ from 94.33 ± 3.09 (VGG16 features.28) to "
        "99.48 ± 0.55 (ResNet50 layer1.0.conv1), over 95% on average (§4.1); pointing-game |Δ| 0.53% ± 0.62%.",
    ]
    return _finish(out, "identity", setting, "Virtual identity check (§4.1, supp. B Table 4)", body,
                   identity_verdict(result), partial(figures.identity_figure, result))


# ----- layers


PAPER_TABLE3 = {  # (method, subset): (ResNet50 b.s., b.w., VGG16 b.s., b.w.)
    ("linear_approx", "all"): (90.2, 91.2, 86.4, 86.9), ("linear_approx", "difficult"): (81.9, 83.8, 74.5, 77.4),
    ("norm_grad_selective", "all"): (87.4, 88.7, 86.0, 86.8),
    ("norm_grad_selective", "difficult"): (77.0, 79.1, 72.6, 74.5),
}


def write_layers(result: A.LayersResult, out: Path, setting: Setting) -> Report:
    """OUT/layers.md: pointing game per layer and combination, gains, and the Table 3 summary."""
    body = [
        "Pointing game (supp. A): maps w.r.t. every class present; hit if the map's maximum lies within "
        f"{result.tolerance:.1f} px of the class's boxes (15 px at 224 px, scaled to the image size); accuracy = "
        "mean over classes of hits/(hits+misses), ± its binomial standard error; 'difficult': the class covers "
        "< 25% of the image and another class is present. Combinations (§4.2): min-max normalised layer maps, "
        "weights γ (feature spread and probe accuracy fit on the training split), sum Σγm or product Πm^γ. "
        "`center` always points at the image centre.", "",
        "## Accuracy per layer and combination (%)", "",
    ]
    for method in result.methods:
        body += [f"### {method}", "", _layer_accuracy_table(result, method), ""]
    rows = []
    for method in result.methods:
        for name in result.combinations:
            cells = [_pm(*result.gain(method, name, s), 100, 2) for s in A.SUBSETS]
            rows.append([method, name, *cells])
    body += ["## Gain over the best single layer (pp, supp. Table 6)", "",
             _md_table(["method", "weighting, mode", "gain all", "gain difficult"], rows), "",
             "## Summary (Table 3: best single layer vs best combination)", "", _layers_summary(result), "",
             "Weights γ: " + "; ".join(f"{w}: [{', '.join(f'{g:.2f}' for g in gamma.tolist())}]"
                                       for w, gamma in result.weights.items()) + ".", "",
             "Paper (Table 3, best single layer → best weighted combination, %): " + "; ".join(
                 f"{m} {s}: ResNet50 {v[0]} → {v[1]}, VGG16 {v[2]} → {v[3]}" for (m, s), v in PAPER_TABLE3.items())
             + ". Supp. Table 6: product (×) combinations are the most effective; probe-accuracy weights gain "
               "everywhere (+0.4 to +2.9 pp with ×); the earliest layer is never the best single layer."]
    return _finish(out, "layers", setting, "Layer combination (§4.2, Table 3, supp. Table 6)", body,
                   layers_verdict(result), partial(figures.layers_figure, result))


def _layer_accuracy_table(result: A.LayersResult, method: str) -> str:
    """One method's accuracy and pair count per layer, combination and the centre baseline."""
    names = [*result.layers, *result.combinations, A.CENTER]
    rows = [[f"`{n}`" if n in result.layers else n,
             "×".join(map(str, result.map_sizes[n])) if n in result.layers else "image",
             *(_pct(result.scores[method][n][s]) for s in A.SUBSETS),
             *(str(pointing_pairs(result.scores[method][n][s])) for s in A.SUBSETS)] for n in names]
    return _md_table(["map", "resolution", "all", "difficult", "N all", "N difficult"], rows)


def _layers_summary(result: A.LayersResult) -> str:
    rows = []
    for method in result.methods:
        for subset in A.SUBSETS:
            layer, top = result.best_layer(method, subset), best_combination(result, method, subset)
            rows.append([method, subset, f"`{layer}`", _pct(result.scores[method][layer][subset]), top,
                         _pct(result.scores[method][top][subset]), _pm(*result.gain(method, top, subset), 100, 2),
                         _pm(*result.gain(method, "probe_accuracy product", subset), 100, 2)])
    return _md_table(["method", "subset", "best layer", "acc. (%)", "best combination", "acc. (%)", "gain (pp)",
                      "probe_accuracy product gain (pp)"], rows)


# ----- class sensitivity


def write_class_sensitivity(result: A.ClassSensitivityResult, out: Path, setting: Setting) -> Report:
    """OUT/class_sensitivity.md: ρ(max-class map, min-class map) per method and layer, plain and meta."""
    rows = []
    for method in result.methods:
        for layer in result.layers:
            p, m = mean_stderr(result.plain[method][layer]), mean_stderr(result.meta[method][layer])
            rows.append([method, f"`{layer}`", _pm(p[0], p[1]), _pm(m[0], m[1]), str(p[2])])
    body = [
        "Spearman ρ between the maps of each image's max- and min-predicted class (near 0 is good), without and "
        f"with meta-saliency (inner step lr = {result.meta_lr:g}; the loss is the model's: cross-entropy for "
        "multiclass, BCE for multilabel data).", "",
        _md_table(["method", "layer", "ρ plain", "ρ meta", "N"], rows), "",
        "Paper (Fig. 6, VGG16, 1000 ImageNet val images): sum-aggregation methods (gradient-sum, linear "
        "approximation, Grad-CAM) are negative (anti-correlated max/min maps), excitation and guided backprop "
        "near 1; Fig. 7: meta-saliency weakens the max-min correlation for nearly all methods and layers.",
    ]
    return _finish(out, "class_sensitivity", setting, "Class sensitivity (§4.3 Fig. 6) and meta-saliency (§4.4 Fig. 7)",
                   body, class_sensitivity_verdict(result), partial(figures.class_sensitivity_figure, result))


# ----- meta-gap


def write_meta_gap(result: A.MetaGapResult, out: Path, setting: Setting) -> Report:
    """OUT/meta_gap.md: train vs val ρ(map, meta map) of the combined map per checkpoint, and per layer."""
    rows = []
    for method in result.methods:
        for e, epoch in enumerate(result.epochs):
            t, v = mean_stderr(result.train[method][A.COMBINED][e]), mean_stderr(result.val[method][A.COMBINED][e])
            rows.append([method, str(epoch), _pm(t[0], t[1]), _pm(v[0], v[1]),
                         _pm(t[0] - v[0], math.hypot(t[1], v[1])), f"{t[2]} / {v[2]}"])
    last = len(result.epochs) - 1
    layer_rows = []
    for method in result.methods:
        for layer in result.layers:
            t, v = mean_stderr(result.train[method][layer][last]), mean_stderr(result.val[method][layer][last])
            layer_rows.append([method, f"`{layer}`", _pm(t[0], t[1]), _pm(v[0], v[1]),
                               _pm(t[0] - v[0], math.hypot(t[1], v[1]))])
    body = [
        f"Spearman ρ between each image's map and its meta map (lr {result.meta_lr:g}), of its label class, on "
        "training vs validation images, per checkpoint; `combined` = uniform sum over the layers (the monitor's "
        "default). Gap = train − val (± √(SE_t² + SE_v²)).", "",
        "## Combined map, per checkpoint", "", _md_table(["method", "epoch", "train", "val", "gap", "N train / val"],
                                                         rows), "",
        f"## Per layer, last checkpoint (epoch {result.epochs[last]})", "",
        _md_table(["method", "layer", "train", "val", "gap"], layer_rows), "",
        "Paper (supp. D, Fig. 10): for NormGrad and selective NormGrad the correlation is lower on the validation "
        "split than on the training split throughout training.",
    ]
    return _finish(out, "meta_gap", setting, "Meta vs non-meta correlation, train vs val (supp. D, Fig. 10)", body,
                   meta_gap_verdict(result), partial(figures.meta_gap_figure, result))


# ----- gap vs loss


def write_gap_vs_loss(result: GapVsLossResult, out: Path, setting: Setting) -> Report:
    """OUT/gap_vs_loss.md: per checkpoint the meta gap, the loss gap, both AUCs and the per-image Spearman."""
    rows = []
    for method in result.methods:
        for epoch, s in zip(result.epochs, result.series(method), strict=True):
            rows.append([method, str(epoch), _pm(*s.meta_gap), _pm(*s.loss_gap), f"{s.auc_rho:.3f}",
                         f"{s.auc_loss:.3f}", f"{s.spearman_all:+.3f}", f"{s.spearman_val:+.3f}",
                         f"{s.counts[0]} / {s.counts[1]}"])
    loss = "softplus(−z_label), the BCE of the label logit toward 1" if result.task == "multilabel" else \
        "the cross-entropy of the label class"
    body = [
        f"Per checkpoint and image, on the meta-gap's training and validation images: ρ = Spearman ρ between the "
        f"combined map (uniform sum over {', '.join(f'`{n}`' for n in result.layers)}) of the label class and its "
        f"meta map (lr {result.meta_lr:g}), exactly as in meta-gap; loss = the meta step's own loss of that image "
        f"and class at the checkpoint ({result.task} task: {loss}; the label class is the true class the model "
        "scores highest). Meta gap = mean ρ train − val; loss gap = mean loss **val − train**, so both are "
        "positive when the model fits its training images better; each ± √(SE_t² + SE_v²). AUC: how well a score "
        "tells validation (positive) from training images, Mann–Whitney U / (n_t n_v), ties ½ (0.5 = chance). "
        "Spearman: per image, between the loss and 1 − ρ, over all images of the checkpoint and over the "
        "validation images only.", "",
        _md_table(["method", "epoch", "meta gap (ρ)", "loss gap", "AUC(1 − ρ)", "AUC(loss)", "Spearman all",
                   "Spearman val", "N train / val"], rows), "",
        "Paper: no counterpart (supp. D shows the train/val ρ gap, not how it compares with the loss). The "
        "verdict below only reports these numbers.",
    ]
    return _finish(out, "gap_vs_loss", setting, "Meta-correlation gap vs loss gap", body,
                   gap_vs_loss_verdict(result), partial(figures.gap_vs_loss_figure, result))


# ----- randomization


def write_randomization(analysis: A.RandomizationAnalysis, out: Path, setting: Setting) -> Report:
    """OUT/randomization.md: mean ρ with the trained model's map per randomisation step, per layer."""
    result = analysis.result
    keys = list(result.correlations)
    body = [
        "Cascading randomisation (Adebayo et al. 2018): parameterised modules re-initialised with their own "
        "`reset_parameters()`, cumulatively from the output end down (step k: the last k modules random; "
        f"BatchNorm: `{analysis.batchnorm}`, see saliency_monitor/analysis/sanity.py); Spearman ρ of each image's map "
        "(max-predicted class of the trained model) with the trained model's map, mean ± SE over images. "
        f"'Scrambled' = mean ρ < {SCRAMBLED}.", "",
    ]
    for layer in analysis.layers:
        rows = []
        for s, step in enumerate(result.steps):
            stats = [mean_stderr(result.correlations[k][layer][s]) for k in keys]
            rows.append([str(s), f"`{step}`", *(_pm(m, se, digits=2) for m, se, _ in stats)])
        body += [f"## Layer `{layer}` (N = {result.targets.numel()} images)", "",
                 _md_table(["step", "last randomised", *keys], rows), ""]
    body += ["## Summary", "", _randomization_summary(analysis), "",
             "Paper (§4.5, Fig. 8, supp. E Fig. 13; VGG16, qualitative): linear approximation and selective "
             "NormGrad look random after conv4_3 (the top layers randomised); meta-saliency maps randomise later "
             "(they stay correlated down to more layers)."]
    return _finish(out, "randomization", setting, "Model-weight randomisation (§4.5, Adebayo et al. 2018)", body,
                   randomization_verdict(analysis), partial(figures.randomization_figure, analysis))


def _randomization_summary(analysis: A.RandomizationAnalysis) -> str:
    result = analysis.result
    rows = []
    for layer in analysis.layers:
        for key in result.correlations:
            means = result.mean(key, layer)[1:]
            crossed = [i for i, m in enumerate(means.tolist(), 1) if m < SCRAMBLED]
            first = f"{crossed[0]} (`{result.steps[crossed[0]]}`)" if crossed else "never"
            rows.append([f"`{layer}`", key, f"{float(means.nanmean()):.2f}", f"{float(means[-1]):.2f}", first])
    return _md_table(["layer", "variant", "mean ρ over steps", "final ρ (all random)",
                      f"first step with ρ < {SCRAMBLED}"], rows)


# ----- all


WRITERS: dict[str, Callable[[Any, Path, Setting], Report]] = {
    "identity": write_identity, "layers": write_layers, "class-sensitivity": write_class_sensitivity,
    "meta-gap": write_meta_gap, "gap-vs-loss": write_gap_vs_loss, "randomization": write_randomization,
}
"""Analysis name -> the writer of its result's report."""


def write_summary(reports: dict[str, Report], skipped: dict[str, str], out: Path, command: str, seconds: float,
                  setup_seconds: float, ctx: Context) -> Path:
    """OUT/README.md: the command, the runtimes, every verdict and every table."""
    lines = ["# Reproducing \"There and Back Again\" with saliency-monitor", "",
             f"- Command: `{command}`", f"- Model: {ctx.model_text}", f"- Data: {ctx.data_text}",
             f"- Runtime: {seconds:.0f} s in all (loading {setup_seconds:.0f} s; "
             + ", ".join(f"{n} {r.seconds:.0f} s" for n, r in reports.items()) + ")"]
    if ctx.run is not None:
        lines.append(f"- The default model's one-off training (voc_finetune offline defaults, cached in "
                     f"`{ctx.run.directory}`): {ctx.run.train_seconds:.0f} s")
    lines += ["", "## Verdicts (computed from the numbers below)", ""]
    lines += [f"- **{name}**: {report.verdict}" for name, report in reports.items()]
    lines += [f"- **{name}**: not run: {reason}." for name, reason in skipped.items()]
    for name, report in reports.items():
        body = report.table.strip().splitlines()
        nested = "\n".join(f"#{line}" if line.startswith("#") else line for line in body)  # one level down
        lines += ["", "---", "", f"## {name}", "", nested]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
