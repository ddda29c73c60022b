"""Re-run the analyses of "There and Back Again" (Rebuffi et al., CVPR 2020) with saliency-monitor.

    .ci/venv python examples/reproduce.py all                 # synthetic VOC + cached ResNet-18 (see below)
    .ci/venv python examples/reproduce.py identity --arch resnet50 --weights model.ckpt --voc-root ~/data
    .ci/venv python examples/reproduce.py class-sensitivity --arch vgg16 --weights DEFAULT --images ~/imagenet-val

Subcommands (each writes OUT/<name>.md, a table with mean ± standard error and N, the paper's
reference values and a verdict computed from the numbers, and OUT/<name>.png):

  identity           §4.1, supp. B Table 4: NormGrad with vs without the virtual identity trick
  layers             §4.2, Table 3, supp. Table 6: pointing game per layer and layer combination
  class-sensitivity  §4.3 Fig. 6, §4.4 Fig. 7: ρ(max-class map, min-class map), plain and meta
  meta-gap           supp. D Fig. 10: ρ(map, meta map) on train vs val images, per checkpoint
  randomization      §4.5: cascading model-weight randomisation (Adebayo et al. 2018)
  all                every analysis, plus OUT/README.md with every table and verdict

Default (no model or data option): the synthetic VOC data of examples/voc_data.py and a
ResNet-18 (64 px) trained by examples/voc_finetune.py with its offline defaults, trained once and
cached with its per-epoch checkpoints under ~/.cache/saliency-monitor/reproduce/ (once: 464 s
measured on 2 shared CPU cores; `all` then takes about 20 minutes there, most of it in meta-gap
and randomization, whose meta maps need one inner step per image). Analyses use the VOC "test"
split; weight fitting (layers) and the meta-gap's training images use "trainval", the split the
model was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples import reproduce_analyses as A  # noqa: E402
from examples.voc_data import (  # noqa: E402
    IMAGE_SETS, IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, VOCClassification, collate,
)
from saliency_monitor import default_layers  # noqa: E402
from saliency_monitor.engine.model_io import model_logits  # noqa: E402
from saliency_monitor.metrics import mean_stderr  # noqa: E402
from saliency_monitor.monitor.probes import ProbeBatch, parse_batch  # noqa: E402
from saliency_monitor.engine.methods import get_method  # noqa: E402
from saliency_monitor.analysis.sanity import BATCHNORM_MODES  # noqa: E402

ANALYSES = ("identity", "layers", "class-sensitivity", "meta-gap", "randomization")
COMMANDS = (*ANALYSES, "all")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saliency-monitor" / "reproduce"
DEFAULT_ARCH = "resnet18"
DEFAULT_SIZE = 64
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
SCRAMBLED = 0.3
"""Randomisation: a mean ρ below this counts as 'scrambled' (the paper judges by eye)."""


# --------------------------------------------------------------------------- the default model


@dataclass(frozen=True)
class TrainedRun:
    """The cached voc_finetune run: its data, per-epoch checkpoints and how long it took."""

    directory: Path
    data_root: Path
    checkpoints: tuple[Path, ...]
    train_seconds: float

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]


def default_run(cache: Path = CACHE, *, train: bool = True) -> TrainedRun:
    """The synthetic-VOC ResNet-18 trained by ``voc_finetune.main`` with its offline defaults.

    Trained on first use (only the output paths differ from the defaults: the data, W&B run
    and picture go to the cache folder; per-epoch checkpoints via ``--checkpoint-dir``) and
    reused afterwards: a ``run.json`` written last marks a complete run.
    """
    argv = ["--data-dir", "{dir}/synthetic-voc", "--checkpoint-dir", "{dir}/checkpoints",
            "--wandb-dir", "{dir}/wandb", "--picture", "{dir}/voc_saliency.png"]
    key = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    directory = Path(cache) / f"voc_finetune-{key}"
    marker = directory / "run.json"
    if not marker.is_file():
        if not train:
            raise SystemExit(f"No cached default model in {directory}; run without --no-train to train it (once).")
        _train_default(directory, [a.format(dir=directory) for a in argv], marker)
    info = json.loads(marker.read_text())
    checkpoints = tuple(sorted((directory / "checkpoints").glob("epoch_*.pt")))
    return TrainedRun(directory, directory / "synthetic-voc", checkpoints, float(info["train_seconds"]))


def _train_default(directory: Path, argv: list[str], marker: Path) -> None:
    from examples import voc_finetune

    print(f"Training the default synthetic-VOC model once (voc_finetune {' '.join(argv)}) ...", flush=True)
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline" if previous is None else previous
    start = time.perf_counter()
    try:
        voc_finetune.main(argv)
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"voc_finetune_argv": argv, "train_seconds": seconds}, indent=2) + "\n")
    print(f"Trained in {seconds:.0f} s; cached in {directory}", flush=True)


# --------------------------------------------------------------------------- models


def build_model(arch: str, weights: str | Path | None, num_classes: int | None) -> nn.Module:
    """``torchvision.models.<arch>`` in eval mode with ``weights``.

    ``weights``: a path to a state dict or a Lightning checkpoint (its ``state_dict``, with the
    wrapper's prefix such as ``model.`` removed) for a model with ``num_classes`` outputs; a
    torchvision weights name such as ``DEFAULT`` or ``IMAGENET1K_V1`` (downloaded by torchvision,
    its own head kept); or None for a seeded random initialisation.
    """
    if weights is None:
        return torchvision.models.get_model(arch, num_classes=num_classes).eval()
    if Path(weights).is_file():
        model = torchvision.models.get_model(arch, num_classes=num_classes)
        model.load_state_dict(_matching_state(load_state_dict(Path(weights)), model, Path(weights)))
        return model.eval()
    try:
        return torchvision.models.get_model(arch, weights=str(weights)).eval()
    except Exception as error:  # an unknown name, or no network: say which, never fall back
        raise SystemExit(
            f"Could not load {arch} weights {str(weights)!r}: not a file, and torchvision could not provide them "
            f"({type(error).__name__}: {error})."
        ) from error


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by ``torch.save`` or a Lightning checkpoint's ``state_dict`` (CPU tensors)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise SystemExit(f"Could not read a state dict from {path} ({type(error).__name__}: {error}).") from error
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise SystemExit(f"Expected {path} to hold a state dict (name -> tensor) or a Lightning checkpoint.")
    return content


def _matching_state(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    wanted = set(model.state_dict())
    candidate = state
    while candidate and set(candidate) != wanted:
        heads = {k.split(".", 1)[0] for k in candidate}
        if len(heads) != 1 or not all("." in k for k in candidate):
            break
        candidate = {k.split(".", 1)[1]: v for k, v in candidate.items()}  # drop a wrapper prefix
    if set(candidate) != wanted:
        missing, unexpected = sorted(wanted - set(state))[:3], sorted(set(state) - wanted)[:3]
        raise SystemExit(
            f"Expected {path} to hold the parameters of {type(model).__name__}, but keys differ "
            f"(missing e.g. {missing}, unexpected e.g. {unexpected})."
        )
    return candidate


# --------------------------------------------------------------------------- data


def voc_probes(root: Path, split: str, image_size: int, num_images: int | None, seed: int) -> ProbeBatch:
    """A seeded subset (sorted indices) of a VOC split, with boxes, as a multilabel ProbeBatch."""
    dataset = VOCClassification(root, split, image_size, train=False)
    items = [dataset[i] for i in _subset(len(dataset), num_images, seed)]
    return parse_batch(collate(items))


def folder_probes(root: Path, image_size: int, num_images: int | None, seed: int) -> ProbeBatch:
    """A seeded subset of an ImageFolder (class sub-folders; label = folder index), multiclass."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize((image_size, image_size)), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    items = [dataset[i] for i in _subset(len(dataset), num_images, seed)]
    images = torch.stack([image for image, _ in items])
    return ProbeBatch(images, tuple((label,) for _, label in items), "multiclass")


def _subset(length: int, num: int | None, seed: int) -> list[int]:
    if num is None or num >= length:
        return list(range(length))
    return sorted(torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:num].tolist())


