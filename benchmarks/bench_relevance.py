"""How fast are the relevance methods? LRP against a training step and against zennit's own way.

All figures come from ONE run of this script (same process, weights and batch), variants
interleaved round-robin (see ``_timing.py``). Defaults: torchvision resnet50 (random init,
seed 0), B=8 images of 224x224, T=2 targets per image, CPU with torch's default threads.

(a) time(compute_saliency(methods=["lrp"]) at the input and layer1..layer4)
    / time(one SGD training step on the same batch)
(b) zennit's documented way (``zennit.attribution.Gradient`` with the same composite and
    canonizer, on the model itself): input relevance only, one forward + backward per
    target; the max abs difference of its input maps to ours is printed (the same maps).
(c) conservation: Σ input relevance / explained logit for ours and for captum's LRP on a
    bias-free copy (BN scales estimated on the batch, every shift and the head's bias zeroed,
    so exact conservation is the target); captum has no rule for ResNet's residual sums,
    written inline in forward.
(d) ``salient_relevance``'s context-aware detection per map, at context_size 64 (the
    default) and 250 (Goferman et al.'s), for B·T maps.

Run:  cd /work/main && .ci/venv python benchmarks/bench_relevance.py [--batch 16] [--size 224]
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys

import torch
import torch.nn.functional as F
import torchvision
from _timing import measure_interleaved, print_table

from saliency_monitor import compute_saliency
from saliency_monitor.engine.context_saliency import context_aware_saliency
from saliency_monitor.engine.relevance import lrp_maps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"$ {shlex.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=20)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 20, (args.batch,))
    targets = torch.stack([torch.randperm(20)[: args.targets] for _ in range(args.batch)])
    layers = ["input", "layer1", "layer2", "layer3", "layer4"]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def ours() -> None:
        compute_saliency(model, images, targets, layers, ["lrp"])

    def zennit_attributor() -> torch.Tensor:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        model.eval()
        out = []
        with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
            for t in range(args.targets):
                onehot = torch.zeros(args.batch, 20).scatter_(1, targets[:, t : t + 1], 1.0)
                _, relevance = attributor(images, lambda output, onehot=onehot: output * onehot)
                out.append(relevance.sum(1))
        return torch.stack(out, 1)

    timings = measure_interleaved({"training step": train_step, "ours: lrp, 5 layers": ours,
                                   "zennit Gradient, input only": zennit_attributor}, repeat=args.repeat)
    print_table(["variant", "median s", "min s", "max s", "runs"],
                [[n, f"{t.median:.3f}", f"{t.min:.3f}", f"{t.max:.3f}", t.runs] for n, t in timings.items()])
    step = timings["training step"].median
    print(f"(a) ours / training step: {timings['ours: lrp, 5 layers'].median / step:.2f}")
    print(f"(b) zennit (input only) / ours (5 layers): "
          f"{timings['zennit Gradient, input only'].median / timings['ours: lrp, 5 layers'].median:.2f}x")
    want = zennit_attributor()
    got = lrp_maps(model, images, targets, ["input"])["input"]
    print(f"    max |ours - zennit| at the input: {float((got - want).abs().max()):.2e} "
          f"(max |relevance| {float(want.abs().max()):.2e})")

    from captum.attr import LRP

    unbiased = bias_free(model, images)
    with torch.no_grad():
        logits = unbiased(images[:2]).gather(1, targets[:2, :1])[:, 0]
    ours_sum = lrp_maps(unbiased, images[:2], targets[:2, :1], ["input"])["input"].sum(dim=(1, 2, 3))
    try:
        captum_sum = LRP(unbiased).attribute(images[:2].clone(), target=targets[:2, 0]).sum(dim=(1, 2, 3)).detach()
        print(f"(c) conservation, Σ input relevance / explained logit, 2 images: ours "
              f"{[round(float(v), 3) for v in ours_sum / logits]}, captum LRP "
              f"{[round(float(v), 3) for v in captum_sum / logits]} (1 = conserved)")
    except Exception as error:  # noqa: BLE001 - the point is to show what captum says
        print(f"(c) captum LRP refuses the model: {type(error).__name__}: {str(error).splitlines()[0][:160]}")

    relevance = lrp_maps(model, images, targets, ["input", "layer3"])
    for size in (64, 250):
        detect = {f"context saliency, input maps, size {size}":
                  lambda s=size: context_aware_saliency(relevance["input"].flatten(0, 1)[:, None], size=s),
                  f"context saliency, layer3 maps, size {size}":
                  lambda s=size: context_aware_saliency(relevance["layer3"].flatten(0, 1)[:, None], size=s)}
        result = measure_interleaved(detect, repeat=1, warmup=0)
        maps = args.batch * args.targets
        for name, timing in result.items():
            print(f"(d) {name}: {timing.median:.2f} s for {maps} maps = {timing.median / maps * 1000:.0f} ms per map "
                  f"= {timing.median / step:.2f} training steps")


def bias_free(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """A copy with batch-norm scales estimated on ``images`` (activations of a sane size) and
    every shift zeroed (BN mean and bias, the head's bias): LRP must then conserve exactly."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the passes below
    copied.train()
    with torch.no_grad():
        copied(images)
        for module in copied.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
                module.bias.zero_()
        torch.nn.init.zeros_(copied.fc.bias)
    return copied.eval()


if __name__ == "__main__":
    main()
