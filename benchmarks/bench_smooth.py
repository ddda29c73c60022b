"""Checkerboard smoothing on the VOC example's trained model: total variation and faithfulness.

    .ci/venv python benchmarks/bench_smooth.py [--epochs 18 --probes 48]

Trains the VOC example's offline default (synthetic VOC, ResNet-18 at 64², monitor reduced to
its baseline so training dominates), then, on ``--probes`` test images and their label class
(the true class the model scores highest), computes maps at the default layers with
``gradient``, ``linear_approx`` and ``norm_grad_selective`` plain, with the backward hook, the
forward hook and (if ``--surrogate``) on a bilinear surrogate, and prints per layer:

- the mean total variation (Smooth Deep Saliency's TV) and its change against plain maps
  (the paper: 21.6–31.5% lower with its surrogate);
- the mean Spearman correlation with the plain maps (how much the map's content moved);
- for the forward hook and the surrogate: the prediction difference (mean |p' − p|).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import print_table

from examples.voc_finetune import main as finetune
from saliency_monitor import compute_saliency, default_layers
from saliency_monitor.engine.smoothing import smoothing
from saliency_monitor.metrics import map_correlation, total_variation
from saliency_monitor.monitor.probes import parse_batch

METHODS = ["gradient", "linear_approx", "norm_grad_selective"]


def label_targets(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(images)
    return torch.where(labels.bool(), logits, -torch.inf).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--probes", type=int, default=48)
    parser.add_argument("--surrogate", action="store_true", help="also fit and measure a bilinear surrogate")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(tempfile.mkdtemp())
    result = finetune(["--epochs", str(args.epochs), "--every-n-epochs", "1000", "--meta-lr", "none",
                       "--num-logged-images", "0", "--wandb-dir", str(out), "--picture", str(out / "p.png")])
    model = result.module.model.eval()
    loader = result.data.val_dataloader()
    batches = []
    for batch in loader:
        batches.append(parse_batch(batch))
        if sum(len(b) for b in batches) >= args.probes:
            break
    probes = batches[0].cat(batches).select(range(args.probes))
    images = probes.images
    labels = probes.label_matrix(20)
    targets = label_targets(model, images, labels)
    layers = default_layers(model, images[:1])
    size = tuple(images.shape[-2:])

    variants = {"plain": (model, None), "backward hook": (model, "backward"), "forward hook": (model, "forward")}
    differences = {}
    with torch.no_grad():
        plain_p = model(images).sigmoid()
        with smoothing(model, "forward"):
            differences["forward hook"] = float((model(images).sigmoid() - plain_p).abs().mean())
    if args.surrogate:
        from saliency_monitor.analysis.surrogate import fit_bilinear_surrogate

        fit_images = torch.cat([parse_batch(b).images for b in result.data.train_dataloader()])  # the 120 trainval
        surrogate, report = fit_bilinear_surrogate(model, fit_images, task="multilabel", epochs=40, lr=3e-3)
        print("surrogate fit (relative L1 per replaced convolution):",
              {k: round(v, 3) for k, v in report.fit_l1.items()})
        variants["bilinear surrogate"] = (surrogate.eval(), None)
        with torch.no_grad():
            differences["bilinear surrogate"] = float((surrogate(images).sigmoid() - plain_p).abs().mean())

    maps = {name: compute_saliency(m, images, targets, layers, METHODS, smooth=mode)
            for name, (m, mode) in variants.items()}
    rows = []
    for method in METHODS:
        for layer in layers:
            base = total_variation(maps["plain"][method][layer][:, 0]).mean()
            row = [method, layer, f"{float(base):.3f}"]
            for name in list(variants)[1:]:
                smoothed = maps[name][method][layer][:, 0]
                tv = total_variation(smoothed).mean()
                rho = map_correlation(maps["plain"][method][layer][:, 0], smoothed, size).nanmean()
                row += [f"{100 * float(tv / base - 1):+.1f}%", f"{float(rho):.2f}"]
            rows.append(row)
    headers = ["method", "layer", "TV plain"]
    for name in list(variants)[1:]:
        headers += [f"TV {name}", f"rho {name}"]
    val_map = float(result.module.trainer.callback_metrics["val/mAP"])
    print(f"\nval mAP of the trained model: {val_map:.3f}; "
          f"{args.probes} test probes, label class; prediction difference: "
          + ", ".join(f"{k} {v:.4f}" for k, v in differences.items()))
    print_table(headers, rows, markdown=True)


if __name__ == "__main__":
    main()
