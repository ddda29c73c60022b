"""The analyses of "There and Back Again" (Rebuffi et al., CVPR 2020) as pure functions.

Each analysis takes a model and :class:`~saliency_monitor.monitor.probes.ProbeBatch` images and returns
a small result dataclass of per-image (or per-pair) numbers; the writers in
:mod:`examples.reproduce.report` turn a result into a markdown table and a figure. Nothing here reads
files, parses options or draws.

==================  ========================================  ==================================
analysis            paper                                     function
==================  ========================================  ==================================
identity            §4.1, supp. B Table 4                     :func:`identity_check`
layers              §4.2, Table 3, supp. A, C, Table 6        :func:`layer_combination`
class-sensitivity   §4.3 Fig. 6, §4.4 Fig. 7                  :func:`class_sensitivity_analysis`
meta-gap            supp. D Fig. 10                           :func:`meta_gap`
randomization       §4.5, supp. E (Adebayo et al. 2018)       :func:`randomization`
==================  ========================================  ==================================

Correlations are Spearman's ρ of maps upsampled bilinearly to the image size (the paper: 224 px).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saliency_monitor import compute_saliency
from saliency_monitor.analysis.layer_weights import WEIGHTINGS, layer_weights
from saliency_monitor.analysis.sanity import RandomizationResult, cascading_randomization
from saliency_monitor.engine.layers import INPUT
from saliency_monitor.engine.model_io import eval_mode, model_logits
from saliency_monitor.metrics import (
    COMBINATIONS,
    PointingGameResult,
    class_sensitivity,
    combine_maps,
    difficult_pairs,
    map_correlation,
    max_min_targets,
)
from saliency_monitor.monitor.probes import ProbeBatch, label_max_min_targets, probe_chunks

from .pointing import add_result, center_maps, class_mean_se, pair_pointing, present_targets, scaled_tolerance

IDENTITY_METHODS = ("norm_grad", "norm_grad_conv")
LAYER_METHODS = ("linear_approx", "norm_grad_selective")
SENSITIVITY_METHODS = ("gradient", "linear_approx", "grad_cam", "norm_grad", "norm_grad_selective")
META_GAP_METHODS = ("norm_grad", "norm_grad_selective")
RANDOMIZATION_METHODS = ("linear_approx", "norm_grad_selective")
SUBSETS = ("all", "difficult")
COMBINED = "combined"
"""Meta-gap's layer-combined map: uniform weights, sum (the monitor's default combination)."""
CENTER = "center"
"""Layer analysis baseline: always point at the image centre (Fig. 3's 'center' line)."""


def conv_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in ``model``, in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


# --------------------------------------------------------------------------- identity (§4.1)


@dataclass(frozen=True)
class IdentityResult:
    """NormGrad with vs without the identity trick, per conv layer."""

    layers: tuple[str, ...]
    kernels: dict[str, tuple[int, ...]]
    """layer -> the conv's kernel size."""
    map_sizes: dict[str, tuple[int, int]]
    """layer -> (h, w) of its output (the maps' resolution before upsampling)."""
    correlations: dict[str, Tensor]
    """layer -> (N,) ρ(norm_grad, norm_grad_conv) of each image's max-predicted class."""
    pointing: dict[str, dict[str, PointingGameResult]] | None
    """method -> layer -> pointing game (all pairs); None without boxes."""
    tolerance: float


def identity_check(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str] | None = None, *,
    num_classes: int, batch_size: int = 16, tolerance: float | None = None,
) -> IdentityResult:
    """NormGrad with and without the virtual identity trick at each real conv layer.

    §4.1 compares "NormGrad saliency maps generated at 1×1 and 3×3 convolutional layers both
    with and without the virtual identity trick (4th and 5th rows in table 2)": at a real
    conv layer L with output gradient g_out, row 4 is a virtual 1×1 identity conv inserted
    *after* L, ‖g_out‖·‖x_out‖ (``norm_grad`` at L), and row 5 is L's own weight gradient,
    ‖g_out‖·‖unfold(x_in)‖ (``norm_grad_conv`` at L, no identity). Both use the gradient at
    L's output; they differ in x_out vs L's unfolded input patch. Supp. Table 4 names the
    layers so (ResNet50 ``layer1.0.conv1`` ..., VGG16 ``features.2`` ...).

    ρ uses each image's max-predicted class; the pointing game (when ``probes`` carry boxes)
    uses every present class (supp. A), tolerance default :func:`scaled_tolerance`.
    """
    layers = list(layers) if layers is not None else conv_layers(model)
    size = tuple(probes.images.shape[-2:])
    tolerance = scaled_tolerance(size[0]) if tolerance is None else tolerance
    with_boxes = probes.boxes is not None
    correlations: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    pointing: dict[str, dict[str, PointingGameResult]] = {m: {} for m in IDENTITY_METHODS}
    map_sizes: dict[str, tuple[int, int]] = {}
    for chunk, images in probe_chunks(model, probes, batch_size):
        predicted = model_logits(model, images).argmax(dim=1, keepdim=True)
        pairs, valid = present_targets(chunk) if with_boxes else (predicted.cpu(), None)
        targets = torch.cat([predicted, pairs.to(predicted.device)], dim=1) if with_boxes else predicted
        maps = compute_saliency(model, images, targets, layers, IDENTITY_METHODS)
        for layer in layers:
            a, b = maps["norm_grad"][layer][:, 0], maps["norm_grad_conv"][layer][:, 0]
            map_sizes[layer] = (a.shape[-2], a.shape[-1])
            correlations[layer].append(map_correlation(a, b, size).double().cpu())
            if with_boxes:
                masks = chunk.class_masks(num_classes)
                for method in IDENTITY_METHODS:
                    (result, _), _ = pair_pointing(maps[method][layer][:, 1:].cpu(), pairs, valid, masks, tolerance)
                    pointing[method][layer] = add_result(pointing[method].get(layer), result)
    modules = dict(model.named_modules())
    kernels = {layer: tuple(getattr(modules.get(layer), "kernel_size", ())) for layer in layers}
    rho = {k: torch.cat(v) for k, v in correlations.items()}
    return IdentityResult(tuple(layers), kernels, map_sizes, rho, pointing if with_boxes else None, tolerance)


