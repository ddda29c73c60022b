"""Maps that say nothing (1×1, or constant up to float rounding) are found and left out.

A randomly initialised ResNet-18 on 64×64 images: ``layer4`` is 2×2 and feeds a global average
pool, so ``gradient`` and ``bias:sum`` get the same gradient at each of its locations (a
constant map), and ``norm_grad_selective`` (which multiplies by the activation) stays spatial at
``layer4``. (A 1×1 layer such as ``avgpool`` is refused by the engine before any map is made;
the warning's 1×1 line is checked on its own.) One probe is an all-zero image: its
``norm_grad_selective`` map at ``input`` (gradient ⊙ image) is 0, constant for that probe only.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

from saliency_monitor.engine import saliency_options
from saliency_monitor.metrics import combine_maps, fixed_weights
from saliency_monitor.metrics.maps import CONSTANT_TOLERANCE, constant_maps
from saliency_monitor.monitor import report
from saliency_monitor.monitor.degenerate import degenerate_message
from saliency_monitor.monitor.distributed import gather_evaluation
from saliency_monitor.monitor.evaluation import METRICS, EvaluationPlan, SplitEvaluation, evaluate_probes
from saliency_monitor.monitor.keys import COMBINED, MetricKey
from saliency_monitor.monitor.probe_metrics import LABEL, READS
from saliency_monitor.monitor.probes import ProbeBatch
from tests.conftest import randomize_batchnorm

EPS = torch.finfo(torch.float32).eps
LAYERS = ("input", "layer2", "layer3", "layer4")
METHODS = ("gradient", "bias:sum", "norm_grad_selective")
DEGENERATE = {
    "gradient": {"layer4": "constant"},
    "bias:sum": {"layer4": "constant"},
    "norm_grad_selective": {},
}
ZERO_PROBE = 3


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    randomize_batchnorm(model, 0)  # a zero image still gives spatial maps deeper
    return model.eval()


@pytest.fixture(scope="module")
def probes() -> ProbeBatch:
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    images[ZERO_PROBE] = 0
    return ProbeBatch(images=images, classes=((0,), (1,), (2,), (3,)), task="multiclass")


def plan_for(
    mode: str = "sum", weights: str = "uniform", layers: tuple[str, ...] = LAYERS,
    methods: tuple[str, ...] = METHODS, meta_lr: float | None = None,
) -> EvaluationPlan:
    options = saliency_options(layers, methods, task="multiclass")
    return EvaluationPlan.of(options, meta_lr=meta_lr, combine_weights=weights, combine_mode=mode)


@pytest.fixture(scope="module")
def results(resnet: nn.Module, probes: ProbeBatch) -> dict[tuple[str, str], SplitEvaluation]:
    return {
        (mode, weights): evaluate_probes(resnet, probes, plan_for(mode, weights))
        for mode in ("sum", "product") for weights in ("uniform", "linear")
    }


# --------------------------------------------------------------------------- the detector


def test_constant_maps_flags_rounding_and_no_real_variation() -> None:
    base = torch.full((5, 4), -3.7)
    noisy = base.clone()
    noisy[2, 1] *= 1 + 9 * EPS  # the rounding of a 2048-channel sum, measured
    real = base.clone()
    real[2, 1] *= 1 + 2 * CONSTANT_TOLERANCE * EPS
    nan, inf = base.clone(), base.clone()
    nan[0, 0], inf[0, 0] = math.nan, math.inf
    maps = torch.stack([base, noisy, torch.zeros(5, 4), real, nan, inf, torch.randn(5, 4)])
    assert constant_maps(maps).tolist() == [True, True, True, False, False, False, False]
    assert constant_maps(torch.randn(2, 3, 1, 1)).all() and constant_maps(torch.randn(2, 3, 1, 1)).shape == (2, 3)
    coarse = torch.full((3, 3), 1.0, dtype=torch.bfloat16)
    coarse[1, 1] = 1.0078125  # one bfloat16 step: rounding at the maps' own precision
    assert bool(constant_maps(coarse))


@pytest.mark.parametrize("seed", range(8))
def test_real_maps_are_never_flagged(seed: int) -> None:
    """Random conv nets without global pooling (every location reaches the head by its own weights),
    random sizes, widths and input scales: no map of any method is constant."""
    generator = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    torch.manual_seed(seed)
    height, width, channels = draw(5, 24), draw(5, 24), [3]
    layers: list[nn.Module] = []
    for _ in range(draw(2, 4)):
        channels.append(draw(2, 64))
        layers += [nn.Conv2d(channels[-2], channels[-1], draw(1, 2) * 2 + 1, padding="same"), nn.LeakyReLU(0.1)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * height * width, 4)).eval()
    scale = 10.0 ** draw(-3, 3)
    images = scale * torch.randn(3, 3, height, width, generator=generator)
    probes = ProbeBatch(images=images, classes=((0,), (1,), (2,)), task="multiclass")
    names = tuple(str(i) for i in range(1, len(layers), 2))  # every activation
    methods = ("gradient", "bias:sum", "linear_approx", "norm_grad", "norm_grad_selective")
    result = evaluate_probes(model, probes, plan_for("product", layers=names, methods=methods))
    assert result.degenerate == {}
    assert not any(flags.any() for per_layer in result.constant.values() for flags in per_layer.values())
    for per_layer in result.maps.values():
        for layer, maps in per_layer.items():
            assert not constant_maps(maps).any(), layer


# --------------------------------------------------------------------------- degenerate layers


def test_degenerate_layers_are_found_with_their_reason(results: dict[tuple[str, str], SplitEvaluation]) -> None:
    for result in results.values():
        assert result.degenerate == {m: layers for m, layers in DEGENERATE.items() if layers}
        assert result.constant["norm_grad_selective"]["input"].tolist() == [False, False, False, True]


def test_degenerate_layers_have_no_logged_keys(results: dict[tuple[str, str], SplitEvaluation]) -> None:
    result = results["sum", "uniform"]
    scalars = report.summary_scalars({"train": result, "val": result})
    logged = {(key.method, key.layer) for key in scalars if key.method is not None}
    expected = {(m, layer) for m in METHODS for layer in (*LAYERS, COMBINED) if layer not in DEGENERATE[m]}
    assert logged == expected
    assert {key.metric for key in scalars if key.method == "gradient" and key.layer == "layer2"} == {
        "class_sensitivity", "total_variation"}
    for key, value in result.values.items():  # kept (same keys on every rank of a gather), all NaN
        if key.layer in DEGENERATE[str(key.method)]:
            assert value.isnan().all(), key
    assert set(result.logged_values) == {k for k in result.values if (k.method, k.layer) in expected}


def test_a_probe_whose_map_is_constant_gets_nan_there_and_only_there(
    results: dict[tuple[str, str], SplitEvaluation],
) -> None:
    for result in results.values():
        for metric in ("class_sensitivity", "total_variation"):
            value = result.values[MetricKey(None, metric, "norm_grad_selective", "input")]
            assert value[ZERO_PROBE].isnan() and value[:ZERO_PROBE].isfinite().all(), metric
            for layer in ("layer2", "layer3", "layer4", COMBINED):
                assert result.values[MetricKey(None, metric, "norm_grad_selective", layer)].isfinite().all(), layer


@pytest.mark.parametrize("weights", ["uniform", "linear"])
@pytest.mark.parametrize("mode", ["sum", "product"])
def test_combined_map_combines_the_informative_layers(
    mode: str, weights: str, results: dict[tuple[str, str], SplitEvaluation],
) -> None:
    """Degenerate layers and a probe's constant layers are left out, the others keep their weights
    (renormalised by ``combine_maps``)."""
    result = results[mode, weights]
    gamma = fixed_weights(weights, len(LAYERS)).tolist()
    for method in METHODS:
        for n in range(len(result.targets)):
            kept = [j for j, layer in enumerate(LAYERS) if layer not in DEGENERATE[method]]
            if method == "norm_grad_selective" and n == ZERO_PROBE:
                kept.remove(LAYERS.index("input"))
            expected = combine_maps(
                [result.maps[method][LAYERS[j]][n] for j in kept], [gamma[j] for j in kept], size=(64, 64), mode=mode
            )
            torch.testing.assert_close(result.maps[method][COMBINED][n], expected, rtol=0, atol=1e-6)
            assert not constant_maps(result.maps[method][COMBINED][n])


def test_a_method_with_every_layer_degenerate_has_no_combined_map(resnet: nn.Module, probes: ProbeBatch) -> None:
    result = evaluate_probes(resnet, probes, plan_for("product", layers=("layer4",)))
    assert result.degenerate == {m: layers for m, layers in DEGENERATE.items() if layers}
    for method in ("gradient", "bias:sum"):
        assert result.maps[method][COMBINED].isnan().all()
    scalars = report.summary_scalars({"train": result})
    assert {(k.method, k.layer) for k in scalars if k.method is not None} == {
        ("norm_grad_selective", "layer4"), ("norm_grad_selective", COMBINED)}


# --------------------------------------------------------------------------- a layer after a global pool


class GapNet(nn.Module):
    """Two convs, a global average pool, a linear head: ``relu2``'s gradient is the same at each of
    its 7×7 locations, and ``bias:sum`` sums its 64 channels with rounding that differs by location."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