# --------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {text!r}")
    return value


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"expected an image size >= 16 pixels, but got {text!r}")
    return value


def _meta_lr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite non-zero number, but got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model (default: the cached synthetic-VOC ResNet-18)")
    model.add_argument("--arch", help="torchvision classification model name, e.g. resnet50, vgg16")
    model.add_argument("--weights", help="a state dict / Lightning checkpoint path, a torchvision weights name "
                                         "(DEFAULT, IMAGENET1K_V1, ...), or 'none' (random init)")
    model.add_argument("--checkpoints", type=Path, nargs="+", metavar="PATH",
                       help="meta-gap: checkpoints in training order, or a folder of them (sorted by name; the "
                            "number in a name is its epoch); default: the default model's epochs, else --weights")
    model.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    data = common.add_argument_group("data (default: the synthetic VOC set the default model was trained on)")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--voc-root", type=Path, help="folder holding VOCdevkit/VOC2007 (boxes: pointing game)")
    source.add_argument("--images", type=Path, help="ImageFolder: one sub-folder per class (no boxes)")
    data.add_argument("--train-images", type=Path, help="with --images: training images (ImageFolder) for meta-gap")
    data.add_argument("--split", choices=IMAGE_SETS, default="test", help="VOC split analysed (default: test)")
    data.add_argument("--train-split", choices=IMAGE_SETS, default="trainval",
                      help="VOC split the model was trained on (default: trainval)")
    data.add_argument("--num-images", type=_positive_int, default=64, help="images per split (default: 64)")
    data.add_argument("--image-size", type=_image_size, help="default: 64 (synthetic), 224 otherwise")
    run = common.add_argument_group("analysis")
    run.add_argument("--out", type=Path, default=Path("docs/reproduce"), help="output folder (default: docs/reproduce)")
    run.add_argument("--seed", type=int, default=0, help="image subset and randomisation seed (default: 0)")
    run.add_argument("--methods", nargs="+", help="saliency methods (default: each analysis' own, see its .md)")
    run.add_argument("--layers", nargs="+", help="layer names (default: identity: every Conv2d; others: "
                                                 "saliency_monitor.default_layers)")
    run.add_argument("--meta-lr", type=_meta_lr, default=0.002, help="meta-saliency step (default: 0.002 = 2ε)")
    run.add_argument("--batchnorm", choices=BATCHNORM_MODES, default="reset",
                     help="randomization: reset BatchNorm layers as steps of their own, or keep them trained")
    run.add_argument("--batch-size", type=_positive_int, default=16, help="images per saliency call (default: 16)")
    parser = argparse.ArgumentParser(
        prog="reproduce.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name in COMMANDS:
        commands.add_parser(name, parents=[common], help=f"run {name}")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.weights is not None and args.arch is None:
        parser.error("argument --weights: expected --arch too (the torchvision model the weights belong to)")
    if args.arch is not None:
        if args.arch not in torchvision.models.list_models(module=torchvision.models):
            parser.error(f"argument --arch: expected a torchvision classification model name such as resnet18, "
                         f"resnet50 or vgg16, but got {args.arch!r}")
        if args.weights is None:
            parser.error("argument --arch: expected --weights too (a checkpoint path, a torchvision weights name, "
                         "or 'none')")
    args.default_model = args.arch is None
    if args.default_model and (args.images or args.voc_root):
        parser.error("argument --voc-root/--images: expected --arch and --weights too (the default model is "
                     "trained on the synthetic data only)")
    if args.train_images is not None and args.images is None:
        parser.error("argument --train-images: expected --images too (with --voc-root the training split is "
                     "--train-split)")
    for name in ("voc_root", "images", "train_images"):
        path = getattr(args, name)
        if path is not None and not path.is_dir():
            parser.error(f"argument --{name.replace('_', '-')}: expected an existing folder, but got '{path}'")
    if args.voc_root is not None and not (args.voc_root / "VOCdevkit" / "VOC2007").is_dir():
        parser.error(f"argument --voc-root: expected a folder holding VOCdevkit/VOC2007, but got '{args.voc_root}'")
    for path in args.checkpoints or []:
        if not path.exists():
            parser.error(f"argument --checkpoints: expected existing files or folders, but got '{path}'")
    if args.methods is not None:
        if args.command == "identity":
            parser.error("argument --methods: identity always compares norm_grad with norm_grad_conv")
        for method in args.methods:
            try:
                get_method(method)
            except (TypeError, ValueError) as error:
                parser.error(f"argument --methods: {error}")
    try:
        torch.device(args.device)
    except RuntimeError:
        parser.error(f"argument --device: expected a torch device such as cpu or cuda, but got {args.device!r}")
    if args.weights is not None and args.weights.lower() == "none":
        args.weights = None
    args.image_size = args.image_size or (DEFAULT_SIZE if args.default_model else 224)
    return args


# --------------------------------------------------------------------------- running


@dataclass
class Context:
    """Everything the analyses need, resolved from the options."""

    args: argparse.Namespace
    model: nn.Module
    num_classes: int
    probes: ProbeBatch
    train_probes: ProbeBatch | None
    checkpoints: list[tuple[int, Path]] | None
    model_text: str
    data_text: str
    run: TrainedRun | None = None

    def checkpoint_models(self) -> Iterator[tuple[int, nn.Module]]:
        if self.checkpoints is None:
            yield 0, self.model
            return
        for epoch, path in self.checkpoints:
            yield epoch, _to(build_model(self.args.arch, path, self.num_classes), self.args.device)


def resolve(args: argparse.Namespace) -> Context:
    """Load the model, the analysed images and (when available) the training images."""
    run = None
    if args.default_model:
        run = default_run()
        args.arch, args.weights = DEFAULT_ARCH, run.final
        root, num_classes = run.data_root, len(VOC_CLASSES)
        data_text = f"synthetic VOC 2007 (examples/voc_data.py), {args.split} split"
    elif args.voc_root is not None:
        root, num_classes = args.voc_root, len(VOC_CLASSES)
        data_text = f"VOC 2007 at {args.voc_root}, {args.split} split"
    else:
        root, num_classes = None, len(torchvision.datasets.folder.find_classes(str(args.images))[0])
        data_text = f"ImageFolder {args.images}"
    if root is not None:
        probes = voc_probes(root, args.split, args.image_size, args.num_images, args.seed)
        train = voc_probes(root, args.train_split, args.image_size, args.num_images, args.seed)
    else:
        probes = folder_probes(args.images, args.image_size, args.num_images, args.seed)
        train = None
        if args.train_images is not None:
            train = folder_probes(args.train_images, args.image_size, args.num_images, args.seed)
    model = _to(build_model(args.arch, args.weights, num_classes), args.device)
    outputs = model_logits(model, probes.images[:1].to(args.device)).shape[1]
    if root is not None and outputs != len(VOC_CLASSES):
        raise SystemExit(
            f"Expected a VOC classifier ({len(VOC_CLASSES)} outputs) for VOC data, but {args.arch} with --weights "
            f"{args.weights} has {outputs}; fine-tune it on VOC first (examples/voc_finetune.py) and pass that "
            "checkpoint."
        )
    largest = max(c[-1] for c in probes.classes)
    if largest >= outputs:
        raise SystemExit(
            f"Expected the model's {outputs} outputs to cover the data's classes, but a label is {largest}."
        )
    checkpoints = _checkpoint_list(args, run)
    weights = "random init" if args.weights is None else str(args.weights)
    model_text = f"{args.arch} ({'cached voc_finetune default run, ' if run else ''}{weights})"
    data_text += f", {len(probes)} images at {args.image_size} px (seed {args.seed})"
    return Context(args, model, outputs, probes, train, checkpoints, model_text, data_text, run)


def _to(model: nn.Module, device: str) -> nn.Module:
    return model.to(torch.device(device)).eval()


def _checkpoint_list(args: argparse.Namespace, run: TrainedRun | None) -> list[tuple[int, Path]] | None:
    if args.checkpoints:
        paths = [p for path in args.checkpoints for p in (sorted(path.iterdir()) if path.is_dir() else [path])
                 if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
        if not paths:
            suffixes = ", ".join(CHECKPOINT_SUFFIXES)
            raise SystemExit(f"Expected checkpoint files ({suffixes}) in --checkpoints, but found none.")
    elif run is not None:
        paths = list(run.checkpoints)
    else:
        return None  # meta-gap on the one model given
    return [(_epoch(p, i), p) for i, p in enumerate(paths)]


def _epoch(path: Path, index: int) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else index


def run_analysis(name: str, ctx: Context) -> tuple[object, float]:
    """Run one analysis; (result, seconds)."""
    args = ctx.args
    probes = ctx.probes
    layers = args.layers or default_layers(ctx.model, probes.images[:1].to(args.device))
    methods = {"methods": tuple(args.methods)} if args.methods else {}
    start = time.perf_counter()
    if name == "identity":
        result = A.identity_check(ctx.model, probes, args.layers, num_classes=ctx.num_classes,
                                  batch_size=args.batch_size)
    elif name == "layers":
        if probes.boxes is None or ctx.train_probes is None:
            raise SystemExit("layers: the pointing game needs boxes (--voc-root, or the default synthetic data).")
        result = A.layer_combination(ctx.model, probes, layers, num_classes=ctx.num_classes,
                                     weight_probes=ctx.train_probes, batch_size=args.batch_size, **methods)
    elif name == "class-sensitivity":
        result = A.class_sensitivity_analysis(ctx.model, probes, layers, meta_lr=args.meta_lr,
                                              batch_size=args.batch_size, **methods)
    elif name == "meta-gap":
        if ctx.train_probes is None:
            raise SystemExit("meta-gap: needs training images (--train-images with --images).")
        result = A.meta_gap(ctx.checkpoint_models(), ctx.train_probes, probes, layers, meta_lr=args.meta_lr,
                            batch_size=args.batch_size, **methods)
    else:
        result = A.randomization(ctx.model, probes, layers, meta_lr=args.meta_lr, seed=args.seed,
                                 batchnorm=args.batchnorm, **methods)
    return result, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict[str, Report]:
    """Parse, run the analyses, write OUT/<name>.md and .png; returns each analysis' report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start = time.perf_counter()
    ctx = resolve(args)
    command = "python examples/reproduce.py " + shlex.join(argv)
    setup_seconds = time.perf_counter() - start
    names = ANALYSES if args.command == "all" else (args.command,)
    reports: dict[str, Report] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if args.command == "all" and name == "layers" and ctx.probes.boxes is None:
            skipped[name] = "the pointing game needs boxes (--voc-root)"
        if args.command == "all" and name == "meta-gap" and ctx.train_probes is None:
            skipped[name] = "needs training images (--train-images)"
        if name in skipped:
            print(f"{name}: skipped: {skipped[name]}", flush=True)
            continue
        print(f"{name}: running ...", flush=True)
        result, seconds = run_analysis(name, ctx)
        setting = Setting(ctx.model_text, ctx.data_text, command, seconds)
        reports[name] = WRITERS[name](result, args.out, setting)
        print(f"{name}: {seconds:.0f} s -> {reports[name].markdown}\n  {reports[name].verdict}", flush=True)
    if args.command == "all":
        write_summary(reports, skipped, args.out, command, time.perf_counter() - start, setup_seconds, ctx)
    return reports


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Setting:
    model: str
    data: str
    command: str
    seconds: float

    def header(self, title: str, extra: str = "") -> list[str]:
        return [f"# {title}", "", f"- Model: {self.model}", f"- Data: {self.data}",
                f"- Command: `{self.command}` ({self.seconds:.0f} s for this analysis)", *([extra] if extra else []),
                ""]


@dataclass(frozen=True)
class Report:
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
    if math.isnan(mean):
        return "n/a"
    se_text = "n/a" if math.isnan(se) else f"{se * scale:.{digits}f}"
    return f"{round(mean * scale, digits) + 0.0:.{digits}f} ± {se_text}"  # + 0.0: no "-0.00"


def _pct(result: A.PointingGameResult) -> str:
    return _pm(float(result.accuracy), A.pointing_se(result), 100, 1)


def _finish(out: Path, name: str, setting: Setting, title: str, body: list[str], verdict: str,
            draw: Callable[[Path], None]) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    markdown, figure = out / f"{name}.md", out / f"{name}.png"
    text = "\n".join([*body, "", f"**Verdict.** {verdict}", "", f"![{name}]({name}.png)", ""])
    markdown.write_text("\n".join(setting.header(title)) + "\n" + text)
    draw(figure)
    return Report(markdown, figure, text, verdict, setting.seconds)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: object, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


# ----- identity


def write_identity(result: A.IdentityResult, out: Path, setting: Setting) -> Report:
    rows, means = [], {}
    deltas = []
    for layer in result.layers:
        mean, se, n = mean_stderr(result.correlations[layer])
        means[layer] = mean
        row = [f"`{layer}`", "×".join(map(str, result.kernels[layer])) or "-",
               "×".join(map(str, result.map_sizes.get(layer, ()))) or "-", _pm(mean, se), str(n)]
        if result.pointing is not None:
            a, b = (result.pointing[m][layer] for m in A.IDENTITY_METHODS)
            delta = abs(float(a.accuracy) - float(b.accuracy)) * 100
            deltas.append(delta)
            row += [_pct(a), _pct(b), f"{delta:.1f}", str(A.pointing_pairs(a))]
        rows.append(row)
    header = ["layer", "kernel", "map", "ρ(NG identity, NG conv)", "N"]
    if result.pointing is not None:
        header += ["pointing NG (%)", "pointing NG-conv (%)", "\\|Δ\\| (pp)", "pairs"]
    low = min(means, key=lambda k: means[k])
    below = [k for k, v in means.items() if not v >= 0.94]
    verdict = (f"{'Holds' if not below else 'Does not hold'}: mean ρ ≥ 0.94 at {len(means) - len(below)} of "
               f"{len(means)} conv layers (lowest {means[low]:.3f} at `{low}`; the paper's lowest: 0.943).")
    if deltas:
        mean_delta, sd = sum(deltas) / len(deltas), torch.tensor(deltas).std().item() if len(deltas) > 1 else 0.0
        verdict += (f" Pointing game: mean |Δ| = {mean_delta:.2f} ± {sd:.2f} pp over layers (paper 0.53 ± 0.62): "
                    f"{'holds' if mean_delta <= 0.53 + 2 * 0.62 else 'does not hold'} (criterion ≤ 1.77 pp).")
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

    def draw(path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1 + (result.pointing is not None), 1, figsize=(max(6, 0.45 * len(rows)), 6.5),
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

    return _finish(out, "identity", setting, "Virtual identity check (§4.1, supp. B Table 4)", body, verdict, draw)


# ----- layers


PAPER_TABLE3 = {  # (method, subset): (ResNet50 b.s., b.w., VGG16 b.s., b.w.)
    ("linear_approx", "all"): (90.2, 91.2, 86.4, 86.9), ("linear_approx", "difficult"): (81.9, 83.8, 74.5, 77.4),
    ("norm_grad_selective", "all"): (87.4, 88.7, 86.0, 86.8),
    ("norm_grad_selective", "difficult"): (77.0, 79.1, 72.6, 74.5),
}


def write_layers(result: A.LayersResult, out: Path, setting: Setting) -> Report:
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
        names = [*result.layers, *result.combinations, A.CENTER]
        rows = [[f"`{n}`" if n in result.layers else n,
                 "×".join(map(str, result.map_sizes[n])) if n in result.layers else "image",
                 *(_pct(result.scores[method][n][s]) for s in A.SUBSETS),
                 *(str(A.pointing_pairs(result.scores[method][n][s])) for s in A.SUBSETS)] for n in names]
        body += [f"### {method}", "",
                 _md_table(["map", "resolution", "all", "difficult", "N all", "N difficult"], rows), ""]
    body += ["## Gain over the best single layer (pp, supp. Table 6)", ""]
    rows = []
    for method in result.methods:
        for name in result.combinations:
            cells = [_pm(*result.gain(method, name, s), 100, 2) for s in A.SUBSETS]
            rows.append([method, name, *cells])
    body += [_md_table(["method", "weighting, mode", "gain all", "gain difficult"], rows), "",
             "## Summary (Table 3: best single layer vs best combination)", "", _layers_summary(result), "",
             "Weights γ: " + "; ".join(f"{w}: [{', '.join(f'{g:.2f}' for g in gamma.tolist())}]"
                                       for w, gamma in result.weights.items()) + ".", "",
             "Paper (Table 3, best single layer → best weighted combination, %): " + "; ".join(
                 f"{m} {s}: ResNet50 {v[0]} → {v[1]}, VGG16 {v[2]} → {v[3]}" for (m, s), v in PAPER_TABLE3.items())
             + ". Supp. Table 6: product (×) combinations are the most effective; probe-accuracy weights gain "
               "everywhere (+0.4 to +2.9 pp with ×); the earliest layer is never the best single layer."]
    verdict = _layers_verdict(result)

    def draw(path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(result.methods), figsize=(5.5 * len(result.methods), 4.2), squeeze=False)
        for ax, method in zip(axes[0], result.methods):
            for subset, style in zip(A.SUBSETS, ("-o", "--s")):
                acc = [result.accuracy(method, layer, subset) * 100 for layer in result.layers]
                line, = ax.plot(range(len(acc)), acc, style, label=f"layers, {subset}")
                combos = {n: result.accuracy(method, n, subset) * 100 for n in result.combinations}
                top = max(combos, key=combos.get)
                ax.axhline(combos[top], color=line.get_color(), ls=":", label=f"best combination ({top}), {subset}")
            ax.set_xticks(range(len(result.layers)), result.layers, rotation=30)
            ax.set(title=method, ylabel="pointing game (%)")
            ax.legend(fontsize=7)
        _save(fig, path)

    return _finish(out, "layers", setting, "Layer combination (§4.2, Table 3, supp. Table 6)", body, verdict, draw)


def _best_combination(result: A.LayersResult, method: str, subset: str) -> str:
    return max(result.combinations, key=lambda n: (result.gain(method, n, subset)[0], -result.combinations.index(n)))


def _layers_summary(result: A.LayersResult) -> str:
    rows = []
    for method in result.methods:
        for subset in A.SUBSETS:
            layer, top = result.best_layer(method, subset), _best_combination(result, method, subset)
            rows.append([method, subset, f"`{layer}`", _pct(result.scores[method][layer][subset]), top,
                         _pct(result.scores[method][top][subset]), _pm(*result.gain(method, top, subset), 100, 2),
                         _pm(*result.gain(method, "probe_accuracy product", subset), 100, 2)])
    return _md_table(["method", "subset", "best layer", "acc. (%)", "best combination", "acc. (%)", "gain (pp)",
                      "probe_accuracy product gain (pp)"], rows)


def _layers_verdict(result: A.LayersResult) -> str:
    cases = [(m, s) for m in result.methods for s in A.SUBSETS
             if not math.isnan(float(result.scores[m][result.layers[0]][s].accuracy))]
    tops = {c: _best_combination(result, *c) for c in cases}
    beats = [c for c in cases if result.gain(c[0], tops[c], c[1])[0] > 0]
    significant = [c for c in beats if result.gain(c[0], tops[c], c[1])[0] > 2 * result.gain(c[0], tops[c], c[1])[1]]
    product = [c for c in cases if tops[c].endswith("product")]
    probe = [c for c in cases if result.gain(c[0], "probe_accuracy product", c[1])[0] > 0]
    first = [c for c in cases if result.best_layer(*c) == result.layers[0]]

    def share(part: list, claim: str) -> str:
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


# ----- class sensitivity


def write_class_sensitivity(result: A.ClassSensitivityResult, out: Path, setting: Setting) -> Report:
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
    verdict = "; ".join(parts) + "."

    def draw(path: Path) -> None:
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

    return _finish(out, "class_sensitivity", setting, "Class sensitivity (§4.3 Fig. 6) and meta-saliency (§4.4 Fig. 7)",
                   body, verdict, draw)


# ----- meta-gap


def write_meta_gap(result: A.MetaGapResult, out: Path, setting: Setting) -> Report:
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
    parts = []
    for method in result.methods:
        gaps = [mean_stderr(result.train[method][A.COMBINED][e])[0] - mean_stderr(result.val[method][A.COMBINED][e])[0]
                for e in range(len(result.epochs))]
        trained = [g for epoch, g in zip(result.epochs, gaps) if epoch > 0] or gaps
        t, v = mean_stderr(result.train[method][A.COMBINED][last]), mean_stderr(result.val[method][A.COMBINED][last])
        se = math.hypot(t[1], v[1])
        positive = sum(g > 0 for g in trained)
        holds = positive >= 0.75 * len(trained) and gaps[-1] > 2 * se
        parts.append(f"{method}: train > val at {positive} of {len(trained)} trained checkpoints, last gap "
                     f"{gaps[-1]:+.3f} ± {se:.3f} ({'holds' if holds else 'does not hold'}; criterion: ≥ 75% of "
                     "checkpoints and last gap > 2 SE)")
    verdict = "; ".join(parts) + "."

    def draw(path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(result.methods), figsize=(5.5 * len(result.methods), 4), squeeze=False)
        for ax, method in zip(axes[0], result.methods):
            for split, table in (("train", result.train), ("val", result.val)):
                stats = [mean_stderr(row) for row in table[method][A.COMBINED]]
                mean = torch.tensor([s[0] for s in stats])
                se = torch.tensor([s[1] for s in stats]).nan_to_num(0)
                ax.plot(result.epochs, mean, marker="o", label=split)
                ax.fill_between(result.epochs, mean - se, mean + se, alpha=0.2)
            ax.set(title=f"{method} (combined)", xlabel="epoch", ylabel="ρ(map, meta map)")
            ax.legend()
        _save(fig, path)

    return _finish(out, "meta_gap", setting, "Meta vs non-meta correlation, train vs val (supp. D, Fig. 10)", body,
                   verdict, draw)


# ----- randomization


def write_randomization(analysis: A.RandomizationAnalysis, out: Path, setting: Setting) -> Report:
    result = analysis.result
    keys = list(result.correlations)
    body = [
        "Cascading randomisation (Adebayo et al. 2018): parameterised modules re-initialised with their own "
        "`reset_parameters()`, cumulatively from the output end down (step k: the last k modules random; "
        f"BatchNorm: `{analysis.batchnorm}`, see saliency_monitor/sanity.py); Spearman ρ of each image's map "
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
    verdict = "; ".join(_randomization_claims(analysis)) + "."

    def draw(path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(len(analysis.layers), 1, figsize=(max(8, 0.22 * len(result.steps)),
                                                                   3.6 * len(analysis.layers)), squeeze=False)
        for ax, layer in zip(axes[:, 0], analysis.layers):
            for key in keys:
                ax.plot(range(len(result.steps)), result.mean(key, layer), marker=".", ls="--" if "+meta" in key
                        else "-", label=key)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(range(len(result.steps)), result.steps, rotation=90, fontsize=6)
            ax.set(title=f"cascading randomisation, maps at {layer}", ylabel="ρ with the trained model's map")
            ax.legend(fontsize=7)
        _save(fig, path)

    return _finish(out, "randomization", setting, "Model-weight randomisation (§4.5, Adebayo et al. 2018)", body,
                   verdict, draw)


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


def _randomization_claims(analysis: A.RandomizationAnalysis) -> list[str]:
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
    return claims


WRITERS: dict[str, Callable[[object, Path, Setting], Report]] = {
    "identity": write_identity, "layers": write_layers, "class-sensitivity": write_class_sensitivity,
    "meta-gap": write_meta_gap, "randomization": write_randomization,
}


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


if __name__ == "__main__":
    main()
