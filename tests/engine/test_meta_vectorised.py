"""The vectorised meta path (``meta_batching="vmap"``): the same maps as the loop and as the literal
reference (a deep copy, one SGD step, plain maps) for every option it supports, chunked or not,
and the model never touched."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine import two_class_logits
from saliency_monitor.engine.meta import TargetPairs
from saliency_monitor.engine.meta_vectorised import (
    resolve_meta_batching,
    stepped_bytes,
    time_meta_batching,
)
from tests._trace import assert_same, snapshot
from tests.engine.test_checkpointing import MODES, BlockNet
from tests.engine.test_meta import CONV_METHODS, METHODS, assert_maps_close, literal_meta_maps, make_net

LAYERS = ["input", "relu", "conv2", "conv3"]  # the image, an in-place ReLU, a strided and a plain conv


def vmap_and_loop(model, images, targets, layers, methods, **options):
    got = compute_saliency(model, images, targets, layers, methods, meta_batching="vmap", **options)
    want = compute_saliency(model, images, targets, layers, methods, meta_batching="loop", **options)
    return got, want


@pytest.mark.parametrize(("task", "lr"), [("multiclass", 0.05), ("multilabel", 0.05), ("multiclass", -0.05)])
def test_matches_loop_and_literal_reference(task: str, lr: float) -> None:
    net = make_net()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 4], [2, 2], [3, 1]])  # image 1 repeats a class: one pair
    got, loop = vmap_and_loop(net, images, targets, LAYERS, METHODS, meta_lr=lr, task=task)
    assert_maps_close(got, loop, rtol=1e-6)
    assert_maps_close(got, literal_meta_maps(net, images, targets, LAYERS, METHODS, lr, task))
    conv, conv_loop = vmap_and_loop(net, images, targets, ["conv2", "conv3"], CONV_METHODS, meta_lr=lr, task=task)
    assert_maps_close(conv, conv_loop, rtol=1e-6)
    plain = compute_saliency(net, images, targets, LAYERS, METHODS)
    assert not torch.allclose(got["norm_grad"]["conv3"], plain["norm_grad"]["conv3"]), "the step must matter"


def test_resnet18_residual_sums_and_batch_norm_match_the_literal_reference() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[1, 3], [0, 2]])
    layers = ["relu", "layer1", "layer2.0.conv1", "layer3"]  # layer4 is 1×1 at 32 px
    got = compute_saliency(net, images, targets, layers, ["norm_grad", "grad_cam"], meta_lr=0.002,
                           meta_batching="vmap")
    assert_maps_close(got, literal_meta_maps(net, images, targets, layers, ["norm_grad", "grad_cam"], 0.002,
                                             "multiclass"))


@pytest.mark.parametrize("smooth", ["backward", "forward"])
def test_smoothing_matches_the_loop(smooth: str) -> None:
    net = make_net()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 4], [2, 1]])
    got, want = vmap_and_loop(net, images, targets, LAYERS, ["norm_grad", "linear_approx"], meta_lr=0.05,
                              smooth=smooth)
    assert_maps_close(got, want, rtol=1e-6)
    unsmoothed = compute_saliency(net, images, targets, LAYERS, ["norm_grad"], meta_lr=0.05, meta_batching="vmap")
    assert not torch.allclose(got["norm_grad"]["relu"], unsmoothed["norm_grad"]["relu"])


def test_trainable_parameters_only_match_the_literal_reference() -> None:
    net = make_net()
    net.conv1.requires_grad_(False)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 4], [2, 1]])
    got = compute_saliency(net, images, targets, LAYERS, METHODS, meta_lr=0.05, meta_params="trainable",
                           meta_batching="vmap")
    assert_maps_close(got, literal_meta_maps(net, images, targets, LAYERS, METHODS, 0.05, "multiclass",
                                             trainable_only=True))
    everything = compute_saliency(net, images, targets, LAYERS, METHODS, meta_lr=0.05, meta_batching="vmap")
    assert not torch.allclose(got["norm_grad"]["conv3"], everything["norm_grad"]["conv3"])


def test_tied_weights_match_the_loop() -> None:
    net = make_net(tie=True)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    got, want = vmap_and_loop(net, images, torch.tensor([[0, 4], [2, 1]]), LAYERS, METHODS, meta_lr=0.05)
    assert_maps_close(got, want, rtol=1e-6)


@pytest.mark.parametrize("pairs_per_chunk", [1, 2, 5, 100])
def test_chunks_of_any_size_give_the_same_maps(pairs_per_chunk: int) -> None:
    net = make_net()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([[0, 4, 1], [2, 2, 3], [3, 1, 3]])  # 7 distinct pairs
    memory = pairs_per_chunk * stepped_bytes(net, [n for n, _ in net.named_parameters()])
    got = compute_saliency(net, images, targets, LAYERS, METHODS, meta_lr=0.05, meta_batching="vmap",
                           meta_memory=memory)
    want = compute_saliency(net, images, targets, LAYERS, METHODS, meta_lr=0.05, meta_batching="loop")
    assert_maps_close(got, want, rtol=1e-6)
    for method in METHODS:  # a repeated class is the same pair: the same map
        torch.testing.assert_close(got[method]["conv3"][1, 0], got[method]["conv3"][1, 1], rtol=0, atol=0)


def test_target_pairs_are_distinct_and_index_every_target() -> None:
    targets = torch.tensor([[3, 3, 0], [1, 2, 1]])
    pairs = TargetPairs.of(targets)
    assert (pairs.images, pairs.classes) == ([0, 0, 1, 1], [3, 0, 1, 2])
    assert pairs.index.tolist() == [[0, 0, 1], [2, 3, 2]]
    assert torch.equal(torch.tensor(pairs.classes)[pairs.index], targets)


class IntegerInput(nn.Module):
    """Takes uint8 images and converts inside ``forward``; a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net().float()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x.float() / 255)}


