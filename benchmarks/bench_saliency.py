"""How fast is ``compute_saliency``? Ratios against a training step and against peers.

All figures come from ONE run of this script (same process, same weights, same batch).
Variants run interleaved round-robin (a shared machine's changing load then hits all of
them alike); each single-pass variant reports the median of ``--repeat`` runs after
``--warmup`` untimed ones, and the two L*T-pass loops ((b) and grad-cam, ~10x slower)
``--loop-repeat`` runs, default 1, no warm-up (see ``_timing.py``). Defaults: torchvision
resnet50 (random init, seed 0), B=16 images of 224x224, layers layer1..layer4, T=2
targets per image, CPU with torch's default thread count: about 4 minutes on 2 idle
cores (15+ minutes when other jobs share them; the header prints the load average).

(a) speed goal: time(compute_saliency, methods norm_grad + norm_grad_selective)
    / time(one SGD training step on the same batch)                       goal <= 1.1
(b) the paper's / TorchRay's way of computing the same maps: one layer and one target at a
    time, each a fresh forward and a full backward that also computes every parameter
    gradient (written out below as ``torchray_style``)
(c) peers: captum ``LayerGradientXActivation`` (our ``linear_approx``) and
    pytorch-grad-cam ``GradCAM`` (our ``grad_cam``), each producing the same per-layer,
    per-target maps as our call it is timed against.

``--check`` also prints the max abs difference between our maps and each baseline's, to
show the timed variants compute the same thing (it asserts nothing).

Run:  cd /work/main && .ci/venv python benchmarks/bench_saliency.py [--check] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from _timing import measure_interleaved, print_table
from torch import Tensor, nn

from saliency_monitor import compute_saliency

Maps = dict[str, dict[str, Tensor]]  # maps[method][layer] -> (B, T, h, w)


# --------------------------------------------------------------------------------------
# The variants. Each takes the same (model, images, targets, layers) and returns maps.
# --------------------------------------------------------------------------------------


def ours(model: nn.Module, images: Tensor, targets: Tensor, layers: Sequence[str],
         methods: Sequence[str], output_size: tuple[int, int] | None = None) -> Maps:
    """saliency_monitor: one forward, T backwards to the earliest layer, no parameter grads."""
    return compute_saliency(model, images, targets, layers, methods, output_size=output_size)


def make_train_step(model: nn.Module, images: Tensor, labels: Tensor) -> Callable[[], None]:
    """One ordinary training step on a private copy of ``model`` (the step changes weights
    and BatchNorm statistics; the copy keeps the other variants on identical weights)."""
    train_model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(train_model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        train_model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(train_model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def torchray_style(model: nn.Module, images: Tensor, targets: Tensor, layers: Sequence[str]) -> Maps:
    """The paper's / TorchRay's procedure: for every layer and every target, a fresh forward
    with a hook on that one layer, then a full backward that computes the gradient of every
    parameter as well as of the layer's activation; then NormGrad's closed forms."""
    modules = dict(model.named_modules())
    params = [p for p in model.parameters() if p.requires_grad]
    maps: Maps = {"norm_grad": {}, "norm_grad_selective": {}}
    model.eval()
    for name in layers:
        per_target_ng, per_target_sel = [], []
        for t in range(targets.shape[1]):
            captured: dict[str, Tensor] = {}

            def hook(_module: nn.Module, _args: object, output: Tensor, captured: dict[str, Tensor] = captured) -> None:
                captured["x"] = output

            handle = modules[name].register_forward_hook(hook)
            try:
                logits = model(images)
            finally:
                handle.remove()
            x = captured["x"]
            score = logits.gather(1, targets[:, t : t + 1]).sum()
            *_param_grads, g = torch.autograd.grad(score, [*params, x])
            x, g = x.detach(), g.detach()
            per_target_ng.append(torch.linalg.vector_norm(g, dim=1) * torch.linalg.vector_norm(x, dim=1))
            per_target_sel.append(torch.linalg.vector_norm((g * x).clamp_min(0), dim=1))
        maps["norm_grad"][name] = torch.stack(per_target_ng, dim=1)
        maps["norm_grad_selective"][name] = torch.stack(per_target_sel, dim=1)
    return maps


def captum_linear_approx(model: nn.Module, images: Tensor, targets: Tensor, layers: Sequence[str]) -> Maps:
    """captum LayerGradientXActivation with all layers in one call (one forward, one backward
    to the layer outputs), called once per target (captum takes one target per image);
    the (B, K, H, W) attribution is summed over channels to give linear_approx."""
    from captum.attr import LayerGradientXActivation

    modules = dict(model.named_modules())
    model.eval()
    explainer = LayerGradientXActivation(model, [modules[n] for n in layers])
    per_target = [explainer.attribute(images, target=targets[:, t]) for t in range(targets.shape[1])]
    return {"linear_approx": {
        name: torch.stack([attrs[i].detach().sum(dim=1) for attrs in per_target], dim=1)
        for i, name in enumerate(layers)
    }}


def gradcam_per_layer(model: nn.Module, images: Tensor, targets: Tensor, layers: Sequence[str]) -> Maps:
    """pytorch-grad-cam GradCAM, one call per layer and target (given several layers it
    averages them into one map, so per-layer maps need one call each). Each call is a
    forward and a ``loss.backward()`` (all parameter grads), then per-image min-max
    normalisation and a cv2 resize to the image size."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = dict(model.named_modules())
    maps: dict[str, Tensor] = {}
    for name in layers:
        with GradCAM(model=model, target_layers=[modules[name]]) as cam:
            per_target = [
                cam(images, targets=[ClassifierOutputTarget(int(c)) for c in targets[:, t]])
                for t in range(targets.shape[1])
            ]
        maps[name] = torch.from_numpy(np.stack(per_target, axis=1))
    model.zero_grad(set_to_none=True)  # grad-cam's backward leaves .grad on the parameters
    return {"grad_cam": maps}


