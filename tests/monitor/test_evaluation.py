"""``evaluate_probes`` and ``summarize`` against independent per-image references.

The references never touch evaluation.py's code paths: the model's logits are read one image
at a time and the three targets picked by hand; maps come from ``compute_saliency`` on one
image at a time; every number is then computed literally in float64 numpy/scipy: bilinear
upsampling (``F.interpolate``), Spearman (``scipy.stats.spearmanr``), the §4.2 layer
combination, total variation by a double loop over pixels, VOC boxes rasterised pixel by
pixel and the pointing game by brute force over mask pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine import saliency_options
from saliency_monitor.monitor.evaluation import (
    DriftReference,
    EvaluationPlan,
    LabelMaps,
    SplitEvaluation,
    evaluate_probes,
    summarize,
)
from saliency_monitor.monitor.keys import COMBINED, MetricKey, column_name
from saliency_monitor.monitor.probes import ProbeBatch
from tests._trace import assert_same, snapshot

NUM_CLASSES = 5
HEIGHT, WIDTH = 16, 12  # not square: catches swapped axes
NUM_PROBES = 5
LAYERS = ("bn1", "down", "conv3")  # 16x12, 8x6, 8x6
METHODS = ("norm_grad_selective", "norm_grad")
META_LR = 0.05
TOLERANCE = 3.0
ATOL = 1e-6

Values = dict[str, np.ndarray]


# --------------------------------------------------------------------------- model and probes


class TinyNet(nn.Module):
    """conv/bn/relu, a stride-2 conv, global pool and a linear head; float64."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu3(self.conv3(self.relu2(self.down(x))))
        return self.fc(self.pool(x).flatten(1))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.bn1.weight.copy_(1 + 0.3 * torch.randn(6, generator=generator))
        model.bn1.bias.copy_(0.2 * torch.randn(6, generator=generator))
        model.bn1.running_mean.copy_(0.2 * torch.randn(6, generator=generator))
        model.bn1.running_var.copy_(0.5 + torch.rand(6, generator=generator))
    return model.double().eval()


def make_images(seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_PROBES, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)


def class_order(model: nn.Module, image: Tensor) -> list[int]:
    """Classes by decreasing logit of one image."""
    scores = reference_logits(model, image).tolist()
    return sorted(range(NUM_CLASSES), key=lambda c: -scores[c])


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def multiclass_probes() -> ProbeBatch:
    return ProbeBatch(images=make_images(), classes=((2,), (0,), (4,), (2,), (1,)), task="multiclass")


@pytest.fixture(scope="module")
def multilabel_probes(model: nn.Module) -> ProbeBatch:
    """Classes chosen by rank of the model's logits; regions of every kind.

    probe 0: true = 2nd and 4th ranked (label: the 2nd, not the max-predicted class), a box each;
    probe 1: true = 1st and 3rd, only the 3rd has a box (label region empty: NaN);
    probe 2: true = last ranked, no boxes at all (K = 0: NaN);
    probe 3: true = 2nd, 3rd and 5th; the label's box is the whole image, a fractional box for the 5th;
    probe 4: true = 4th ranked, a 2x2 box in the bottom-right corner.
    """
    images = make_images()
    orders = [class_order(model, image) for image in images]
    ranks = [(1, 3), (0, 2), (4,), (1, 2, 4), (3,)]
    classes = tuple(tuple(order[r] for r in rank) for order, rank in zip(orders, ranks))
    o = orders
    boxes = (
        torch.tensor([[2.0, 3.0, 5.0, 7.0], [8.0, 10.0, 12.0, 16.0]]),
        torch.tensor([[1.0, 1.0, 12.0, 16.0]]),
        torch.zeros(0, 4),
        torch.tensor([[1.0, 1.0, 12.0, 16.0], [2.5, 3.5, 4.2, 6.8]]),
        torch.tensor([[11.0, 15.0, 12.0, 16.0]]),
    )
    box_classes = (
        torch.tensor([o[0][1], o[0][3]]),
        torch.tensor([o[1][2]]),
        torch.zeros(0, dtype=torch.int64),
        torch.tensor([o[3][1], o[3][4]]),
        torch.tensor([o[4][3]]),
    )
    return ProbeBatch(images=images, classes=classes, task="multilabel", boxes=boxes, box_classes=box_classes)