def test_rounding_noise_after_a_global_pool_is_degenerate_plain_meta_and_drift() -> None:
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    probes = ProbeBatch(images=images, classes=((0,), (1,), (2,), (3,)), task="multiclass")
    plan = plan_for(layers=("conv2", "relu2"), methods=("bias:sum", "norm_grad"), meta_lr=0.01)
    first = evaluate_probes(model, probes, plan)
    result = evaluate_probes(model, probes, plan, previous=first.reference)
    assert result.degenerate == {"bias:sum": {"relu2": "constant"}}
    for key, value in result.values.items():
        assert value.isnan().all() == (key.method == "bias:sum" and key.layer == "relu2"), key
    assert {(k.method, k.layer) for k in result.logged_values} == {
        ("bias:sum", "conv2"), ("bias:sum", COMBINED), ("norm_grad", "conv2"), ("norm_grad", "relu2"),
        ("norm_grad", COMBINED)}
    torch.testing.assert_close(  # one layer left: the combined map is its normalised map
        result.maps["bias:sum"][COMBINED], combine_maps([result.maps["bias:sum"]["conv2"]], size=(7, 7)))


# --------------------------------------------------------------------------- what is shown and said


def test_pictures_leave_out_degenerate_layers_and_blank_constant_maps(
    results: dict[tuple[str, str], SplitEvaluation], probes: ProbeBatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[list[str], list[Any]]] = []
    real_grid = report.saliency_grid

    def spy(rows: list[Any], columns: list[str], **kwargs: Any) -> Any:
        drawn.append((list(columns), list(rows)))
        return real_grid(rows, columns, tile=16, **kwargs)

    monkeypatch.setattr(report, "saliency_grid", spy)
    result = results["product", "uniform"]
    pictures = report.pictures({"train": result}, {"train": probes}, plan_for("product"), str, 4, "turbo")
    assert len(pictures["train"]) == len(METHODS)
    for method, (columns, rows) in zip(METHODS, drawn):
        assert columns == [layer for layer in (*LAYERS, COMBINED) if layer not in DEGENERATE[method]]
        for n, row in enumerate(rows):
            for layer, panel in zip(columns, row.maps):
                blank = method == "norm_grad_selective" and n == ZERO_PROBE and layer == "input"
                assert panel.isnan().all() if blank else not constant_maps(panel), (method, n, layer)


