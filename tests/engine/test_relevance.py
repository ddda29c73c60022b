"""LRP maps (saliency_monitor.engine.relevance) against a literal, loop-based LRP; conservation on
VGG- and ResNet-like models; meta-LRP against a hand-stepped copy; no trace on the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.engine.context_saliency import context_aware_saliency
from saliency_monitor.engine.relevance import lrp_maps
from tests._trace import assert_same, snapshot

EPS = 1e-6


class TinyVGG(nn.Module):
    """conv (flat) → relu → conv+BN (z⁺, BN merged) → relu → maxpool → conv (z⁺) → relu → avgpool (norm) → fc (ε)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 5, 3, padding=1, bias=bias)
        self.relu3 = nn.ReLU()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.bn(self.conv2(x))))
        return self.fc(self.flat(self.avg(self.relu3(self.conv3(x)))))


def tiny_vgg(seed: int = 0, bias: bool = True, bn_shift: bool = True) -> TinyVGG:
    torch.manual_seed(seed)
    model = TinyVGG(bias=bias).double().eval()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        if bn_shift:
            model.bn.bias.uniform_(-0.2, 0.2)
            model.bn.running_mean.uniform_(-0.2, 0.2)
    return model


# ----------------------------------------------------------------- literal LRP


def stabilize(z: torch.Tensor) -> torch.Tensor:
    return z + EPS * ((z == 0).to(z) + z.sign())


def conv_terms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Every term of a 3×3, padding 1, stride 1 convolution: A[k, oy, ox, c, iy, ix] = x[c, iy, ix] · w[k, c, ·, ·]."""
    k_out, c_in = weight.shape[:2]
    _, height, width = x.shape
    terms = torch.zeros(k_out, height, width, c_in, height, width, dtype=x.dtype)
    for oy in range(height):
        for ox in range(width):
            for dy in range(3):
                for dx in range(3):
                    iy, ix = oy + dy - 1, ox + dx - 1
                    if 0 <= iy < height and 0 <= ix < width:
                        terms[:, oy, ox, :, iy, ix] = weight[:, :, dy, dx] * x[None, :, iy, ix]
    return terms


def redistribute(terms: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_j terms_ji / stab(z_j) · R_j (terms indexed [out..., in...])."""
    out_dims = z.ndim
    in_ones = [1] * (terms.ndim - out_dims)
    share = terms / stabilize(z).reshape(*z.shape, *in_ones)
    return (share * relevance.reshape(*relevance.shape, *in_ones)).sum(dim=tuple(range(out_dims)))


def literal_lrp(model: TinyVGG, image: torch.Tensor, target: int) -> dict[str, torch.Tensor]:
    """EpsilonPlusFlat written out rule by rule, per term, for one image (C, H, W)."""
    scale = model.bn.weight / (model.bn.running_var + model.bn.eps).sqrt()
    w2 = model.conv2.weight * scale[:, None, None, None]
    b2 = ((model.conv2.bias if model.conv2.bias is not None else 0) - model.bn.running_mean) * scale + model.bn.bias
    w1, w3 = model.conv1.weight, model.conv3.weight
    b1 = model.conv1.bias if model.conv1.bias is not None else torch.zeros(4, dtype=image.dtype)
    b3 = model.conv3.bias if model.conv3.bias is not None else torch.zeros(5, dtype=image.dtype)
    fc_b = model.fc.bias if model.fc.bias is not None else torch.zeros(3, dtype=image.dtype)

    a1 = conv_terms(image, w1).sum(dim=(3, 4, 5)) + b1[:, None, None]
    x1 = a1.relu()
    a2 = conv_terms(x1, w2).sum(dim=(3, 4, 5)) + b2[:, None, None]
    x2 = a2.relu()
    pooled = x2.reshape(4, 3, 2, 3, 2).amax(dim=(2, 4))
    a3 = conv_terms(pooled, w3).sum(dim=(3, 4, 5)) + b3[:, None, None]
    x3 = a3.relu()
    avg = x3.mean(dim=(1, 2))
    logits = model.fc.weight @ avg + fc_b

    relevance = torch.zeros(3, dtype=image.dtype)
    relevance[target] = logits[target]
    # fc, ε rule: terms x_i w_ji, z_j the full output (bias included)
    r_avg = redistribute(model.fc.weight * avg[None, :], logits, relevance)
    # average pool, norm rule: R_i = x_i / (n · stab(mean)) · R
    r_x3 = x3 / (x3[0].numel() * stabilize(avg)[:, None, None]) * r_avg[:, None, None]
    # relu: pass; conv3, z⁺ rule: positive weights × positive inputs (+ negative × negative), positive bias in z
    plus = conv_terms(pooled.clamp(min=0), w3.clamp(min=0)) + conv_terms(pooled.clamp(max=0), w3.clamp(max=0))
    r_pooled = redistribute(plus, plus.sum(dim=(3, 4, 5)) + b3.clamp(min=0)[:, None, None], r_x3)
    # max pool: all to the winner of each 2×2 window
    r_x2 = torch.zeros_like(x2)
    for c in range(4):
        for py in range(3):
            for px in range(3):
                window = x2[c, 2 * py : 2 * py + 2, 2 * px : 2 * px + 2]
                dy, dx = divmod(int(window.flatten().argmax()), 2)
                r_x2[c, 2 * py + dy, 2 * px + dx] = r_pooled[c, py, px]
    # relu: pass; conv2 (BN merged), z⁺
    plus = conv_terms(x1.clamp(min=0), w2.clamp(min=0)) + conv_terms(x1.clamp(max=0), w2.clamp(max=0))
    r_x1 = redistribute(plus, plus.sum(dim=(3, 4, 5)) + b2.clamp(min=0)[:, None, None], r_x2)
    # conv1, flat rule: every input of the receptive field counts 1, no bias
    ones = conv_terms(torch.ones_like(image), torch.ones_like(w1))
    r_image = redistribute(ones, ones.sum(dim=(3, 4, 5)), r_x1)
    return {"input": r_image.sum(0), "pool": r_pooled.sum(0), "conv3": r_x3.sum(0), "logit": logits[target]}