def settings_for(
    task: str, *, meta_lr: float | None = None, combine_weights: str = "uniform", combine_mode: str = "sum",
    batch_size: int = 16,
) -> EvaluationPlan:
    return EvaluationPlan.of(
        saliency_options(LAYERS, METHODS, task=task), meta_lr=meta_lr, combine_weights=combine_weights,
        combine_mode=combine_mode, pointing_tolerance=TOLERANCE, batch_size=batch_size,
    )


def named(values: dict[MetricKey, Tensor]) -> dict[str, Tensor]:
    """Per-probe values under their ``metric/method/layer`` names."""
    return {column_name(key): value for key, value in values.items()}


# --------------------------------------------------------------------------- literal references


def reference_logits(model: nn.Module, image: Tensor) -> Tensor:
    """(C,) float64 logits of one image (the model is in eval mode)."""
    with torch.no_grad():
        return model(image[None].double())[0]


def reference_targets(scores: list[float], classes: tuple[int, ...]) -> list[int]:
    """[label (the true class with the highest score), max-predicted, min-predicted]."""
    label = max(classes, key=lambda c: scores[c])
    return [label, max(range(len(scores)), key=lambda c: scores[c]), min(range(len(scores)), key=lambda c: scores[c])]


def reference_probabilities(scores: list[float], task: str) -> list[float]:
    if task == "multilabel":
        return [1 / (1 + math.exp(-s)) for s in scores]
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def upsample(saliency: Tensor) -> np.ndarray:
    """(h, w) -> (HEIGHT, WIDTH) float64, bilinear, align_corners=False, in the map's own dtype.

    Maps are float32 by contract (``compute_saliency``), and so is their upsampling: a float64
    upsampling would break near-ties differently and move Spearman's ρ by ~1e-6.
    """
    resized = F.interpolate(saliency[None, None], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    return resized[0, 0].double().numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic)


def combined_map(layer_maps: list[np.ndarray], weighting: str, mode: str) -> np.ndarray:
    """§4.2: min-max normalise each upsampled map, Σ γ_j m_j or Π m_j^γ_j."""
    num = len(layer_maps)
    gammas = [1 / num] * num if weighting == "uniform" else [j / sum(range(1, num + 1)) for j in range(1, num + 1)]
    out = np.zeros((HEIGHT, WIDTH)) if mode == "sum" else np.ones((HEIGHT, WIDTH))
    for gamma, m in zip(gammas, layer_maps):
        span = m.max() - m.min()
        normalised = np.zeros_like(m) if span == 0 else (m - m.min()) / span
        out = out + gamma * normalised if mode == "sum" else out * normalised**gamma
    return out


def total_variation(m: np.ndarray) -> float:
    """Literal: standardise, then sum |vertical| + |horizontal| neighbour differences / (H W)."""
    rows, cols = m.shape
    mean = sum(float(v) for v in m.ravel()) / (rows * cols)
    spread = sum(abs(float(v) - mean) for v in m.ravel()) / (rows * cols)
    z = [[(float(m[r, c]) - mean) / max(spread, 1e-6) for c in range(cols)] for r in range(rows)]
    total = 0.0
    for r in range(rows):
        for c in range(cols):
            if r + 1 < rows:
                total += abs(z[r + 1][c] - z[r][c])
            if c + 1 < cols:
                total += abs(z[r][c + 1] - z[r][c])
    return total / (rows * cols)


