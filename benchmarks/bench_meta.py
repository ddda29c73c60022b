"""Meta-saliency speed: time / one training step, loop vs vmap, and against the TorchRay-style approach.

    .ci/venv python benchmarks/bench_meta.py [--device cpu|cuda --arch resnet50 --batch 8 --size 224 --repeat 3]

Configuration: resnet50, 224x224, B=8, T=2 (16 distinct (image, target) pairs), layers
layer1..layer4, methods norm_grad + norm_grad_selective, meta_lr=0.002, run with
``meta_batching="loop"`` (one pair at a time) and ``"vmap"`` (the pairs in vectorised chunks,
:mod:`saliency_monitor.engine.meta_vectorised`). Goals: on a CPU, the loop <= 3.5 training steps of
the same B=8 (the floating-point lower bound is about 3: per pair one parameter backward plus a
forward and an activation backward, against 3 passes per image for a training step); on any
device, >= 10x fewer aten operator calls with vmap (a batch-1 pass on a GPU costs its launches).

The training step: on a CPU forward + backward + SGD of the same B=8 in float32; on CUDA, as a
user trains there, batch ``--step-batch`` (32) with AMP (float16 autocast, GradScaler).

Baseline ("copy-step-restore", how TorchRay-era code does it): for every (image, target),
save the parameters, run an SGD step on that loss in place with torch.optim.SGD, compute
the plain maps, load the parameters back. Same maps, but it writes the weights.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from _timing import measure_interleaved, operator_calls, print_table

from saliency_monitor import compute_saliency

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
METHODS = ["norm_grad", "norm_grad_selective"]


def copy_step_restore(model, images, targets, lr):
    """The baseline: in-place SGD step per (image, target), plain maps, state restored."""
    model.eval()
    saved = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rows = []
    for b in range(images.shape[0]):
        row = []
        for c in targets[b].tolist():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[b : b + 1]), torch.tensor([c])).backward()
            optimizer.step()
            row.append(compute_saliency(model, images[b : b + 1], [c], LAYERS, METHODS))
            model.load_state_dict(saved)
        rows.append(row)
    optimizer.zero_grad(set_to_none=True)
    return {
        m: {layer: torch.cat([torch.cat([r[m][layer] for r in row], 1) for row in rows]) for layer in LAYERS}
        for m in METHODS
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--step-batch", type=int, default=None, help="training step batch (CPU: --batch, CUDA: 32)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    step_batch = args.step_batch or (32 if cuda else args.batch)

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.stack([torch.randperm(1000)[: args.targets] for _ in range(args.batch)]).to(device)
    pairs = args.batch * args.targets  # distinct by construction
    step_images = images if step_batch == args.batch else torch.randn(step_batch, 3, args.size, args.size,
                                                                      device=device)
    step_labels = targets[:, 0] if step_batch == args.batch else torch.randint(0, 1000, (step_batch,), device=device)

    trained = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)

    def training_step() -> None:
        trained.train()
        optimizer.zero_grad(set_to_none=True)
        if not cuda:  # float32, as on the CPU
            F.cross_entropy(trained(step_images), step_labels).backward()
            optimizer.step()
            return
        with torch.autocast(device.type, dtype=torch.float16):
            loss = F.cross_entropy(trained(step_images), step_labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def meta(batching: str):
        return lambda: compute_saliency(model, images, targets, LAYERS, METHODS, meta_lr=args.lr,
                                        meta_batching=batching)

    variants = {"step": training_step, "loop": meta("loop"), "vmap": meta("vmap")}
    if not cuda:
        baseline_model = copy.deepcopy(model)
        variants["restore"] = lambda: copy_step_restore(baseline_model, images, targets, args.lr)
    # interleaved rounds: a change of load on a shared machine hits every variant alike
    timings = measure_interleaved(variants, repeat=args.repeat)
    step = timings["step"].median
    loop, vmap = meta("loop")(), meta("vmap")()
    diff = max(float((vmap[m][layer] - loop[m][layer]).abs().max() / loop[m][layer].abs().max())
               for m in METHODS for layer in LAYERS)
    calls = {batching: operator_calls(meta(batching)) for batching in ("loop", "vmap")}

    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch} {args.size}x{args.size}, B={args.batch}, T={args.targets} ({pairs} pairs), layers {LAYERS}, "
          f"methods {METHODS}, meta_lr={args.lr}, torch {torch.__version__}, {name}, "
          f"load {os.getloadavg()[0]:.2f}")
    amp = ", AMP float16" if cuda else ", float32"
    rows = [[f"training step (fwd+bwd+SGD, batch {step_batch}{amp})", f"{step:.3f} s", "1.00", "", "", ""]]
    for batching in ("loop", "vmap"):
        t = timings[batching].median
        rows.append([f"compute_saliency(meta_lr, meta_batching={batching!r})", f"{t:.3f} s", f"{t / step:.2f}",
                     f"{1000 * t / pairs:.1f} ms", f"{calls[batching]['dispatched']}",
                     f"{calls[batching]['kernels']}"])
    if "restore" in timings:
        t = timings["restore"].median
        rows.append(["copy-step-restore baseline", f"{t:.3f} s", f"{t / step:.2f}", f"{1000 * t / pairs:.1f} ms", "",
                     ""])
    print_table(["variant", "median time", "/ step", "per pair", "aten calls dispatched", "kernels"], rows)
    print(f"meta loop / training step = {timings['loop'].median / step:.2f}  (CPU goal <= 3.5)")
    print(f"meta vmap / training step = {timings['vmap'].median / step:.2f}")
    print(f"vmap / loop time = {timings['vmap'].median / timings['loop'].median:.2f}")
    for kind in ("dispatched", "kernels"):
        print(f"aten calls ({kind}) loop / vmap = {calls['loop'][kind] / calls['vmap'][kind]:.1f}")
    if "restore" in timings:
        print(f"meta loop / copy-step-restore = {timings['loop'].median / timings['restore'].median:.2f}")
    print(f"max relative difference vmap vs loop maps = {diff:.2e}")
    print("command:", " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