# --------------------------------------------------------------------------- layers (§4.2)


@dataclass(frozen=True)
class LayersResult:
    """Pointing-game scores per method, for each layer, layer combination and the centre baseline."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    weights: dict[str, Tensor]
    """weighting -> (J,) normalised layer weights γ."""
    scores: dict[str, dict[str, dict[str, PointingGameResult]]]
    """method -> name -> subset -> pointing game; name: a layer, ``f"{weighting} {mode}"`` or
    ``"center"`` (the same for every method)."""
    hits: dict[str, dict[str, Tensor]]
    """method -> name -> (P,) bool hit of every (image, present class) pair."""
    pair_classes: Tensor
    """(P,) class of each pair."""
    pair_difficult: Tensor
    """(P,) bool: the pair is in the difficult subset (supp. A)."""
    tolerance: float
    map_sizes: dict[str, tuple[int, int]]
    """layer -> (h, w) of its maps before upsampling."""

    @property
    def combinations(self) -> tuple[str, ...]:
        """Every ``f"{weighting} {mode}"`` combination scored."""
        return tuple(f"{w} {m}" for m in COMBINATIONS for w in self.weights)

    def accuracy(self, method: str, name: str, subset: str) -> float:
        """Pointing-game accuracy of ``name`` (a layer, a combination or ``"center"``) on ``subset``."""
        return float(self.scores[method][name][subset].accuracy)

    def best_layer(self, method: str, subset: str) -> str:
        """The single layer with the highest accuracy (the first of ties)."""
        return max(self.layers, key=lambda layer: (self.accuracy(method, layer, subset), -self.layers.index(layer)))

    def gain(self, method: str, name: str, subset: str) -> tuple[float, float]:
        """(accuracy(name) − accuracy(best layer), its standard error), paired per class."""
        best = self.best_layer(method, subset)
        keep = self.pair_difficult if subset == "difficult" else torch.ones_like(self.pair_difficult)
        diff = self.hits[method][name].double() - self.hits[method][best].double()
        gain = self.accuracy(method, name, subset) - self.accuracy(method, best, subset)
        return gain, class_mean_se(diff[keep], self.pair_classes[keep])


def layer_combination(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str], *, num_classes: int,
    weight_probes: ProbeBatch, methods: Sequence[str] = LAYER_METHODS, batch_size: int = 16,
    tolerance: float | None = None,
) -> LayersResult:
    """Pointing game per layer and per layer combination (§4.2, Table 3, supp. Table 6).

    Maps w.r.t. every class present in each image (supp. A); a hit when the map's maximum is
    within ``tolerance`` px (default :func:`scaled_tolerance`) of the class's boxes; accuracy =
    mean over classes of hits / (hits + misses); "difficult": pairs whose class covers < 25%
    of the image while another class is present. Combinations: every weighting of
    :data:`~saliency_monitor.analysis.layer_weights.WEIGHTINGS` × {sum, product} of the min-max normalised
    layer maps; ``feature_spread`` and ``probe_accuracy`` weights are fit on the features of
    ``weight_probes`` (training images: the test images are not used to choose weights).
    """
    if probes.boxes is None:
        raise ValueError("Expected `probes` with object boxes for the pointing game, but got probes without boxes.")
    layers = list(layers)
    size = tuple(probes.images.shape[-2:])
    tolerance = scaled_tolerance(size[0]) if tolerance is None else tolerance
    weights = fit_layer_weights(model, weight_probes, layers, num_classes=num_classes, batch_size=batch_size)
    scores: dict[str, dict[str, dict[str, PointingGameResult]]] = {m: {} for m in methods}
    hits: dict[str, dict[str, list[Tensor]]] = {m: {} for m in methods}
    classes, difficult = [], []
    for chunk, images in probe_chunks(model, probes, batch_size):
        targets, valid = present_targets(chunk)
        masks = chunk.class_masks(num_classes)
        maps = compute_saliency(model, images, targets.to(images.device), layers, list(methods))
        named = {m: {layer: maps[m][layer].cpu() for layer in layers} for m in methods}
        map_sizes = {layer: tuple(named[methods[0]][layer].shape[-2:]) for layer in layers}
        for method in methods:
            per_layer = dict(named[method])
            for weighting, gamma in weights.items():
                for mode in COMBINATIONS:
                    named[method][f"{weighting} {mode}"] = combine_maps(per_layer, gamma.tolist(), size=size, mode=mode)
            named[method][CENTER] = center_maps(targets.shape, size)
            for name, per_name in named[method].items():
                result, pair_hits = pair_pointing(per_name, targets, valid, masks, tolerance)
                scores[method][name] = {s: add_result(scores[method].get(name, {}).get(s), result[i]) for i, s in
                                        enumerate(SUBSETS)}
                hits[method].setdefault(name, []).append(pair_hits)
        flat_targets = targets[valid][:, None]
        pair_masks = masks[valid.nonzero()[:, 0]]
        classes.append(targets[valid])
        difficult.append(difficult_pairs(flat_targets, pair_masks)[:, 0])
    return LayersResult(
        tuple(methods), tuple(layers), weights, scores,
        {m: {k: torch.cat(v) for k, v in per.items()} for m, per in hits.items()},
        torch.cat(classes), torch.cat(difficult), tolerance, map_sizes,
    )


def fit_layer_weights(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str], *, num_classes: int, batch_size: int = 16
) -> dict[str, Tensor]:
    """γ (J,) for every weighting; feature spread and probe accuracy from ``probes``' features."""
    features = layer_features(model, probes, layers, batch_size=batch_size)
    labels = probes.label_matrix(num_classes) if probes.task == "multilabel" else torch.tensor(
        [c[0] for c in probes.classes])
    return {
        scheme: layer_weights(scheme, features=features, **({"labels": labels} if scheme == "probe_accuracy" else {}))
        for scheme in WEIGHTINGS
    }