# --------------------------------------------------------------------------------------
# --check: are the timed variants computing the same maps?
# --------------------------------------------------------------------------------------


def _minmax(t: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-map min-max normalisation over the last two dims, as pytorch-grad-cam does."""
    lo = t.amin(dim=(-2, -1), keepdim=True)
    t = t - lo
    return t / (eps + t.amax(dim=(-2, -1), keepdim=True))


def _as_gradcam_output(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Our raw grad_cam map (B, T, h, w) post-processed as pytorch-grad-cam post-processes
    a single layer's cam: min-max, bilinear resize, min-max again."""
    resized = F.interpolate(_minmax(cam), size=size, mode="bilinear", align_corners=False)
    return _minmax(resized)


def check(model: nn.Module, images: Tensor, targets: Tensor, layers: Sequence[str]) -> None:
    """Print max |ours - theirs| per method and layer (and the scale of our maps)."""
    size = (images.shape[-2], images.shape[-1])
    ours_ng = ours(model, images, targets, layers, ["norm_grad", "norm_grad_selective"])
    ours_la = ours(model, images, targets, layers, ["linear_approx"])
    ours_gc = ours(model, images, targets, layers, ["grad_cam"])
    pairs = [
        ("(b) torchray_style", ours_ng, torchray_style(model, images, targets, layers), None),
        ("(c) captum", ours_la, captum_linear_approx(model, images, targets, layers), None),
        ("(c) grad-cam", ours_gc, gradcam_per_layer(model, images, targets, layers), size),
    ]
    rows = []
    for baseline, mine, theirs, gradcam_size in pairs:
        for method, by_layer in theirs.items():
            for layer, other in by_layer.items():
                a = mine[method][layer]
                if gradcam_size is not None:
                    a = _as_gradcam_output(a, gradcam_size)
                diff = (a - other.to(a)).abs().max().item()
                scale = a.abs().max().item()
                rows.append([baseline, method, layer, tuple(a.shape), f"{diff:.2e}", f"{scale:.2e}",
                             f"{diff / scale if scale else float('nan'):.1e}"])
    print("\n--check: max |ours - baseline| (grad-cam: ours min-max normalised and resized as grad-cam does)")
    print_table(["baseline", "method", "layer", "shape", "max abs diff", "max |ours|", "relative"], rows)


# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="resnet50", help="a torchvision.models constructor name")
    parser.add_argument("--batch", type=int, default=16, help="B, images per batch")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--targets", type=int, default=2, help="T, targets (classes) per image")
    parser.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3", "layer4"],
                        help="layer names from model.named_modules()")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs of each single-pass variant (median reported)")
    parser.add_argument("--loop-repeat", type=int, default=1,
                        help="timed runs of the two per-layer x per-target loops ((b) and grad-cam); "
                             "each run is already L*T identical passes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each single-pass variant")
    parser.add_argument("--device", default="cpu", help="torch device (cuda runs are synchronised)")
    parser.add_argument("--skip-peers", action="store_true", help="skip (c) captum and grad-cam")
    parser.add_argument("--check", action="store_true",
                        help="also print max abs diff between our maps and the baselines' maps")
    return parser.parse_args(argv)