def test_integer_images_and_output_to_logits_match_the_loop() -> None:
    model = IntegerInput()
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    got, want = vmap_and_loop(model, images, torch.tensor([[0, 4], [2, 1]]), ["net.relu", "net.conv3"], METHODS,
                              meta_lr=0.05, output_to_logits=lambda out: out["logits"])
    assert_maps_close(got, want, rtol=1e-5)


def test_single_logit_binary_classifier_matches_the_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 1)).double()
    images = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    got, want = vmap_and_loop(model, images, torch.tensor([[0, 1], [1, 0], [1, 1]]), ["0", "1"], METHODS,
                              meta_lr=0.1, output_to_logits=two_class_logits())
    assert_maps_close(got, want, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_activation_checkpointing_changes_no_map(mode: str) -> None:
    torch.manual_seed(0)
    reference = BlockNet(None).double()
    net = BlockNet(mode).double()
    net.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([[0, 3], [2, 2]])
    layers = ["stem", "blocks.0", "blocks.1.0", "blocks.2"]
    before = snapshot(net)
    got = compute_saliency(net, images, targets, layers, ["norm_grad", "grad_cam"], meta_lr=0.05,
                           meta_batching="vmap")
    want = compute_saliency(reference, images, targets, layers, ["norm_grad", "grad_cam"], meta_lr=0.05,
                            meta_batching="loop")
    assert_maps_close(got, want, rtol=1e-6)
    assert_same(before, snapshot(net))
    assert torch.utils.checkpoint._checkpoint_without_reentrant_generator_impl.__module__ == "torch.utils.checkpoint"


def test_relevance_methods_keep_the_loop() -> None:
    torch.manual_seed(0)
    net = torchvision.models.vgg11(num_classes=3).features[:6].double()
    model = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 3)).double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    got, want = vmap_and_loop(model, images, torch.tensor([[0, 2], [1, 1]]), ["0.3"], ["lrp", "norm_grad"],
                              meta_lr=0.05)
    assert_maps_close(got, want, rtol=1e-6)


def test_the_model_is_left_exactly_as_it_was() -> None:
    net = make_net()
    net.conv2.weight.grad = torch.ones_like(net.conv2.weight)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = snapshot(net)
    compute_saliency(net, images, [[0, 1], [2, 3]], LAYERS, METHODS, meta_lr=0.05, meta_batching="vmap",
                     smooth="backward")
    assert_same(before, snapshot(net))
    assert net.training and all(m.training for m in net.modules())


