"""Re-run the analyses of "There and Back Again" (Rebuffi et al., CVPR 2020) with saliency-monitor.

    .ci/venv python -m examples.reproduce all                # synthetic VOC + cached ResNet-18 (see below)
    .ci/venv python -m examples.reproduce identity --arch resnet50 --weights model.ckpt --voc-root ~/data
    .ci/venv python -m examples.reproduce class-sensitivity --arch vgg16 --weights DEFAULT --images ~/imagenet-val

Subcommands (each writes OUT/<name>.md, a table with mean ± standard error and N, the paper's
reference values and a verdict computed from the numbers, and OUT/<name>.png):

  identity           §4.1, supp. B Table 4: NormGrad with vs without the virtual identity trick
  layers             §4.2, Table 3, supp. Table 6: pointing game per layer and layer combination
  class-sensitivity  §4.3 Fig. 6, §4.4 Fig. 7: ρ(max-class map, min-class map), plain and meta
  meta-gap           supp. D Fig. 10: ρ(map, meta map) on train vs val images, per checkpoint
  gap-vs-loss        meta-gap's train − val gap vs the loss gap, AUCs, per-image Spearman
  randomization      §4.5: cascading model-weight randomisation (Adebayo et al. 2018)
  all                every analysis, plus OUT/README.md with every table and verdict

Default (no model or data option): the synthetic VOC data of examples/voc_data.py and a
ResNet-18 (64 px) trained by examples/voc_finetune.py with its offline defaults, trained once and
cached with its per-epoch checkpoints under ~/.cache/saliency-monitor/reproduce/ (once: 464 s
measured on 2 shared CPU cores; `all` then takes about 20 minutes there before gap-vs-loss, most of
it in meta-gap, gap-vs-loss and randomization, whose meta maps need one inner step per image).
Analyses use the VOC "test" split; weight fitting (layers) and the training images of meta-gap and
gap-vs-loss use "trainval", the split the model was trained on.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from examples.voc_data import IMAGE_SETS, VOC_CLASSES
from saliency_monitor import default_layers
from saliency_monitor.analysis.sanity import BATCHNORM_MODES
from saliency_monitor.engine.methods import get_method
from saliency_monitor.engine.model_io import model_logits
from saliency_monitor.monitor.probes import ProbeBatch

from . import analyses as A
from .data import folder_probes, voc_probes
from .gap_vs_loss import gap_vs_loss
from .models import DEFAULT_ARCH, DEFAULT_SIZE, TrainedRun, build_model, default_run, epoch_checkpoints, on_device
from .report import WRITERS, Report, Setting, write_summary

PROG = "python -m examples.reproduce"
ANALYSES = ("identity", "layers", "class-sensitivity", "meta-gap", "gap-vs-loss", "randomization")
COMMANDS = (*ANALYSES, "all")


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


def _common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes: model, data and analysis."""
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model (default: the cached synthetic-VOC ResNet-18)")
    model.add_argument("--arch", help="torchvision classification model name, e.g. resnet50, vgg16")
    model.add_argument("--weights", help="a state dict / Lightning checkpoint path, a torchvision weights name "
                                         "(DEFAULT, IMAGENET1K_V1, ...), or 'none' (random init)")
    model.add_argument("--checkpoints", type=Path, nargs="+", metavar="PATH",
                       help="meta-gap, gap-vs-loss: checkpoints in training order, or a folder of them (sorted by "
                            "name; the number in a name is its epoch); default: the default model's epochs, else "
                            "--weights")
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
    run.add_argument("--out", type=Path, default=Path("docs/pages/reproduce"),
                     help="output folder (default: docs/pages/reproduce)")
    run.add_argument("--seed", type=int, default=0, help="image subset and randomisation seed (default: 0)")
    run.add_argument("--methods", nargs="+", help="saliency methods (default: each analysis' own, see its .md)")
    run.add_argument("--layers", nargs="+", help="layer names (default: identity: every Conv2d; others: "
                                                 "saliency_monitor.default_layers)")
    run.add_argument("--meta-lr", type=_meta_lr, default=0.002, help="meta-saliency step (default: 0.002 = 2ε)")
    run.add_argument("--batchnorm", choices=BATCHNORM_MODES, default="reset",
                     help="randomization: reset BatchNorm layers as steps of their own, or keep them trained")
    run.add_argument("--batch-size", type=_positive_int, default=16, help="images per saliency call (default: 16)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The parser: one subcommand per analysis, plus ``all``; the help text is this module's docstring."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name in COMMANDS:
        commands.add_parser(name, parents=[common], help=f"run {name}")
    return parser


def _check_model_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.weights is not None and args.arch is None:
        parser.error("argument --weights: expected --arch too (the torchvision model the weights belong to)")
    if args.arch is not None:
        if args.arch not in torchvision.models.list_models(module=torchvision.models):
            parser.error(f"argument --arch: expected a torchvision classification model name such as resnet18, "
                         f"resnet50 or vgg16, but got {args.arch!r}")
        if args.weights is None:
            parser.error("argument --arch: expected --weights too (a checkpoint path, a torchvision weights name, "
                         "or 'none')")
    if args.arch is None and (args.images or args.voc_root):
        parser.error("argument --voc-root/--images: expected --arch and --weights too (the default model is "
                     "trained on the synthetic data only)")


def _check_data_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def _check_analysis_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv``; sets ``default_model``, ``weights`` None for 'none', the default image size."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_model_options(parser, args)
    _check_data_options(parser, args)
    _check_analysis_options(parser, args)
    args.default_model = args.arch is None
    if args.weights is not None and args.weights.lower() == "none":
        args.weights = None
    args.image_size = args.image_size or (DEFAULT_SIZE if args.default_model else 224)
    return args


# --------------------------------------------------------------------------- the resolved context


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
        """(epoch, model) of each checkpoint, loaded one at a time; just the model without checkpoints."""
        if self.checkpoints is None:
            yield 0, self.model
            return
        for epoch, path in self.checkpoints:
            yield epoch, on_device(build_model(self.args.arch, path, self.num_classes), self.args.device)


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
    model = on_device(build_model(args.arch, args.weights, num_classes), args.device)
    outputs = _check_outputs(model, probes, args, voc=root is not None)
    checkpoints = epoch_checkpoints(args.checkpoints, run)
    weights = "random init" if args.weights is None else str(args.weights)
    model_text = f"{args.arch} ({'cached voc_finetune default run, ' if run else ''}{weights})"
    data_text += f", {len(probes)} images at {args.image_size} px (seed {args.seed})"
    return Context(args, model, outputs, probes, train, checkpoints, model_text, data_text, run)


def _check_outputs(model: nn.Module, probes: ProbeBatch, args: argparse.Namespace, *, voc: bool) -> int:
    """The model's number of outputs, checked against the data (VOC's 20 classes; every label)."""
    outputs = model_logits(model, probes.images[:1].to(args.device)).shape[1]
    if voc and outputs != len(VOC_CLASSES):
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
    return outputs


# --------------------------------------------------------------------------- running


def run_analysis(name: str, ctx: Context) -> tuple[object, float]:
    """Run one analysis; (result, seconds)."""
    args = ctx.args
    probes = ctx.probes
    layers = args.layers or default_layers(ctx.model, probes.images[:1].to(args.device))
    methods = {"methods": tuple(args.methods)} if args.methods else {}
    start = time.perf_counter()
    result: object
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
    elif name == "gap-vs-loss":
        if ctx.train_probes is None:
            raise SystemExit("gap-vs-loss: needs training images (--train-images with --images).")
        result = gap_vs_loss(ctx.checkpoint_models(), ctx.train_probes, probes, layers, meta_lr=args.meta_lr,
                             batch_size=args.batch_size, **methods)
    else:
        result = A.randomization(ctx.model, probes, layers, meta_lr=args.meta_lr, seed=args.seed,
                                 batchnorm=args.batchnorm, **methods)
    return result, time.perf_counter() - start


def _skip_reason(name: str, ctx: Context) -> str | None:
    """Why ``all`` skips analysis ``name`` with this data, or None."""
    if name == "layers" and ctx.probes.boxes is None:
        return "the pointing game needs boxes (--voc-root)"
    if name in ("meta-gap", "gap-vs-loss") and ctx.train_probes is None:
        return "needs training images (--train-images)"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Report]:
    """Parse, run the analyses, write OUT/<name>.md and .png; returns each analysis' report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start = time.perf_counter()
    ctx = resolve(args)
    command = f"{PROG} " + shlex.join(argv)
    setup_seconds = time.perf_counter() - start
    names = ANALYSES if args.command == "all" else (args.command,)
    reports: dict[str, Report] = {}
    skipped: dict[str, str] = {}
    for name in names:
        reason = _skip_reason(name, ctx) if args.command == "all" else None
        if reason is not None:
            skipped[name] = reason
            print(f"{name}: skipped: {reason}", flush=True)
            continue
        print(f"{name}: running ...", flush=True)
        result, seconds = run_analysis(name, ctx)
        setting = Setting(ctx.model_text, ctx.data_text, command, seconds)
        reports[name] = WRITERS[name](result, args.out, setting)
        print(f"{name}: {seconds:.0f} s -> {reports[name].markdown}\n  {reports[name].verdict}", flush=True)
    if args.command == "all":
        write_summary(reports, skipped, args.out, command, time.perf_counter() - start, setup_seconds, ctx)
    return reports
