"""Quickstart: saliency maps of a ResNet-18 for one image, written as a PNG grid.

    cd /work/main && .ci/venv python examples/demo.py [--image PATH] [--targets C ...] [--out FILE]

(``.ci/venv`` runs from the repository root, so relative --image/--out paths start there.)

Builds torchvision's resnet18 (ImageNet weights if they are already in the torch hub cache,
random init otherwise: nothing is downloaded), takes a deterministic synthetic image (or
``--image``), explains the top-1 class (or ``--targets``) with five methods at
``default_layers(model, image)`` in one ``compute_saliency`` call, and writes a grid: one row
per method (and target), one column per layer, each map upsampled to the image, min-max
normalised and overlaid on the image with a jet colormap. numpy + Pillow only.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import Tensor, nn

from saliency_monitor import compute_saliency, default_layers

METHODS = ["norm_grad_selective", "norm_grad", "linear_approx", "grad_cam", "gradient"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LABEL_HEIGHT = 18
LABEL_WIDTH = 150


def load_model() -> tuple[nn.Module, list[str] | None]:
    """resnet18 with ImageNet weights if cached (no download), else random init (seed 0).

    Returns the eval-mode model and its class names (None without weights).
    """
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        if not cached.is_file():
            raise FileNotFoundError(f"{cached} not in the torch hub cache")
        model = torchvision.models.resnet18(weights=weights)
        categories: list[str] | None = list(weights.meta["categories"])
        print(f"weights: ImageNet ({cached})")
    except Exception as error:  # noqa: BLE001 - any failure means: fall back, and say so
        torch.manual_seed(0)  # the same random init whatever the failed attempt consumed
        model = torchvision.models.resnet18(weights=None)
        categories = None
        reason = (str(error).strip().splitlines() or [""])[0]
        print(f"weights: random init, seed 0 (no ImageNet weights: {type(error).__name__}: {reason})")
    return model.eval(), categories


def synthetic_image(size: int = 224) -> Image.Image:
    """A deterministic RGB test image: a few coloured shapes on a soft gradient."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    across, down = np.meshgrid(ramp, ramp)  # left -> right, top -> bottom
    background = np.stack([60 + 60 * across, 90 + 50 * down, 140 - 40 * across], axis=-1)
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    s = size / 224
    draw.ellipse([20 * s, 30 * s, 100 * s, 110 * s], fill=(220, 40, 40))
    draw.rectangle([130 * s, 20 * s, 200 * s, 90 * s], fill=(250, 210, 30))
    draw.polygon([(40 * s, 200 * s), (110 * s, 130 * s), (150 * s, 205 * s)], fill=(30, 170, 60))
    draw.ellipse([150 * s, 130 * s, 210 * s, 190 * s], fill=(245, 245, 245), outline=(20, 20, 20), width=4)
    return image


def load_image(path: str, size: int = 224) -> Image.Image:
    """An image file, resized (shorter side) and centre-cropped to ``size`` x ``size``."""
    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> (1, 3, H, W) ImageNet-normalised float32 tensor."""
    array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: (H, W) values in [0, 1] -> (H, W, 3) uint8 (blue -> red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # r, g, b peaks
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def normalise(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise one map to [0, 1] (a constant map becomes all zeros)."""
    lo, hi = float(saliency.min()), float(saliency.max())
    return (saliency - lo) / (hi - lo) if hi > lo else np.zeros_like(saliency)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured, min-max normalised (H, W) map onto an (H, W, 3) uint8 image."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * jet(normalise(saliency)).astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def grid(image: Image.Image, maps: dict[str, dict[str, Tensor]], layers: Sequence[str],
         rows: Sequence[tuple[str, str, int]]) -> Image.Image:
    """One row per ``(label, method, target index)``; columns: the image, then each layer."""
    base = np.asarray(image)
    h, w = base.shape[:2]
    canvas = Image.new("RGB", (LABEL_WIDTH + w * (len(layers) + 1), LABEL_HEIGHT + h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(["image", *layers]):
        draw.text((LABEL_WIDTH + col * w + 4, 3), title, fill="black")
    for row, (label, method, t) in enumerate(rows):
        top = LABEL_HEIGHT + row * h
        draw.text((4, top + h // 2 - 6), label, fill="black")
        canvas.paste(image, (LABEL_WIDTH, top))
        for col, layer in enumerate(layers, start=1):
            saliency = maps[method][layer][0, t].numpy()
            canvas.paste(Image.fromarray(overlay(base, saliency)), (LABEL_WIDTH + col * w, top))
    return canvas


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="an image file (default: a synthetic test image)")
    parser.add_argument("--targets", type=int, nargs="+", help="class indices (default: the top-1 class)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    parser.add_argument("--out", default="demo_saliency.png", help="output PNG (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.image and not Path(args.image).is_file():
        # .ci/venv runs commands from the repository root: relative paths start there.
        raise SystemExit(f"error: --image {args.image!r} is not a file (relative to {Path.cwd()})")
    model, categories = load_model()
    image = load_image(args.image, args.size) if args.image else synthetic_image(args.size)
    images = to_tensor(image)

    with torch.no_grad():
        logits = model(images)
    num_classes = logits.shape[1]
    targets = args.targets if args.targets else [int(logits.argmax(dim=1))]
    if any(not 0 <= c < num_classes for c in targets):
        raise SystemExit(f"error: --targets must be class indices in [0, {num_classes}), got {targets}")

    def describe(c: int) -> str:
        return f"{c} ({categories[c]})" if categories else str(c)

    print(f"image: {args.image or 'synthetic'} ({args.size}x{args.size}); "
          f"top-1 class {describe(int(logits.argmax(dim=1)))}; explaining {[describe(c) for c in targets]}")

    start = time.perf_counter()
    layers = default_layers(model, images)
    maps = compute_saliency(model, images, torch.tensor([targets]), layers, METHODS,
                            output_size=(args.size, args.size))
    elapsed = time.perf_counter() - start
    print(f"layers: {layers}")
    print(f"methods: {METHODS}")
    print(f"compute_saliency (incl. default_layers): {elapsed:.2f} s for {len(METHODS)} methods x "
          f"{len(layers)} layers x {len(targets)} target(s), CPU threads {torch.get_num_threads()}")

    rows = [(m if len(targets) == 1 else f"{m}\nclass {c}", m, t)
            for m in METHODS for t, c in enumerate(targets)]
    out = Path(args.out).resolve()
    grid(image, maps, layers, rows).save(out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