class ItemInForward(nn.Module):
    """Data-dependent control flow: ``vmap`` cannot run it, the loop can."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if logits.sum().item() < 1e9 else -logits


def test_a_failing_vmap_removes_every_hook_and_raises_when_asked_for() -> None:
    model = ItemInForward()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="vmap"):
        compute_saliency(model, images, [[0, 1], [2, 3]], ["net.conv3"],
                         ["norm_grad"], meta_lr=0.05, meta_batching="vmap", smooth="forward")
    assert_same(before, snapshot(model))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_auto_falls_back_to_the_loop_with_a_warning_where_vmap_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import saliency_monitor.engine.compute as compute

    monkeypatch.setattr(compute, "resolve_meta_batching", lambda choice, device: "vmap" if choice == "auto" else choice)
    model = ItemInForward()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with pytest.warns(UserWarning, match="meta_batching='auto'.*running the loop"):
        got = compute_saliency(model, images, [[0, 1], [2, 3]], ["net.conv3"], ["norm_grad"], meta_lr=0.05)
    want = compute_saliency(model, images, [[0, 1], [2, 3]], ["net.conv3"], ["norm_grad"], meta_lr=0.05,
                            meta_batching="loop")
    assert_maps_close(got, want, rtol=0)


class NoGradBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.net.relu(self.net.bn1(self.net.conv1(x)))
        return self.net.fc(features.mean(dim=(2, 3)).repeat(1, 1))[:, :5]


def test_a_layer_run_without_gradients_is_refused_as_by_the_loop() -> None:
    model = NoGradBackbone()
    images = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    for batching in ("vmap", "loop"):
        with pytest.raises(ValueError, match=r"layer 'net.relu' to depend differentiably on the images"):
            compute_saliency(model, images, [1], ["net.relu"], ["norm_grad"], meta_lr=0.05, meta_batching=batching)


def test_out_of_range_targets_get_the_engine_message() -> None:
    with pytest.raises(ValueError, match=re.escape("class indices in [0, 5)")):
        compute_saliency(make_net(), torch.randn(1, 3, 12, 12, dtype=torch.float64), [[1, 7]], ["conv3"],
                         ["norm_grad"], meta_lr=0.05, meta_batching="vmap")


def test_bad_options_are_refused_with_the_valid_ones() -> None:
    images = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`meta_batching`.*'auto', 'loop', 'vmap'.*'fast'"):
        compute_saliency(make_net(), images, [1], ["conv3"], meta_lr=0.05, meta_batching="fast")
    with pytest.raises(ValueError, match=r"`meta_memory`.*positive.*0"):
        compute_saliency(make_net(), images, [1], ["conv3"], meta_lr=0.05, meta_memory=0)


def test_auto_is_the_loop_on_cpu_and_vmap_on_cuda() -> None:
    assert resolve_meta_batching("auto", torch.device("cpu")) == "loop"
    assert resolve_meta_batching("auto", torch.device("cuda", 0)) == "vmap"
    assert resolve_meta_batching("vmap", torch.device("cpu")) == "vmap"
    assert resolve_meta_batching("loop", torch.device("cuda")) == "loop"


def test_timing_both_paths_gives_inf_to_one_that_cannot_run() -> None:
    net = make_net()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)

    def run(batching: str) -> object:
        model = ItemInForward() if batching == "vmap" else net
        return compute_saliency(model, images, [1, 2], ["conv3" if model is net else "net.conv3"], ["norm_grad"],
                                meta_lr=0.05, meta_batching=batching)

    seconds = time_meta_batching(run, repeat=1)
    assert 0 < seconds["loop"] < float("inf") and seconds["vmap"] == float("inf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_vmap_matches_the_loop_and_stays_on_the_device() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).cuda()
    images = torch.randn(3, 3, 32, 32, device="cuda")
    targets = torch.tensor([[1, 3], [0, 0], [2, 1]], device="cuda")
    before = snapshot(net)
    got = compute_saliency(net, images, targets, ["layer1", "layer3"], ["norm_grad", "grad_cam"], meta_lr=0.002)
    want = compute_saliency(net, images, targets, ["layer1", "layer3"], ["norm_grad", "grad_cam"], meta_lr=0.002,
                            meta_batching="loop")
    assert got["norm_grad"]["layer1"].device.type == "cuda"
    assert_maps_close(got, want, rtol=1e-4)
    assert_same(before, snapshot(net))
    cpu = compute_saliency(net.cpu(), images.cpu(), targets.cpu(), ["layer1", "layer3"], ["norm_grad"],
                           meta_lr=0.002, meta_batching="loop")
    assert_maps_close({"norm_grad": {k: v.cpu() for k, v in got["norm_grad"].items()}}, cpu, rtol=1e-3)


def test_loss_per_pair_is_the_class_loss() -> None:
    """The vmapped loss (cross-entropy or softplus via gather) is the loop's class loss."""
    from saliency_monitor.engine.task import class_loss

    logits = torch.randn(5, dtype=torch.float64)
    for c in range(5):
        target = torch.tensor(c)
        assert torch.isclose(class_loss(logits, target, "multiclass"), F.cross_entropy(logits[None], target[None]))
        assert torch.isclose(class_loss(logits, target, "multilabel"), F.softplus(-logits[c]))


def test_the_default_chunk_budget_is_two_gib_off_cuda() -> None:
    from saliency_monitor.engine.meta_vectorised import CPU_META_MEMORY, default_meta_memory

    assert default_meta_memory(torch.device("cpu")) == CPU_META_MEMORY == 2 * 1024**3
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        assert free // 4 <= default_meta_memory(torch.device("cuda")) <= total
