"""Cascading model-parameter randomisation (saliency_monitor.analysis.sanity) against a literal reference."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from saliency_monitor import compute_saliency
from saliency_monitor.analysis.sanity import ORIGINAL, cascading_randomization, randomization_order


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> conv -> ReLU -> 4x4 pool -> fc; 16x16 inputs, 4 classes. ``fc`` is
    defined first so that definition order differs from forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * 4 * 4, 4)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright 5x5 blob in one quadrant; the class is the quadrant."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    for i, label in enumerate(labels.tolist()):
        top, left = 8 * (label // 2) + 1, 8 * (label % 2) + 1
        dy, dx = torch.randint(0, 3, (2,), generator=g).tolist()
        images[i, :, top + dy : top + dy + 5, left + dx : left + dx + 5] += 2.0
    return images, labels


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    images, labels = quadrant_data(256, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(60):
        batch = slice(32 * (step % 8), 32 * (step % 8) + 32)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_order_is_reverse_forward_order_and_keep_skips_batchnorm(trained: nn.Module) -> None:
    images, _ = quadrant_data(2, seed=1)
    assert randomization_order(trained, images) == ["fc", "conv2", "bn1", "conv1"]
    assert randomization_order(trained, images, batchnorm="keep") == ["fc", "conv2", "conv1"]


def test_original_model_and_global_rng_untouched(trained: nn.Module) -> None:
    images, _ = quadrant_data(3, seed=1)
    trained.train()  # a training-mode model comes back in training mode, BatchNorm statistics unchanged
    before = copy.deepcopy(trained.state_dict())
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    try:
        cascading_randomization(trained, images, torch.tensor([0, 1, 2]), layer="conv2", method="linear_approx",
                                meta_lr=0.01)
        assert torch.equal(torch.get_rng_state(), rng)
        after = trained.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert trained.training and all(p.grad is None for p in trained.parameters())
    finally:
        trained.eval()


def test_correlations_match_a_literal_reference(trained: nn.Module) -> None:
    """Step k: reset the last k modules (each under the documented seed), recompute, scipy ρ."""
    images, _ = quadrant_data(3, seed=2)
    targets = trained(images).argmax(1)
    result = cascading_randomization(trained, images, targets, layer=["input", "conv2"],
                                     method=["linear_approx", "norm_grad_selective"], seed=5)
    assert result.steps == (ORIGINAL, "fc", "conv2", "bn1", "conv1")
    clone = copy.deepcopy(trained)
    modules = dict(clone.named_modules())
    maps = []
    for name in (None, *result.steps[1:]):
        if name is not None:
            digest = hashlib.sha256(f"5:{name}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
            modules[name].reset_parameters()
        maps.append(compute_saliency(clone, images, targets, ["input", "conv2"],
                                     ["linear_approx", "norm_grad_selective"], output_size=16))
    for method in ("linear_approx", "norm_grad_selective"):
        for layer in ("input", "conv2"):
            expected = [[spearmanr(step[method][layer][b, 0].ravel(), maps[0][method][layer][b, 0].ravel())[0]
                         for b in range(3)] for step in maps]
            np.testing.assert_allclose(result.correlations[method][layer].numpy(), expected, atol=1e-6)
    assert modules["bn1"].running_var.eq(1).all() and modules["bn1"].weight.eq(1).all()  # BN reset to its init


def test_step_zero_is_one_and_correlation_falls_on_a_trained_model(trained: nn.Module) -> None:
    images, _ = quadrant_data(16, seed=3)
    targets = trained(images).argmax(1)
    result = cascading_randomization(trained, images, targets, layer="input",
                                     method=["linear_approx", "norm_grad_selective"], meta_lr=0.01)
    assert set(result.correlations) == {"linear_approx", "norm_grad_selective", "linear_approx+meta",
                                        "norm_grad_selective+meta"}
    for key, per_layer in result.correlations.items():
        rho = per_layer["input"]
        assert rho.shape == (5, 16) and torch.equal(rho[0], torch.ones(16, dtype=torch.float64))
        means = rho.nanmean(1)  # trained model: 1, then far lower once anything is random
        assert means[1:].max() < 0.8 and means[-1] < 0.4, (key, means)
        if key.endswith("+meta"):  # meta maps fall gradually (they randomise later, §4.5)
            assert means[-1] < means[1] - 0.2, (key, means)


def test_seeded_independently_of_the_global_rng(trained: nn.Module) -> None:
    images, _ = quadrant_data(2, seed=4)
    targets = torch.tensor([0, 3])

    def run(seed: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        return cascading_randomization(trained, images, targets, layer="conv2", method="gradient",
                                       seed=seed).correlations["gradient"]["conv2"]

    assert torch.equal(run(0, 1), run(0, 2))
    assert not torch.equal(run(0, 1), run(1, 1))


def test_explicit_modules(trained: nn.Module) -> None:
    images, _ = quadrant_data(2, seed=4)
    result = cascading_randomization(trained, images, torch.tensor([0, 1]), layer="conv1", method="gradient",
                                     modules=["fc"])
    assert result.steps == (ORIGINAL, "fc")


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = Scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x)).mean(dim=(2, 3))


class RootParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) + self.bias


def test_errors(trained: nn.Module) -> None:
    images, _ = quadrant_data(2, seed=4)
    targets = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"^Expected `batchnorm` to be one of \['reset', 'keep'\], but got 'drop'\.$"):
        cascading_randomization(trained, images, targets, layer="conv1", batchnorm="drop")
    with pytest.raises(ValueError, match=r"^Expected `targets` to be \(2,\) integer class indices \(one per image\), "
                                         r"but got torch.int64 of shape \(2, 1\)\.$"):
        cascading_randomization(trained, images, targets[:, None], layer="conv1")
    with pytest.raises(TypeError, match=r"^Expected `seed` to be an int, but got 1.5\.$"):
        cascading_randomization(trained, images, targets, layer="conv1", seed=1.5)
    with pytest.raises(ValueError, match=r"^Expected `modules` to be names from model.named_modules\(\), but got "
                                         r"'conv9'\.$"):
        cascading_randomization(trained, images, targets, layer="conv1", modules=["conv9"])
    with pytest.raises(TypeError, match=r"^Expected every module in `modules` to have reset_parameters\(\), but "
                                        r"'relu1' \(ReLU\) has none\.$"):
        cascading_randomization(trained, images, targets, layer="conv1", modules=["relu1"])
    with pytest.raises(TypeError, match=r"^Expected every parameterised module to have reset_parameters\(\) to "
                                        r"re-initialise it, but 'scale' \(Scale\) has none; pass `modules=` "
                                        r"without it\.$"):
        randomization_order(NoReset(), images)
    with pytest.raises(ValueError, match=r"^Expected the model's parameters to live in submodules, but the model "
                                         r"itself holds \['bias'\]: they cannot be randomised\.$"):
        randomization_order(RootParameter(), images)