@pytest.mark.parametrize("bias", [True, False])
def test_lrp_equals_the_literal_rule_by_rule_computation(bias: bool) -> None:
    model = tiny_vgg(bias=bias)
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    targets = torch.tensor([[0, 2], [1, 1]])
    maps = lrp_maps(model, images, targets, ["input", "pool", "conv3"])
    for b in range(2):
        for t in range(2):
            want = literal_lrp(model, images[b], int(targets[b, t]))
            for layer in ("input", "pool", "conv3"):
                torch.testing.assert_close(maps[layer][b, t].double(), want[layer], rtol=1e-5, atol=1e-6)


def test_lrp_is_not_gradient_times_input() -> None:
    model = tiny_vgg(bias=False, bn_shift=False)
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    lrp = compute_saliency(model, images, [0, 1], ["input"], ["lrp", "linear_approx"])
    assert not torch.allclose(lrp["lrp"]["input"], lrp["linear_approx"]["input"], atol=1e-3)


def test_conservation_on_a_vgg_like_model() -> None:
    """No biases anywhere (BN with zero shift): every layer's relevance sums to the logit."""
    model = tiny_vgg(bias=False, bn_shift=False)
    images = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 0], [1, 2]])
    logits = model(images).gather(1, targets)
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box"):
        maps = lrp_maps(model, images, targets, ["input", "pool", "conv3"], composite=composite)
        for layer, relevance in maps.items():
            torch.testing.assert_close(relevance.sum(dim=(-2, -1)).double(), logits.detach(), rtol=1e-4, atol=1e-5,
                                       msg=f"{composite} {layer}")


def test_biases_absorb_relevance() -> None:
    model = tiny_vgg(bias=True)
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    targets = torch.tensor([[0], [1]])
    total = lrp_maps(model, images, targets, ["input"])["input"].sum(dim=(-2, -1))
    assert not torch.allclose(total.double(), model(images).gather(1, targets).detach(), rtol=1e-3)


def tiny_resnet(seed: int = 0) -> nn.Module:
    """torchvision ResNet (BasicBlock) with random BN scales and no bias anywhere after merging."""
    torch.manual_seed(seed)
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_var.uniform_(0.5, 2.0)
        model.fc.bias.zero_()
    return model.double().eval()


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_conservation_on_a_resnet_with_residual_sums(composite: str) -> None:
    """The canonizer routes residual sums through a rule: relevance is neither doubled nor lost."""
    model = tiny_resnet()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[1, 3], [0, 2]])
    logits = model(images).gather(1, targets).detach()
    layers = ["input", "relu", "maxpool", "layer1", "layer2.0", "layer3"]  # block boundaries (layer4: 1×1)
    maps = lrp_maps(model, images, targets, layers, composite=composite)
    for layer in layers:
        torch.testing.assert_close(maps[layer].sum(dim=(-2, -1)).double(), logits, rtol=1e-4, atol=1e-6, msg=layer)


def test_meta_lrp_is_lrp_at_the_hand_stepped_parameters() -> None:
    model = tiny_resnet().float()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[1, 3], [0, 0]])
    lr = 0.01
    got = compute_saliency(model, images, targets, ["input", "layer3"], ["lrp"], meta_lr=lr)["lrp"]
    for b in range(2):
        for t in range(2):
            stepped = copy.deepcopy(model)
            loss = F.cross_entropy(stepped(images[b : b + 1]), targets[b, t].view(1))
            grads = torch.autograd.grad(loss, list(stepped.parameters()))
            with torch.no_grad():
                for parameter, grad in zip(stepped.parameters(), grads):
                    parameter -= lr * grad
            want = lrp_maps(stepped, images[b : b + 1], targets[b, t].view(1, 1), ["input", "layer3"])
            for layer in ("input", "layer3"):
                torch.testing.assert_close(got[layer][b, t], want[layer][0, 0], rtol=1e-4, atol=1e-6)
    plain = compute_saliency(model, images, targets, ["input"], ["lrp"])["lrp"]["input"]
    assert not torch.allclose(plain, got["input"], atol=1e-4)