def layer_features(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str], *, batch_size: int = 16
) -> list[Tensor]:
    """Spatial means (M, K) of each layer's activation (eval mode, no grad), in ``layers`` order."""
    modules = dict(model.named_modules())
    pooled: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    handles = []

    def hook(name: str) -> Callable[[nn.Module, object, Tensor], None]:
        return lambda _m, _a, out: pooled[name].append(out.detach().float().mean(dim=(2, 3)).cpu())

    try:
        for layer in layers:
            if layer != INPUT:
                handles.append(modules[layer].register_forward_hook(hook(layer)))
        for _chunk, images in probe_chunks(model, probes, batch_size):
            if INPUT in pooled:
                pooled[INPUT].append(images.float().mean(dim=(2, 3)).cpu())
            with torch.no_grad(), eval_mode(model):
                model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(pooled[layer]) for layer in layers]


# --------------------------------------------------------------------------- class sensitivity (§4.3-4.4)


@dataclass(frozen=True)
class ClassSensitivityResult:
    """ρ(max-class map, min-class map) per method and layer, plain and meta."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    plain: dict[str, dict[str, Tensor]]
    """method -> layer -> (N,) ρ(map of the max-predicted class, map of the min-predicted class)."""
    meta: dict[str, dict[str, Tensor]]
    """The same with meta-saliency maps."""
    meta_lr: float


def class_sensitivity_analysis(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str], *, methods: Sequence[str] = SENSITIVITY_METHODS,
    meta_lr: float = 0.002, batch_size: int = 16,
) -> ClassSensitivityResult:
    """ρ between the max- and min-class maps per method and layer, plain and meta (Figs. 6, 7).

    The meta step's loss follows ``probes.task`` (multiclass: cross-entropy; multilabel: BCE).
    """
    size = tuple(probes.images.shape[-2:])
    plain: dict[str, dict[str, list[Tensor]]] = {m: {layer: [] for layer in layers} for m in methods}
    meta: dict[str, dict[str, list[Tensor]]] = {m: {layer: [] for layer in layers} for m in methods}
    for chunk, images in probe_chunks(model, probes, batch_size):
        targets = max_min_targets(model_logits(model, images))
        for table, lr in ((plain, None), (meta, meta_lr)):
            maps = compute_saliency(model, images, targets, list(layers), list(methods), meta_lr=lr, task=chunk.task)
            for method in methods:
                for layer in layers:
                    m = maps[method][layer]
                    table[method][layer].append(class_sensitivity(m[:, 0], m[:, 1], size).double().cpu())
    return ClassSensitivityResult(tuple(methods), tuple(layers), _cat_nested(plain), _cat_nested(meta), meta_lr)


# --------------------------------------------------------------------------- meta-gap (supp. D)


@dataclass(frozen=True)
class MetaGapResult:
    """ρ(map, meta map) on training vs validation images, per checkpoint."""

    epochs: tuple[int, ...]
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    """The layers, then ``"combined"``."""
    train: dict[str, dict[str, Tensor]]
    """method -> layer -> (E, N_train) ρ(map, meta map) of the label class, per checkpoint."""
    val: dict[str, dict[str, Tensor]]
    """The same on the validation images (E, N_val)."""
    meta_lr: float


def meta_gap(
    checkpoints: Sequence[tuple[int, nn.Module]] | Iterator[tuple[int, nn.Module]], train: ProbeBatch,
    val: ProbeBatch, layers: Sequence[str], *, methods: Sequence[str] = META_GAP_METHODS, meta_lr: float = 0.002,
    batch_size: int = 16,
) -> MetaGapResult:
    """Per checkpoint (epoch, model): mean ρ(map, meta map) on training vs validation images.

    Supp. D: the meta step barely changes a seen (training) image's map, so the correlation is
    higher on training images than on unseen ones; the gap (train − val) grows as the model
    overfits. Maps explain each image's label class (multilabel: its present class with the
    highest logit), as the monitor does; ``"combined"`` is the uniform sum over ``layers``.
    """
    epochs: list[int] = []
    rows: dict[str, list[dict[str, dict[str, Tensor]]]] = {"train": [], "val": []}
    for epoch, model in checkpoints:
        epochs.append(epoch)
        for split, probes in (("train", train), ("val", val)):
            rows[split].append(_meta_correlations(model, probes, list(layers), list(methods), meta_lr, batch_size))
    names = (*layers, COMBINED)
    stacked = {
        split: {m: {n: torch.stack([row[m][n] for row in per]) for n in names} for m in methods}
        for split, per in rows.items()
    }
    return MetaGapResult(tuple(epochs), tuple(methods), names, stacked["train"], stacked["val"], meta_lr)


def _meta_correlations(
    model: nn.Module, probes: ProbeBatch, layers: list[str], methods: list[str], meta_lr: float, batch_size: int
) -> dict[str, dict[str, Tensor]]:
    size = tuple(probes.images.shape[-2:])
    out: dict[str, dict[str, list[Tensor]]] = {m: {n: [] for n in (*layers, COMBINED)} for m in methods}
    for chunk, images in probe_chunks(model, probes, batch_size):
        targets = label_targets(model_logits(model, images), chunk)
        plain = compute_saliency(model, images, targets, layers, methods)
        meta = compute_saliency(model, images, targets, layers, methods, meta_lr=meta_lr, task=chunk.task)
        for m in methods:
            for layer in layers:
                out[m][layer].append(map_correlation(plain[m][layer][:, 0], meta[m][layer][:, 0], size).double().cpu())
            a, b = (combine_maps(maps[m], size=size, mode="sum")[:, 0] for maps in (plain, meta))
            out[m][COMBINED].append(map_correlation(a, b, None).double().cpu())
    return _cat_nested(out)


def label_targets(logits: Tensor, probes: ProbeBatch) -> Tensor:
    """(B, 1) each image's label class: of its classes, the one with the highest logit."""
    return label_max_min_targets(logits, probes, probes.task)[0][:, :1]


