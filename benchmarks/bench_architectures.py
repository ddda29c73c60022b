"""Saliency on every architecture family: the default layers, and plain and meta cost against a training step.

Per architecture (torchvision constructors, random init, seed 0, BatchNorm statistics as
constructed), on one batch of B random images at SIZE² (224 by default: ViT-B/16 and MaxViT-T
need it) with T distinct random targets per image:

- the layers :func:`saliency_monitor.default_layers` picks, with their map layouts (channels
  first ``cf``, channels last ``cl``, tokens ``tok``) and map sizes;
- ``step``: one SGD training step (forward, backward, update) of a copy of the model on the batch;
- ``plain``: ``compute_saliency`` at those layers, the monitor's methods (norm_grad_selective,
  norm_grad), T targets;
- ``meta``: the same with ``meta_lr=0.002`` (the paper's), ``meta_batching="auto"`` (the loop
  on a CPU: each (image, target) pair takes one SGD step of that image, then a plain pass).

Step and plain run ``--warmup`` untimed times, meta once less (a pass of B·T pairs is long
enough to warm itself); then the three are timed ``--repeat`` times interleaved (median; see
``_timing.py``). On 2 idle CPU cores at the defaults the whole list takes about 15-20 minutes
(ViT-B/16 and VGG-11 are the longest); ``--arch`` picks some. On a box other jobs share, wall
times of single runs swing by 2-10x; ``--clock process --threads 1`` times the CPU seconds this
process spends instead (``time.process_time``, one thread so that no OpenMP thread spins while
waiting for another), which other jobs barely change.

Run:  cd /work/main && .ci/venv python benchmarks/bench_architectures.py [--arch vit_b_16 swin_t] [--size 224]
      [--clock process --threads 1 --repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
import types
from collections.abc import Callable, Sequence

import _timing
import torch
import torch.nn.functional as F
import torchvision
from _timing import measure_interleaved, print_table
from torch import Tensor, nn

from saliency_monitor import compute_saliency, default_layers
from saliency_monitor.engine.layers import trace_forward
from saliency_monitor.engine.layouts import CHANNELS_LAST, TOKENS

ARCHITECTURES = {
    "ResNet-50": "resnet50",
    "VGG-11": "vgg11",
    "MobileNetV3-L": "mobilenet_v3_large",
    "EfficientNet-B0": "efficientnet_b0",
    "ConvNeXt-T": "convnext_tiny",
    "RegNetY-400MF": "regnet_y_400mf",
    "DenseNet-121": "densenet121",
    "ShuffleNetV2-1.0": "shufflenet_v2_x1_0",
    "ViT-B/16": "vit_b_16",
    "Swin-T": "swin_t",
    "MaxViT-T": "maxvit_t",
}
METHODS = ("norm_grad_selective", "norm_grad")
META_LR = 0.002
SHORT = {CHANNELS_LAST: "cl", TOKENS: "tok"}


def make_train_step(model: nn.Module, images: Tensor, labels: Tensor) -> Callable[[], None]:
    """One ordinary SGD step on a private copy (the step changes weights and BatchNorm statistics)."""
    train_model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(train_model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(train_model(images), labels).backward()
        optimizer.step()

    return step


def describe_layers(model: nn.Module, images: Tensor, layers: Sequence[str]) -> str:
    """``name (layout h×w)`` for each layer."""
    trace = trace_forward(model, images[:1])
    parts = []
    for name in layers:
        layout, (h, w) = trace.layouts[name], trace.map_shape(name)[2:]
        kind = getattr(layout, "kind", "")
        parts.append(f"{name} ({SHORT.get(kind, 'cf')} {h}x{w})")
    return ", ".join(parts)


def bench(label: str, arch: str, args: argparse.Namespace) -> list[object]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch).eval().to(args.device)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    classes = torch.stack([torch.randperm(1000, generator=generator)[: args.targets] for _ in range(args.batch)])
    targets, labels = classes.to(args.device), classes[:, 0].to(args.device)
    layers = default_layers(model, images)
    print(f"{label}: {describe_layers(model, images, layers)}", flush=True)
    variants = {
        "step": make_train_step(model, images, labels),
        "plain": lambda: compute_saliency(model, images, targets, layers, METHODS),
        "meta": lambda: compute_saliency(model, images, targets, layers, METHODS, meta_lr=META_LR),
    }
    warmup = {"step": args.warmup, "plain": args.warmup, "meta": max(0, args.warmup - 1)}
    timings = measure_interleaved(variants, repeat=args.repeat, warmup=warmup)
    step = timings["step"].median
    return [label, args.size, len(layers), f"{step:.2f}", f"{timings['plain'].median:.2f}",
            f"{timings['plain'].median / step:.2f}x", f"{timings['meta'].median:.2f}",
            f"{timings['meta'].median / step:.2f}x"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES.values()),
                        help=f"torchvision constructor names, any of {list(ARCHITECTURES.values())} or others")
    parser.add_argument("--batch", type=int, default=8, help="B, images per batch")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--targets", type=int, default=2, help="T, distinct targets per image")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each variant (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of step and plain first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall seconds, or CPU seconds of this process (robust to other jobs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.clock == "process":  # _timing's runs read time.perf_counter: give them the process's CPU clock
        _timing.time = types.SimpleNamespace(perf_counter=time.process_time)  # type: ignore[assignment]
    labels = {arch: label for label, arch in ARCHITECTURES.items()}
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; B={args.batch}, T={args.targets}, "
          f"methods {', '.join(METHODS)}, meta_lr={META_LR}, repeat={args.repeat}, {args.clock} clock\n", flush=True)
    rows = [bench(labels.get(arch, arch), arch, args) for arch in args.arch]
    print()
    print_table(["architecture", "size", "layers", "step s", "plain s", "plain/step", "meta s", "meta/step"], rows,
                markdown=True)


if __name__ == "__main__":
    main()
