"""Meta-saliency speed: time / one training step, and against the TorchRay-style approach.

    .ci/venv python benchmarks/bench_meta.py [--arch resnet50 --batch 8 --size 224 --repeat 2]

Configuration (issue goal): resnet50, 224x224, B=8, T=2, layers layer1..layer4, methods
norm_grad + norm_grad_selective, meta_lr=0.002. Goal: time / training step <= 4.0 (the
floating-point lower bound is about 3: per (image, target) one parameter backward plus a
forward and an activation backward, against 3 passes per image for a training step).

Baseline ("copy-step-restore", how TorchRay-era code does it): for every (image, target),
save the parameters, run an SGD step on that loss in place with torch.optim.SGD, compute
the plain maps, load the parameters back. Same maps, but it writes the weights.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F
import torchvision
from _timing import measure_interleaved, print_table

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
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)()
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 1000, (args.batch, args.targets))

    trained = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01)

    def training_step() -> None:
        trained.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(trained(images), targets[:, 0]).backward()
        optimizer.step()

    ours = lambda: compute_saliency(model, images, targets, LAYERS, METHODS, meta_lr=args.lr)  # noqa: E731
    baseline_model = copy.deepcopy(model)
    baseline = lambda: copy_step_restore(baseline_model, images, targets, args.lr)  # noqa: E731

    # interleaved rounds: a change of load on a shared machine hits every variant alike
    timings = measure_interleaved({"step": training_step, "meta": ours, "restore": baseline}, repeat=args.repeat)
    step, meta, restore = timings["step"], timings["meta"], timings["restore"]
    got, want = ours(), baseline()
    diff = max(
        float((got[m][layer] - want[m][layer]).abs().max() / want[m][layer].abs().max())
        for m in METHODS
        for layer in LAYERS
    )

    print(f"{args.arch} {args.size}x{args.size}, B={args.batch}, T={args.targets}, layers {LAYERS}, "
          f"methods {METHODS}, meta_lr={args.lr}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(
        ["variant", "median time", "ratio"],
        [
            ["training step (fwd+bwd+SGD)", f"{step.median:.2f} s", "1.00"],
            ["compute_saliency(meta_lr)", f"{meta.median:.2f} s", f"{meta.median / step.median:.2f}"],
            ["copy-step-restore baseline", f"{restore.median:.2f} s", f"{restore.median / step.median:.2f}"],
        ],
    )
    print(f"meta / training step = {meta.median / step.median:.2f}  (goal <= 4.0)")
    print(f"meta / copy-step-restore = {meta.median / restore.median:.2f}")
    print(f"max relative difference ours vs baseline maps = {diff:.2e}")
    print("command:", " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