# --------------------------------------------------------------------------- randomization (§4.5)


@dataclass(frozen=True)
class RandomizationAnalysis:
    """The cascading-randomisation result and the settings it ran with."""

    result: RandomizationResult
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    meta_lr: float | None
    batchnorm: str


def randomization(
    model: nn.Module, probes: ProbeBatch, layers: Sequence[str], *, methods: Sequence[str] = RANDOMIZATION_METHODS,
    meta_lr: float | None = 0.002, seed: int = 0, batchnorm: str = "reset",
) -> RandomizationAnalysis:
    """Cascading randomisation (:func:`saliency_monitor.analysis.sanity.cascading_randomization`) of maps of
    each image's max-predicted class (by the trained model), plain and meta."""
    ((_, images),) = probe_chunks(model, probes, len(probes))
    targets = model_logits(model, images).argmax(dim=1)
    result = cascading_randomization(
        model, images, targets, layer=list(layers), method=list(methods), meta_lr=meta_lr, seed=seed,
        batchnorm=batchnorm, task=probes.task,
    )
    return RandomizationAnalysis(result, tuple(methods), tuple(layers), meta_lr, batchnorm)


def _cat_nested(table: Mapping[str, Mapping[str, list[Tensor]]]) -> dict[str, dict[str, Tensor]]:
    """Concatenate the per-chunk tensors of a method -> name -> chunks table."""
    return {m: {k: torch.cat(v) for k, v in per.items()} for m, per in table.items()}
