"""examples.reproduce: each analysis on a tiny model and a tiny synthetic VOC set, the CLI end to end."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from examples.reproduce import analyses as A
from examples.reproduce import cli, data, models, pointing, report
from examples.voc_data import generate_synthetic_voc
from saliency_monitor import compute_saliency
from saliency_monitor.metrics import combine_maps, pointing_game
from saliency_monitor.monitor.evaluation import mean_stderr
from saliency_monitor.monitor.probes import ProbeBatch

SIZE = 32


class TinyVOCNet(nn.Module):
    """32 px -> 20 VOC logits. ``mix`` is a bias-free 1x1 conv with weight 2·I, so its output is
    exactly twice its input and NormGrad with and without the identity trick agree there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.mix = nn.Conv2d(8, 8, 1, bias=False)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 20)
        with torch.no_grad():
            self.mix.weight.copy_(2 * torch.eye(8)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.mix(self.relu1(self.bn1(self.conv1(x))))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    return generate_synthetic_voc(root, num_train=6, num_val=2, num_test=8, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def probes(voc_root: Path) -> ProbeBatch:
    return data.voc_probes(voc_root, "test", SIZE, None, seed=0)


@pytest.fixture(scope="module")
def train_probes(voc_root: Path) -> ProbeBatch:
    return data.voc_probes(voc_root, "trainval", SIZE, None, seed=0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyVOCNet().double().eval()


def direct_pointing(model: nn.Module, probes: ProbeBatch, method: str, layers: list[str], tolerance: float,
                    difficult: bool, gamma: list[float] | None = None, mode: str = "sum"):
    """Pointing game the slow way: one image at a time, all its classes as targets, one library call each."""
    masks = probes.class_masks(20)
    total = None
    for b, classes in enumerate(probes.classes):
        targets = torch.tensor([classes])
        maps = compute_saliency(model, probes.images[b:b + 1].double(), targets, layers, [method])[method]
        picked = maps[layers[0]] if gamma is None else combine_maps(maps, gamma, size=SIZE, mode=mode)
        result = pointing_game(picked, targets, masks[b:b + 1], tolerance, difficult=difficult)
        total = result if total is None else total + result
    return total


# --------------------------------------------------------------------------- identity


def test_identity_is_one_for_a_scaled_identity_conv_and_matches_a_literal_reference(model, probes) -> None:
    result = A.identity_check(model, probes, ["mix", "conv2"], num_classes=20, batch_size=3)
    assert result.kernels == {"mix": (1, 1), "conv2": (3, 3)}
    torch.testing.assert_close(result.correlations["mix"], torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)

    images = probes.images.double()
    captured = {}
    handle = model.conv2.register_forward_hook(lambda m, args, out: captured.update(x_in=args[0], x_out=out))
    logits = model(images.requires_grad_(True))
    handle.remove()
    target = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured["x_out"])
    x_in, x_out = captured["x_in"].detach(), captured["x_out"].detach()
    with_identity = g.norm(dim=1) * x_out.norm(dim=1)
    patches = F.unfold(x_in, kernel_size=3, padding=1, stride=2).norm(dim=1).view(8, 16, 16)
    without = g.norm(dim=1) * patches
    up = [F.interpolate(m[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0] for m in
          (with_identity, without)]
    expected = [spearmanr(up[0][b].ravel(), up[1][b].ravel())[0] for b in range(8)]
    np.testing.assert_allclose(result.correlations["conv2"].numpy(), expected, atol=1e-5)
    assert min(expected) < 0.999  # a 3x3 conv: a real comparison, not the trivial case

    for method in A.IDENTITY_METHODS:
        direct = direct_pointing(model, probes, method, ["conv2"], result.tolerance, difficult=False)
        assert torch.equal(result.pointing[method]["conv2"].hits, direct.hits)
        assert torch.equal(result.pointing[method]["conv2"].misses, direct.misses)


# --------------------------------------------------------------------------- layers


def test_layer_table_numbers_equal_direct_pointing_game_calls(model, probes, train_probes, tmp_path) -> None:
    layers = ["conv1", "conv2"]
    result = A.layer_combination(model, probes, layers, num_classes=20, weight_probes=train_probes, batch_size=3)
    assert result.tolerance == pytest.approx(15 * SIZE / 224)
    assert set(result.weights) == {"uniform", "linear", "feature_spread", "probe_accuracy"}
    for method in ("linear_approx", "norm_grad_selective"):
        for difficult, subset in ((False, "all"), (True, "difficult")):
            for layer in layers:
                direct = direct_pointing(model, probes, method, [layer], result.tolerance, difficult)
                got = result.scores[method][layer][subset]
                assert torch.equal(got.hits, direct.hits) and torch.equal(got.misses, direct.misses)
            gamma = result.weights["probe_accuracy"].tolist()
            direct = direct_pointing(model, probes, method, layers, result.tolerance, difficult, gamma, "product")
            got = result.scores[method]["probe_accuracy product"][subset]
            assert torch.equal(got.hits, direct.hits) and torch.equal(got.misses, direct.misses)
        best = result.best_layer(method, "all")
        assert result.gain(method, best, "all")[0] == 0
    assert len(result.pair_classes) == sum(len(c) for c in probes.classes) == len(result.hits["linear_approx"]["conv1"])

    written = report.write_layers(result, tmp_path, report.Setting("tiny", "tiny VOC", "cmd", 1.0))
    text = written.markdown.read_text()
    accuracy = float(direct_pointing(model, probes, "linear_approx", ["conv2"], result.tolerance, False).accuracy)
    assert f"| `conv2` | 16×16 | {accuracy * 100:.1f} ± " in text.split("### norm_grad_selective")[0]
    assert "**Verdict.**" in text and Image.open(written.figure).size[0] > 100


# --------------------------------------------------------------------------- class sensitivity, meta-gap, randomization


def test_class_sensitivity_matches_scipy(model, probes) -> None:
    result = A.class_sensitivity_analysis(model, probes, ["conv1", "conv2"], methods=["linear_approx", "norm_grad"],
                                          meta_lr=0.5, batch_size=8)
    targets = model(probes.images.double()).topk(20).indices[:, [0, -1]]
    maps = compute_saliency(model, probes.images.double(), targets, ["conv2"], ["norm_grad"], output_size=SIZE)
    expected = [spearmanr(maps["norm_grad"]["conv2"][b, 0].ravel(), maps["norm_grad"]["conv2"][b, 1].ravel())[0]
                for b in range(8)]
    np.testing.assert_allclose(result.plain["norm_grad"]["conv2"].numpy(), expected, atol=1e-5)
    assert result.meta["linear_approx"]["conv1"].shape == (8,)
    assert not torch.allclose(result.meta["linear_approx"]["conv1"], result.plain["linear_approx"]["conv1"])


def test_class_sensitivity_takes_the_relevance_methods(model, probes) -> None:
    result = A.class_sensitivity_analysis(model, probes, ["conv2"], methods=["lrp", "salient_relevance"],
                                          meta_lr=0.5, batch_size=8)
    targets = model(probes.images.double()).topk(20).indices[:, [0, -1]]
    maps = compute_saliency(model, probes.images.double(), targets, ["conv2"], ["lrp"])["lrp"]["conv2"]
    want = [spearmanr(F.interpolate(maps[b : b + 1], size=SIZE, mode="bilinear")[0, 0].ravel(),
                      F.interpolate(maps[b : b + 1], size=SIZE, mode="bilinear")[0, 1].ravel())[0] for b in range(8)]
    np.testing.assert_allclose(result.plain["lrp"]["conv2"].numpy(), want, atol=1e-5)
    assert result.meta["salient_relevance"]["conv2"].isfinite().all()

def test_meta_gap_per_checkpoint(model, probes, train_probes) -> None:
    other = TinyVOCNet().double().eval()
    result = A.meta_gap([(0, other), (3, model)], train_probes, probes, ["conv1", "conv2"], meta_lr=1e-9)
    assert result.epochs == (0, 3) and result.layers == ("conv1", "conv2", "combined")
    for split, count in ((result.train, len(train_probes)), (result.val, len(probes))):
        for method in ("norm_grad", "norm_grad_selective"):
            for layer in result.layers:
                rho = split[method][layer]
                assert rho.shape == (2, count)
                assert rho.min() > 0.999  # a vanishing meta step leaves the map as it is
    larger = A.meta_gap([(1, model)], train_probes, probes, ["conv2"], methods=["norm_grad"], meta_lr=5.0)
    assert larger.val["norm_grad"]["conv2"].mean() < 0.999


def test_randomization_analysis_explains_the_predicted_class(model, probes) -> None:
    analysis = A.randomization(model, probes.select([0, 1]), ["conv2"], methods=["gradient"], meta_lr=None)
    result = analysis.result
    assert result.steps == ("original", "fc", "conv2", "mix", "bn1", "conv1")
    assert torch.equal(result.targets, model(probes.images[:2].double()).argmax(1))
    assert set(result.correlations) == {"gradient"}


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=20).state_dict(), path)
    return path


def test_cli_all_end_to_end(voc_root, resnet_weights, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    reports = cli.main([
        "all", "--arch", "resnet18", "--weights", str(resnet_weights), "--voc-root", str(voc_root),
        "--num-images", "2", "--image-size", str(SIZE), "--out", str(out), "--layers", "conv1", "layer2.0.conv1",
        "--checkpoints", str(resnet_weights), "--batchnorm", "keep", "--methods", "linear_approx", "norm_grad",
    ])
    assert list(reports) == ["identity", "layers", "class-sensitivity", "meta-gap", "gap-vs-loss", "randomization"]
    for name in ("identity", "layers", "class_sensitivity", "meta_gap", "gap_vs_loss", "randomization"):
        text = (out / f"{name}.md").read_text()
        assert "| " in text and "**Verdict.**" in text and "Paper" in text and " ± " in text
        assert Image.open(out / f"{name}.png").size[0] > 100
    readme = (out / "README.md").read_text()
    assert "python -m examples.reproduce all --arch resnet18" in readme and readme.count("**Verdict.**") == 6
    assert "Data: VOC 2007 at" in readme and "2 images at 32 px" in readme
    assert "identity: " in capsys.readouterr().out


def image_folder(folder: Path) -> Path:
    """An ImageFolder of two classes (cat, dog) with two random 40x48 images each."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def test_cli_image_folder_without_boxes(resnet_weights, tmp_path) -> None:
    folder = image_folder(tmp_path / "images")
    probes = data.folder_probes(folder, SIZE, None, seed=0)
    assert probes.task == "multiclass" and probes.classes == ((0,), (0,), (1,), (1,)) and probes.boxes is None
    assert probes.images.shape == (4, 3, SIZE, SIZE)
    out = tmp_path / "out"
    reports = cli.main(["identity", "--arch", "resnet18", "--weights", "none", "--images", str(folder),
                        "--image-size", str(SIZE), "--out", str(out), "--layers", "conv1", "layer1.0.conv2"])
    text = reports["identity"].markdown.read_text()
    assert "| `conv1` | 7×7 | 16×16 |" in text and "pointing NG (%)" not in text  # no boxes: no pointing game


def test_python_m_examples_reproduce_runs_the_cli(tmp_path) -> None:
    folder, out = image_folder(tmp_path / "images"), tmp_path / "out"
    argv = ["identity", "--arch", "resnet18", "--weights", "none", "--images", str(folder), "--image-size", str(SIZE),
            "--out", str(out), "--layers", "conv1"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "examples.reproduce", *argv], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "identity: " in done.stdout and (out / "identity.png").is_file()
    assert "- Command: `python -m examples.reproduce identity --arch resnet18" in (out / "identity.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: {identity,layers,class-sensitivity,meta-gap,gap-vs-loss,"
             "randomization,all}"),
        (["plot"], "argument {identity,layers,class-sensitivity,meta-gap,gap-vs-loss,randomization,all}: invalid "
                   "choice: 'plot'"),
        (["all", "--arch", "resnet9000", "--weights", "none"],
         "argument --arch: expected a torchvision classification model name such as resnet18, resnet50 or vgg16, "
         "but got 'resnet9000'"),
        (["all", "--weights", "DEFAULT"], "argument --weights: expected --arch too"),
        (["all", "--arch", "resnet18"], "argument --arch: expected --weights too"),
        (["layers", "--num-images", "0"], "argument --num-images: expected a positive integer, but got '0'"),
        (["layers", "--image-size", "8"], "argument --image-size: expected an image size >= 16 pixels, but got '8'"),
        (["class-sensitivity", "--meta-lr", "0"], "argument --meta-lr: expected a finite non-zero number, but got '0'"),
        (["identity", "--methods", "gradient"], "argument --methods: identity always compares norm_grad with "
                                                "norm_grad_conv"),
        (["layers", "--methods", "gradcam"], "argument --methods: Expected `methods` to hold methods in"),
        (["layers", "--voc-root", "/nonexistent/voc", "--arch", "resnet18", "--weights", "none"],
         "argument --voc-root: expected an existing folder, but got '/nonexistent/voc'"),
        (["layers", "--voc-root", "/tmp", "--images", "/tmp"],
         "argument --images: not allowed with argument --voc-root"),
        (["layers", "--voc-root", "/tmp"], "argument --voc-root/--images: expected --arch and --weights too"),
        (["meta-gap", "--train-images", "/tmp"], "argument --train-images: expected --images too"),
        (["randomization", "--batchnorm", "drop"], "argument --batchnorm: invalid choice: 'drop'"),
    ],
)
def test_argparse_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as error:
        cli.parse_args(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- loading


def test_build_model_reads_state_dicts_and_lightning_checkpoints(tmp_path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=20)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "lightning.ckpt")
    loaded = models.build_model("resnet18", tmp_path / "lightning.ckpt", 20)
    assert not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(SystemExit, match=r"^Expected .*plain.pt to hold the parameters of SqueezeNet, but keys differ"):
        models.build_model("squeezenet1_1", tmp_path / "plain.pt", 20)
    with pytest.raises(SystemExit, match=r"^Could not load resnet18 weights 'NOT_A_WEIGHT': not a file, and "
                                         r"torchvision could not provide them \(KeyError"):
        models.build_model("resnet18", "NOT_A_WEIGHT", None)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"^Could not read a state dict from .*junk.pt \(UnpicklingError"):
        models.build_model("resnet18", tmp_path / "junk.pt", 20)


def test_scaled_tolerance_and_statistics() -> None:
    assert pointing.scaled_tolerance(224) == 15 and pointing.scaled_tolerance(64) == pytest.approx(4.2857, abs=1e-4)
    mean, se, n = mean_stderr(torch.tensor([1.0, 2.0, 3.0, math.nan], dtype=torch.float64))
    assert (mean, n) == (2.0, 3) and se == pytest.approx(1 / math.sqrt(3))