def box_mask(boxes: Tensor, box_classes: Tensor, label: int) -> np.ndarray:
    """Pixel (r, c) is in a VOC box iff xmin-1 <= c <= xmax-1 and ymin-1 <= r <= ymax-1."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for (xmin, ymin, xmax, ymax), cls in zip(boxes.tolist(), box_classes.tolist()):
        for r in range(HEIGHT):
            for c in range(WIDTH):
                if cls == label and xmin - 1 <= c <= xmax - 1 and ymin - 1 <= r <= ymax - 1:
                    mask[r, c] = True
    return mask


def pointing_hit(upsampled: np.ndarray, mask: np.ndarray) -> float:
    """1 if a mask pixel lies < TOLERANCE from the first maximum (or is it), 0 if not, NaN without mask."""
    if not mask.any():
        return math.nan
    py, px = divmod(int(np.argmax(upsampled)), WIDTH)
    for r, c in zip(*np.nonzero(mask)):
        if math.hypot(r - py, c - px) < TOLERANCE or (r, c) == (py, px):
            return 1.0
    return 0.0


def probe_maps(
    model: nn.Module, image: Tensor, targets: list[int], settings: EvaluationPlan, meta: bool
) -> dict[str, dict[str, Tensor]]:
    """maps[method][layer] -> (3, h, w) of one image, combined (3, H, W) float64 added."""
    maps = compute_saliency(
        model, image[None], [targets], layers=list(LAYERS), methods=list(METHODS),
        meta_lr=META_LR if meta else None, task=settings.task,
    )
    out: dict[str, dict[str, Tensor]] = {}
    for method, per_layer in maps.items():
        out[method] = {layer: t[0] for layer, t in per_layer.items()}
        out[method][COMBINED] = torch.from_numpy(np.stack([
            combined_map(
                [upsample(t[0, k]) for t in per_layer.values()], settings.combine_weights, settings.combine_mode
            )
            for k in range(3)
        ]))
    return out


def reference(
    model: nn.Module, probes: ProbeBatch, settings: EvaluationPlan, previous: DriftReference | None = None
) -> tuple[Values, list[list[int]], list[list[float]], dict[str, dict[str, list[Tensor]]]]:
    """Per-probe values, targets, probabilities and label maps, one image at a time."""
    meta = settings.meta_lr is not None
    values: dict[str, list[float]] = {}
    all_targets, all_probabilities = [], []
    label_maps: dict[str, dict[str, list[Tensor]]] = {m: {layer: [] for layer in (*LAYERS, COMBINED)} for m in METHODS}
    for n in range(len(probes)):
        image = probes.images[n]
        scores = reference_logits(model, image).tolist()
        targets = reference_targets(scores, probes.classes[n])
        all_targets.append(targets)
        all_probabilities.append(reference_probabilities(scores, probes.task))
        plain = probe_maps(model, image, targets, settings, meta=False)
        metas = probe_maps(model, image, targets, settings, meta=True) if meta else None
        for method in METHODS:
            for layer in (*LAYERS, COMBINED):
                key = f"{method}/{layer}"
                label, top, bottom = (upsample(m) for m in plain[method][layer])
                label_maps[method][layer].append(plain[method][layer][0])
                row = {
                    "class_sensitivity": spearman(top, bottom),
                    "total_variation": total_variation(plain[method][layer][0].double().numpy()),
                }
                if metas is not None:
                    meta_label, meta_top, meta_bottom = (upsample(m) for m in metas[method][layer])
                    row["meta_class_sensitivity"] = spearman(meta_top, meta_bottom)
                    row["meta_correlation"] = spearman(label, meta_label)
                if previous is not None:
                    same = int(previous.targets[n, 0]) == targets[0]
                    before = upsample(previous.maps[method][layer][n])
                    row["drift"] = spearman(before, label) if same else math.nan
                if probes.boxes is not None:
                    mask = box_mask(probes.boxes[n], probes.box_classes[n], targets[0])
                    row["pointing_game"] = pointing_hit(label, mask)
                for metric, value in row.items():
                    values.setdefault(f"{metric}/{key}", []).append(value)
    return {k: np.array(v) for k, v in values.items()}, all_targets, all_probabilities, label_maps


def expected_keys(meta: bool, drift: bool, pointing: bool) -> set[str]:
    metrics = ["class_sensitivity", "total_variation"]
    metrics += ["meta_class_sensitivity", "meta_correlation"] if meta else []
    metrics += ["drift"] if drift else []
    metrics += ["pointing_game"] if pointing else []
    return {f"{m}/{method}/{layer}" for m in metrics for method in METHODS for layer in (*LAYERS, COMBINED)}


def make_previous(
    label_maps: dict[str, dict[str, list[Tensor]]], targets: list[list[int]], changed: int
) -> DriftReference:
    """Earlier label maps = current ones plus noise; probe ``changed`` had another label class."""
    generator = torch.Generator().manual_seed(7)
    maps = {}
    for method, per_layer in label_maps.items():
        maps[method] = {}
        for layer, per_probe in per_layer.items():
            now = torch.stack(per_probe).float()
            maps[method][layer] = now + 0.5 * now.std() * torch.randn(now.shape, generator=generator)
    before = torch.tensor(targets, dtype=torch.int64)
    before[changed, 0] = (before[changed, 0] + 1) % NUM_CLASSES
    return DriftReference(maps=LabelMaps(maps), targets=before)


def assert_values_close(values: dict[str, Tensor], expected: Values) -> None:
    assert set(values) == set(expected)
    for key, value in values.items():
        assert value.dtype == torch.float64 and value.shape == (NUM_PROBES,), key
        torch.testing.assert_close(
            value, torch.from_numpy(expected[key]), rtol=0, atol=ATOL, equal_nan=True, msg=lambda m, k=key: f"{k}: {m}"
        )


# --------------------------------------------------------------------------- values


CASES = {
    "multiclass-uniform-sum": ("multiclass", "uniform", "sum", False, False),
    "multiclass-linear-product-meta-drift": ("multiclass", "linear", "product", True, True),
    "multilabel-uniform-product-meta-drift": ("multilabel", "uniform", "product", True, True),
    "multilabel-linear-sum": ("multilabel", "linear", "sum", False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_match_reference(
    case: str, model: nn.Module, multiclass_probes: ProbeBatch, multilabel_probes: ProbeBatch
) -> None:
    task, weighting, mode, meta, with_drift = CASES[case]
    probes = multiclass_probes if task == "multiclass" else multilabel_probes
    settings = settings_for(task, combine_weights=weighting, combine_mode=mode, meta_lr=META_LR if meta else None)
    previous = None
    if with_drift:
        plain_settings = settings_for(task, combine_weights=weighting, combine_mode=mode)
        _, targets, _, label_maps = reference(model, probes, plain_settings)
        previous = make_previous(label_maps, targets, changed=1)  # probe 1's label class "changed"
    expected, targets, probabilities, label_maps = reference(model, probes, settings, previous)

    result = evaluate_probes(model, probes, settings, previous=previous)

    assert isinstance(result, SplitEvaluation)
    assert set(named(result.values)) == expected_keys(meta, with_drift, pointing=task == "multilabel")
    assert_values_close(named(result.values), expected)
    assert result.targets.dtype == torch.int64 and result.targets.tolist() == targets
    assert result.probabilities.shape == (NUM_PROBES, NUM_CLASSES)
    expected_probabilities = torch.tensor(probabilities, dtype=torch.float64)
    torch.testing.assert_close(result.probabilities.double(), expected_probabilities, rtol=0, atol=ATOL)
    assert set(result.maps) == set(METHODS)
    for method in METHODS:
        assert set(result.maps[method]) == {*LAYERS, COMBINED}
        for layer, per_probe in label_maps[method].items():
            expected_maps = torch.stack(per_probe).double()
            torch.testing.assert_close(result.maps[method][layer].double(), expected_maps, rtol=0, atol=ATOL)
    assert (result.meta_maps is not None) == meta
    if with_drift:
        drift = named(result.values)
        assert all(math.isnan(drift[f"drift/{m}/{layer}"][1]) for m in METHODS for layer in (*LAYERS, COMBINED))
    assert result.reference.targets is result.targets and result.reference.maps is result.maps


def test_multilabel_label_is_the_highest_scoring_true_class(model: nn.Module, multilabel_probes: ProbeBatch) -> None:
    orders = [class_order(model, image) for image in multilabel_probes.images]
    result = evaluate_probes(model, multilabel_probes, settings_for("multilabel"))
    assert result.targets[:, 0].tolist() == [orders[0][1], orders[1][0], orders[2][4], orders[3][1], orders[4][3]]
    assert result.targets[:, 1].tolist() == [o[0] for o in orders]
    assert result.targets[:, 2].tolist() == [o[-1] for o in orders]
    assert result.targets[0, 0] != result.targets[0, 1]  # another, higher-scoring class exists but is not true


def test_pointing_game_mixes_hits_misses_and_nan(model: nn.Module, multilabel_probes: ProbeBatch) -> None:
    result = evaluate_probes(model, multilabel_probes, settings_for("multilabel"))
    pointing = torch.stack([v for k, v in result.values.items() if k.metric == "pointing_game"])
    assert pointing[:, [1, 2]].isnan().all()  # label without a box; image without boxes
    assert pointing[:, 3].eq(1).all()  # label box = the whole image
    finite = pointing[:, [0, 3, 4]]
    assert finite.eq(0).any() and finite.eq(1).any()


def test_pointing_game_is_nan_for_probes_without_boxes_in_a_mixed_set(
    model: nn.Module, multilabel_probes: ProbeBatch
) -> None:
    with_boxes = multilabel_probes.select([3, 0])
    without = ProbeBatch(images=multilabel_probes.images[[4]], classes=multilabel_probes.classes[4:], task="multilabel")
    mixed = ProbeBatch.cat([with_boxes, without])
    result = named(evaluate_probes(model, mixed, settings_for("multilabel")).values)
    alone = named(evaluate_probes(model, with_boxes, settings_for("multilabel")).values)
    keys = expected_keys(False, False, True)
    assert set(result) == keys
    for key in keys:
        if key.startswith("pointing_game/"):
            assert torch.equal(result[key][:2], alone[key]) and result[key][2].isnan(), key


def test_multiclass_without_boxes_has_no_pointing_game(model: nn.Module, multiclass_probes: ProbeBatch) -> None:
    result = evaluate_probes(model, multiclass_probes, settings_for("multiclass"))
    assert not any(key.metric == "pointing_game" for key in result.values)
    assert result.meta_maps is None


# --------------------------------------------------------------------------- chunks and drift


def test_chunks_give_the_same_values_and_report_progress(model: nn.Module, multilabel_probes: ProbeBatch) -> None:
    settings = settings_for("multilabel", meta_lr=META_LR, combine_weights="linear", combine_mode="product")
    whole = evaluate_probes(model, multilabel_probes, settings)
    done: list[int] = []
    chunked = evaluate_probes(
        model, multilabel_probes, settings_for("multilabel", meta_lr=META_LR, combine_weights="linear",
                                               combine_mode="product", batch_size=2),
        previous=whole.reference, progress=done.append,
    )
    assert done == [2, 2, 1] and sum(done) == NUM_PROBES
    assert set(chunked.values) == set(whole.values) | {MetricKey(None, "drift", k.method, k.layer)
                                                        for k in whole.values if k.metric == "class_sensitivity"}
    for key, value in whole.values.items():
        torch.testing.assert_close(chunked.values[key], value, rtol=0, atol=1e-12, equal_nan=True)
    assert torch.equal(chunked.targets, whole.targets)
    torch.testing.assert_close(chunked.probabilities, whole.probabilities, rtol=0, atol=1e-7)
    # drift against itself: 1 wherever the map is not constant
    for key, value in chunked.values.items():
        if key.metric == "drift":
            torch.testing.assert_close(value, torch.ones_like(value), rtol=0, atol=ATOL, equal_nan=False)


def test_drift_is_nan_where_the_label_class_changed(model: nn.Module, multilabel_probes: ProbeBatch) -> None:
    first = evaluate_probes(model, multilabel_probes, settings_for("multilabel"))
    changed = first.targets.clone()
    changed[[0, 3], 0] = (changed[[0, 3], 0] + 1) % NUM_CLASSES
    result = evaluate_probes(model, multilabel_probes, settings_for("multilabel"), DriftReference(first.maps, changed))
    for key in expected_keys(False, True, False):
        if key.startswith("drift/"):
            value = named(result.values)[key]
            assert value[[0, 3]].isnan().all() and not value[[1, 2, 4]].isnan().any(), key


# --------------------------------------------------------------------------- summarize


def test_summarize_matches_numpy_and_scipy() -> None:
    values = {
        "many": torch.tensor([0.1, 0.5, math.nan, -0.3, 0.9], dtype=torch.float64),
        "two": torch.tensor([math.nan, 0.25, -0.75], dtype=torch.float64),
        "one": torch.tensor([math.nan, 0.4, math.nan], dtype=torch.float64),
        "none": torch.tensor([math.nan, math.nan], dtype=torch.float64),
        "float32": torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32),
    }
    summary = summarize(values)
    assert set(summary) == set(values)
    for key, per_probe in values.items():
        data = per_probe.double().numpy()
        finite = data[np.isfinite(data)]
        mean, stderr, count = summary[key]
        assert isinstance(count, int) and count == len(finite), key
        expected_mean = float(np.mean(finite)) if len(finite) else math.nan
        expected_stderr = float(scipy.stats.sem(finite)) if len(finite) >= 2 else math.nan
        assert isinstance(mean, float) and isinstance(stderr, float)
        assert (math.isnan(mean) and math.isnan(expected_mean)) or math.isclose(mean, expected_mean, abs_tol=1e-12)
        assert (math.isnan(stderr) and math.isnan(expected_stderr)) or math.isclose(
            stderr, expected_stderr, abs_tol=1e-12
        )
    assert summary["one"] == pytest.approx((0.4, math.nan, 1), nan_ok=True)
    assert math.isnan(summary["none"][0]) and math.isnan(summary["none"][1]) and summary["none"][2] == 0


# --------------------------------------------------------------------------- the model is left alone


@pytest.mark.parametrize("training", [False, True])
def test_model_comes_back_unchanged(training: bool, multilabel_probes: ProbeBatch) -> None:
    model = make_model(seed=3).train(training)
    before = snapshot(model)
    evaluate_probes(model, multilabel_probes, settings_for("multilabel", meta_lr=META_LR, batch_size=3))
    assert_same(before, snapshot(model))
    assert all(module.training == training for module in model.modules())


# --------------------------------------------------------------------------- errors


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, output: Callable[[Tensor], object]) -> None:
        super().__init__()
        self.inner = inner
        self.output = output

    def forward(self, x: Tensor) -> object:
        return self.output(self.inner(x))


@pytest.mark.parametrize(
    ("output", "got"),
    [
        (lambda logits: logits[..., None], "shape (5, 5, 1)"),
        (lambda logits: {"logits": logits}, "dict"),
        (lambda logits: logits[:, :1], "shape (5, 1)"),
        (lambda logits: logits[0], "shape (5,)"),
    ],
)
def test_output_that_is_not_logits_raises(
    output: Callable[[Tensor], object], got: str, multiclass_probes: ProbeBatch
) -> None:
    model = Wrapped(make_model(), output)
    hint = "pass `output_to_logits=` to pick the logits from the output"
    if got in ("shape (5, 1)", "shape (5,)"):
        hint = "a single-logit binary classifier: pass `output_to_logits=two_class_logits(...)`"
    message = (
        "Expected the model to map (B, C_in, H, W) images to (B, C) class logits with C >= 2, but got "
        f"{got} for B=5 ({hint})."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_probes(model, multiclass_probes, settings_for("multiclass"))


def test_overflowing_meta_maps_become_nan_and_are_counted(multiclass_probes: ProbeBatch) -> None:
    model = make_model().float()
    probes = ProbeBatch(images=multiclass_probes.images.float(), classes=multiclass_probes.classes, task="multiclass")
    result = evaluate_probes(model, probes, settings_for("multiclass", meta_lr=1e30))  # θ' overflows float32
    n = len(probes)
    assert result.nonfinite == {f"meta/{m}/{layer}": n for m in METHODS for layer in LAYERS}
    for key, value in result.values.items():
        if key.metric.startswith("meta_"):
            assert value.isnan().all(), key
        else:
            assert value.isfinite().all(), key
    for m in METHODS:
        for layer, maps in result.meta_maps[m].items():
            assert maps.isnan().all(), (m, layer)
        assert all(maps.isfinite().all() for maps in result.maps[m].values())