def test_pictures_skip_a_method_with_no_layer_left(resnet: nn.Module, probes: ProbeBatch) -> None:
    plan = plan_for(layers=("layer4",), methods=("gradient",))
    result = evaluate_probes(resnet, probes, plan)
    assert report.pictures({"train": result}, {"train": probes}, plan, str, 2, "turbo") == {}


def test_the_warning_names_each_layer_why_and_what_to_do(results: dict[tuple[str, str], SplitEvaluation]) -> None:
    found = results["sum", "uniform"].degenerate
    assert found == {"gradient": {"layer4": "constant"}, "bias:sum": {"layer4": "constant"}}
    with_one_by_one = {m: {**found.get(m, {}), "avgpool": "1×1"} for m in METHODS}  # as the detector would say
    message = degenerate_message(with_one_by_one, "train", 7)
    one = (
        "its map is 1×1, one number per image: pick a layer with a spatial map (an earlier one)"
    )
    constant = (
        "its map is the same at every location, up to float rounding, for every probe (e.g. after a global "
        "average pool every location gets the same gradient): pick an earlier layer, or a method that "
        "multiplies by the activation there (e.g. linear_approx, norm_grad_selective)"
    )
    assert message == (
        "SaliencyMonitor: at step 7 some train maps carry no spatial information; they are left out of every "
        "metric, of their method's combined map and of the pictures (no keys are logged for them):\n"
        f"  - gradient at 'layer4': {constant}\n"
        f"  - gradient at 'avgpool': {one}\n"
        f"  - bias:sum at 'layer4': {constant}\n"
        f"  - bias:sum at 'avgpool': {one}\n"
        f"  - norm_grad_selective at 'avgpool': {one}"
    )


# --------------------------------------------------------------------------- bookkeeping


def test_every_metric_says_which_maps_it_reads() -> None:
    assert set(READS) == set(METRICS)
    assert all(column in (0, 1, 2) and kind in ("plain", "meta") for reads in READS.values() for kind, column in reads)
    assert READS["total_variation"] == (("plain", LABEL),)


class OneRank:
    """A strategy of one process: ``all_gather`` stacks the only rank's tensor."""

    root_device = torch.device("cpu")

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor[None]


def test_a_gathered_evaluation_keeps_what_was_left_out(results: dict[tuple[str, str], SplitEvaluation]) -> None:
    local = results["sum", "uniform"]
    gathered = gather_evaluation(OneRank(), local, [len(local.targets)])
    assert gathered.degenerate == {m: layers for m, layers in DEGENERATE.items() if layers}
    for method, per_layer in local.constant.items():
        for layer, flags in per_layer.items():
            assert torch.equal(gathered.constant[method][layer], flags), (method, layer)
    assert set(gathered.logged_values) == set(local.logged_values)