TRAIN = "train step (SGD, deepcopy of the model)"
OURS_NG = "ours norm_grad + norm_grad_selective"
TORCHRAY = "(b) torchray_style, same two maps"
OURS_LA = "ours linear_approx"
CAPTUM = "(c) captum LayerGradientXActivation"
OURS_GC = "ours grad_cam, upsampled to the image"
GRADCAM = "(c) pytorch-grad-cam GradCAM, per layer"
LOOPS = (TORCHRAY, GRADCAM)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = "cd /work/main && .ci/venv python benchmarks/bench_saliency.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    with torch.no_grad():
        num_classes = model(images[:1]).shape[1]
    targets = torch.stack([torch.randperm(num_classes, generator=generator)[: args.targets]
                           for _ in range(args.batch)]).to(device)  # (B, T), distinct per image
    layers = list(args.layers)
    L, T = len(layers), args.targets
    t_start = time.perf_counter()
    load_before = _load()

    print(f"bench_saliency: {args.arch} (random init, seed 0), B={args.batch}, {args.size}x{args.size}, "
          f"T={T}, layers={layers}")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()} (torch default), os.cpu_count() {os.cpu_count()}, "
          f"1-min load average before start {load_before}")
    print(f"timing: median of --repeat {args.repeat} (after {args.warmup} warm-up) for single-pass variants, "
          f"--loop-repeat {args.loop_repeat} for the {L}x{T}-pass loops; variants interleaved round-robin")
    print("weights: the training step runs on a deepcopy, so every other variant sees the same "
          "(unchanged) weights; timing does not depend on weight values anyway")
    print(f"command: {command}")

    if args.check:
        check(model, images, targets, layers)

    ng_methods = ["norm_grad", "norm_grad_selective"]
    fns: dict[str, Callable[[], object]] = {
        TRAIN: make_train_step(model, images, targets[:, 0]),
        OURS_NG: partial(ours, model, images, targets, layers, ng_methods),
        TORCHRAY: partial(torchray_style, model, images, targets, layers),
    }
    if not args.skip_peers:
        fns |= {
            OURS_LA: partial(ours, model, images, targets, layers, ["linear_approx"]),
            CAPTUM: partial(captum_linear_approx, model, images, targets, layers),
            OURS_GC: partial(ours, model, images, targets, layers, ["grad_cam"], (args.size, args.size)),
            GRADCAM: partial(gradcam_per_layer, model, images, targets, layers),
        }
    # The loops are L*T repetitions of a forward and a full backward, the same kernels as the
    # training step's, which has warmed up by the time they run: they get no warm-up.
    repeat = {n: args.loop_repeat if n in LOOPS else args.repeat for n in fns}
    warmup = {n: 0 if n in LOOPS else args.warmup for n in fns}

    print("\ntimed runs (round, variant, seconds):")
    timings = measure_interleaved(
        fns, repeat, warmup,
        on_run=lambda name, r, sec: print(f"  {r}  {name:<42} {sec:8.2f}", flush=True),
    )
    print("\nper variant:")
    print_table(["variant", "median s", "min s", "max s", "runs"],
                [[n, f"{t.median:.2f}", f"{t.min:.2f}", f"{t.max:.2f}", t.runs] for n, t in timings.items()])

    med = {k: v.median for k, v in timings.items()}

    def row(label: str, what: str, mine: str, other: str, goal: str = "") -> list[str]:
        ratio = med[mine] / med[other]
        speed = f"ours {1 / ratio:.1f}x faster" if ratio < 1 else f"ours {ratio:.1f}x slower"
        note = goal or speed
        return [label, what, f"{med[mine]:.2f}", f"{med[other]:.2f}", f"{ratio:.2f}", note]

    rows = [
        row("(a) vs one training step",
            f"ours: norm_grad + norm_grad_selective, {L} layers x {T} targets (1 fwd + {T} bwd to "
            f"{layers[0]}, no param grads); other: train-mode fwd + CE + full bwd + SGD step",
            OURS_NG, TRAIN, goal="goal <= 1.1"),
        row("(b) vs TorchRay-style loop",
            f"same maps; other: {L * T} x (fwd + full bwd incl. all param grads), 1 layer x 1 target each",
            OURS_NG, TORCHRAY),
    ]
    if not args.skip_peers:
        rows += [
            row("(c) vs captum LayerGradientXActivation",
                f"linear_approx at layer resolution; other: {T} calls (1 per target), {L} layers per call",
                OURS_LA, CAPTUM),
            row("(c) vs pytorch-grad-cam GradCAM",
                f"grad_cam at {args.size}x{args.size}; other: {L * T} calls (1 per layer x target: fwd + full "
                "bwd), each map also min-max normalised",
                OURS_GC, GRADCAM),
        ]
    print(f"\nsummary: {args.arch}, B={args.batch}, {args.size}x{args.size}, {L} layers, T={T}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; seconds (median); "
          f"load average {load_before} before, {_load()} after\n")
    print_table(["comparison", "what each side computes", "ours s", "other s", "ours / other", "note"],
                rows, markdown=True)
    print(f"\ncommand: {command}")
    print(f"total wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