def test_salient_relevance_is_context_aware_saliency_of_the_lrp_map() -> None:
    model = tiny_resnet().float()
    images = torch.randn(2, 3, 32, 32)
    maps = compute_saliency(model, images, [1, 2], ["input", "layer2"], ["lrp", "salient_relevance"],
                            context_size=32)
    for layer in ("input", "layer2"):
        lrp = maps["lrp"][layer]
        want = context_aware_saliency(lrp.flatten(0, 1)[:, None], size=32).reshape(2, 1, 32, 32)
        torch.testing.assert_close(maps["salient_relevance"][layer], want)
    sized = compute_saliency(model, images, [1, 2], ["layer2"], ["salient_relevance"], context_size=32, output_size=32)
    assert sized["salient_relevance"]["layer2"].shape == (2, 1, 32, 32)


def test_output_to_logits_and_a_custom_zennit_composite() -> None:
    from zennit.composites import EpsilonAlpha2Beta1

    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_vgg(bias=False, bn_shift=False)

        def forward(self, x):
            return {"logits": self.net(x)}

    model = DictOut()
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = lrp_maps(model, images, torch.tensor([[0], [2]]), ["net.pool"], output_to_logits=lambda out: out["logits"])
    want = lrp_maps(model.net, images, torch.tensor([[0], [2]]), ["pool"])
    torch.testing.assert_close(got["net.pool"], want["pool"])
    custom = lrp_maps(model.net, images, torch.tensor([[0], [2]]), ["pool"], composite=EpsilonAlpha2Beta1())
    assert not torch.allclose(custom["pool"], want["pool"])


def test_no_trace_on_the_model_also_when_the_call_raises() -> None:
    model = tiny_resnet().float().train()
    model.layer1.eval()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    images = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    compute_saliency(model, images, [0, 1], ["input", "layer2"], ["lrp", "salient_relevance"], context_size=32)
    compute_saliency(model, images, [0, 1], ["layer2"], ["lrp"], meta_lr=0.01)
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match=r"Expected `targets` to be class indices in \[0, 4\)"):
        compute_saliency(model, images, [0, 9], ["layer2"], ["lrp"])
    assert_same(before, snapshot(model))
    assert all(type(m).forward is m.forward.__func__ for m in model.modules())  # no canonizer forward left


def test_inference_mode_and_autocast() -> None:
    model = tiny_resnet().float()
    images = torch.randn(2, 3, 32, 32)
    want = compute_saliency(model, images, [0, 1], ["layer2"], ["lrp"])["lrp"]["layer2"]
    with torch.inference_mode():
        got = compute_saliency(model, images.clone(), torch.tensor([0, 1]), ["layer2"], ["lrp"])["lrp"]["layer2"]
    torch.testing.assert_close(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = compute_saliency(model, images, [0, 1], ["layer2"], ["lrp"])["lrp"]["layer2"]
    assert low.dtype == torch.float32 and torch.isfinite(low).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lrp_composite": "epsilon"}, ValueError,
         "Expected `lrp_composite` to be one of ['epsilon_plus_flat', 'epsilon_gamma_box'] or a "
         "zennit.core.Composite, but got 'epsilon'."),
        ({"smooth": "backward"}, ValueError,
         "Expected `smooth=None` with the relevance methods ['lrp'] (smoothing changes gradients, not relevance "
         "rules), but got smooth='backward'."),
        ({"context_size": 4}, ValueError,
         "Expected `context_size` to be an int >= 32 (pixels: the smallest of the 4 scales must hold several "
         "7x7 patches), but got 4."),
    ],
)
def test_bad_relevance_arguments(kwargs: dict, error: type, message: str) -> None:
    model = tiny_vgg()
    with pytest.raises(error) as caught:
        compute_saliency(model, torch.randn(1, 3, 6, 6, dtype=torch.float64), [0], ["pool"], ["lrp"], **kwargs)
    assert str(caught.value) == message


def test_salient_relevance_of_a_non_finite_relevance_map_is_nan() -> None:
    from saliency_monitor.engine.relevance import salient_relevance

    relevance = torch.randn(2, 2, 16, 16)
    relevance[1, 0, 3, 3] = float("inf")
    detected = salient_relevance(relevance, 32)
    assert detected[1, 0].isnan().all()
    assert detected[[0, 0, 1], [0, 1, 1]].isfinite().all()
    torch.testing.assert_close(detected[0, 1], context_aware_saliency(relevance[0, 1][None, None], size=32)[0])


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_a_map_does_not_depend_on_the_other_images_of_its_batch(composite: str) -> None:
    model = tiny_resnet().float()
    images = torch.randn(3, 3, 32, 32)
    images[2] *= 5  # widens the batch's value range
    together = lrp_maps(model, images, torch.tensor([[1], [2], [0]]), ["input"], composite=composite)["input"]
    alone = lrp_maps(model, images[:1], torch.tensor([[1]]), ["input"], composite=composite)["input"]
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-7)
