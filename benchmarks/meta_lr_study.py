"""Which meta-saliency step should SaliencyMonitor use by default? A measurement.

    .ci/venv python benchmarks/meta_lr_study.py [--epochs 12 --seed 0] [--quick]
    .ci/venv python benchmarks/meta_lr_study.py --from-json /tmp/meta_lr_study.json   # re-analyse

A half-width ResNet-18 (torchvision ``ResNet(BasicBlock, [2, 2, 2, 2])`` with base width 32;
``--width 64`` is the stock resnet18) learns a synthetic 10-class task from 100 images and
overfits it (train acc -> 1, val acc ~0.4, val loss rising after a few epochs). Each class is
a shape (disk, square, triangle, ring, plus, X, diamond, striped square, striped disk,
checkered square) at a random position and size, in a jittered class colour, on a noisy
low-frequency background with grey-ish rectangles as clutter. Training: SGD(momentum 0.9,
weight decay 5e-4), lr ``--train-lr`` (0.01), batch 10, no augmentation.

Before training (epoch 0) and after every epoch, on fixed probes (16 train, 16 val images,
class-stratified), with targets [label, max-pred, min-pred] and the layers
``default_layers`` picks (relu, layer1..layer4 at 64x64), for both methods
(norm_grad_selective, linear_approx) it computes the plain maps and, for every meta lr of
the grid, the meta maps, and records per probe:

- meta correlation (Spearman, map vs meta map) of the label class, per layer and for the
  uniform sum-combination of the layers (``combine_maps``, 64x64);
- class sensitivity (max vs min class), plain and meta, per layer and combined.

Then it scores each grid lr and the candidate default rules (fixed 0.002 / 0.02, the
optimizer's lr, calibrating at epoch 0 to a train meta correlation of 0.95 / 0.9 / 0.8) by
the train - val gap: its value at epoch 0 (should be ~0: no probe has been trained on), its
size and signal-to-noise (gap / standard error over probes) once train acc >= 0.9, its rank
correlation with the generalisation gap (val - train loss), and the class sensitivity.
Writes everything (per-probe values included) to ``--out`` (/tmp/meta_lr_study.json);
``--from-json`` re-prints the analysis of a saved run and rewrites it to ``--out``.

Cost: each evaluation is 2 splits x (grid) x probes x <=3 targets meta steps. Defaults
(12 epochs, 8 lrs, 16+16 probes, width 32): ~10 min on one shared CPU thread; ``--quick``
(8 epochs, 6 lrs, 12+12 probes): ~4 min. Stock width (``--width 64``) costs ~4x per
evaluation; use ``--eval-every 4`` there.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import spearmanr
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from saliency_monitor import compute_saliency, default_layers
from saliency_monitor.metrics import class_sensitivity, combine_maps, max_min_targets, meta_correlation

SIZE = 64
NUM_CLASSES = 10
METHODS = ("norm_grad_selective", "linear_approx")
SPLITS = ("train", "val")
COMBINED = "combined"
FULL_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
QUICK_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
CALIBRATION_METHOD = "norm_grad_selective"  # the monitor's first (default) method
PALETTE = np.array(
    [[2 * v - 1 for v in colorsys.hsv_to_rgb(k / NUM_CLASSES, 0.9, 0.9)] for k in range(NUM_CLASSES)], np.float32
)

# --------------------------------------------------------------------------- data


def shape_mask(cls: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of class ``cls``'s shape of radius ``r`` at offsets (dy, dx) from its centre."""
    d, sq = np.hypot(dy, dx), np.maximum(abs(dx), abs(dy))
    u, v = (dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2)
    masks = {
        0: lambda: d < r,
        1: lambda: sq < 0.85 * r,
        2: lambda: (dy < 0.8 * r) & (dy > -r) & (abs(dx) < (dy + r) * 0.55),
        3: lambda: (d < r) & (d > 0.55 * r),
        4: lambda: ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r)),
        5: lambda: ((abs(u) < r / 3.2) & (abs(v) < r)) | ((abs(v) < r / 3.2) & (abs(u) < r)),
        6: lambda: abs(dx) + abs(dy) < r,
        7: lambda: (sq < 0.85 * r) & (np.floor(dy / 3) % 2 == 0),
        8: lambda: (d < r) & (np.floor(dx / 3) % 2 == 0),
        9: lambda: (sq < 0.85 * r) & ((np.floor(dy / 4) + np.floor(dx / 4)) % 2 == 0),
    }
    return masks[cls]()


def make_images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` images (count, 3, 64, 64) in about [-1.5, 1.5] and balanced labels (count,)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    labels = np.arange(count) % NUM_CLASSES
    rng.shuffle(labels)
    images = np.empty((count, 3, SIZE, SIZE), np.float32)
    for i, cls in enumerate(labels):
        low = torch.from_numpy(rng.normal(0, 0.3, (1, 3, 4, 4)).astype(np.float32))
        image = F.interpolate(low, size=SIZE, mode="bicubic", align_corners=False)[0].numpy()
        for _ in range(3):  # clutter: half-grey rectangles
            h, w = rng.integers(3, 14, 2)
            y0, x0 = rng.integers(0, SIZE - 3, 2)
            image[:, y0 : y0 + h, x0 : x0 + w] = 0.5 * rng.uniform(-1, 1) + 0.5 * rng.uniform(-1, 1, (3, 1, 1))
        r = rng.uniform(9, 14)
        cy, cx = rng.uniform(r, SIZE - r, 2)
        colour = PALETTE[cls] + rng.normal(0, 0.3, 3).astype(np.float32)
        image[:, shape_mask(int(cls), yy - cy, xx - cx, r)] = colour[:, None]
        images[i] = image + rng.normal(0, 0.25, image.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def stratified(labels: Tensor, count: int) -> Tensor:
    """Indices of ``count`` images cycling through the classes (first occurrences first)."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(NUM_CLASSES)]
    order = [idx[k] for k in range(max(map(len, per_class))) for idx in per_class if k < len(idx)]
    return torch.tensor(order[:count])


# --------------------------------------------------------------------------- model and training


def build_model(width: int, seed: int) -> nn.Module:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with base width ``width`` (64 = torchvision's)."""
    torch.manual_seed(seed)
    if width == 64:
        return torchvision.models.resnet18(num_classes=NUM_CLASSES)
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=NUM_CLASSES)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(BasicBlock, width, 2)
    model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
    model.fc = nn.Linear(8 * width, NUM_CLASSES)
    for module in model.modules():  # torchvision's init
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, batch: int,
                generator: torch.Generator) -> None:
    model.train()
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch):
        idx = order[i : i + batch]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()


@torch.no_grad()
def loss_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    logits = torch.cat([model(x[i : i + 100]) for i in range(0, len(x), 100)])
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


# --------------------------------------------------------------------------- saliency measurements

Values = dict[str, list[float]]  # layer (or "combined") -> one value per probe


def with_combined(maps: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-layer maps (N, 3, 64, 64) plus their uniform sum-combination."""
    return {**maps, COMBINED: combine_maps(maps, size=SIZE, mode="sum")}


def per_layer(fn, a: dict[str, Tensor], b: dict[str, Tensor], ta: int, tb: int) -> Values:
    return {name: fn(a[name][:, ta], b[name][:, tb], None).tolist() for name in a}


def measure_split(model: nn.Module, images: Tensor, labels: Tensor, layers: list[str],
                  grid: Sequence[float]) -> dict:
    """Plain class sensitivity, and per lr meta correlation and meta class sensitivity."""
    model.eval()
    with torch.no_grad():
        targets = torch.cat([labels[:, None], max_min_targets(model(images))], dim=1)
    common = {"layers": layers, "methods": list(METHODS), "task": "multiclass", "output_size": SIZE}
    plain = compute_saliency(model, images, targets, meta_lr=None, **common)
    plain = {m: with_combined(plain[m]) for m in METHODS}
    out = {
        "targets": targets.tolist(),
        "class_sensitivity": {m: per_layer(class_sensitivity, plain[m], plain[m], 1, 2) for m in METHODS},
        "meta": {},
    }
    for lr in grid:
        meta = compute_saliency(model, images, targets, meta_lr=lr, **common)
        meta = {m: with_combined(meta[m]) for m in METHODS}
        out["meta"][repr(lr)] = {
            "meta_correlation": {m: per_layer(meta_correlation, plain[m], meta[m], 0, 0) for m in METHODS},
            "meta_class_sensitivity": {m: per_layer(class_sensitivity, meta[m], meta[m], 1, 2) for m in METHODS},
        }
    return out


# --------------------------------------------------------------------------- statistics


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """NaN-ignoring mean, standard error and count (NaN: a constant map)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, len(v)


def gap_stats(record: dict, lr: str, method: str, layer: str) -> dict[str, float]:
    """Train and val mean meta correlation, gap = train - val, its SE and SNR."""
    tr, se_tr, _ = mean_se(record["train"]["meta"][lr]["meta_correlation"][method][layer])
    va, se_va, _ = mean_se(record["val"]["meta"][lr]["meta_correlation"][method][layer])
    se = math.hypot(se_tr, se_va)
    gap = tr - va
    return {"train": tr, "val": va, "gap": gap, "se": se, "snr": gap / se if se > 0 else math.nan}


def sensitivity(record: dict, method: str, layer: str, lr: str | None) -> float:
    """Mean class sensitivity over train and val probes (plain if ``lr`` is None)."""
    values = []
    for split in SPLITS:
        data = record[split]
        scores = data["class_sensitivity"] if lr is None else data["meta"][lr]["meta_class_sensitivity"]
        values += scores[method][layer]
    return mean_se(values)[0]


def rule_lrs(epochs: list[dict], grid: Sequence[float], train_lr: float) -> dict[str, str]:
    """Rule name -> the grid lr (as its repr key) the rule picks; rules whose lr is off the grid are left out."""
    keys = [repr(lr) for lr in grid]

    def on_grid(value: float) -> str | None:
        return next((k for k in keys if math.isclose(float(k), value)), None)

    rules = {"A fixed 0.002": on_grid(0.002), "B fixed 0.02": on_grid(0.02),
             f"C optimizer lr (this SGD run: {train_lr:g})": on_grid(train_lr),
             "C optimizer lr (Adam, typical 1e-3)": on_grid(0.001)}
    for layer, target in ((COMBINED, 0.95), (COMBINED, 0.9), (COMBINED, 0.8), ("layer4", 0.9), ("layer4", 0.8)):
        means = {k: baseline_train(epochs, k, layer) for k in keys}
        rules[f"D calibrate {layer} to {target}"] = min(keys, key=lambda k: abs(means[k] - target))
    return {name: key for name, key in rules.items() if key is not None}


def baseline_train(epochs: list[dict], lr: str, layer: str) -> float:
    """Mean train-probe meta correlation at the first evaluation (what calibration sees)."""
    return mean_se(epochs[0]["train"]["meta"][lr]["meta_correlation"][CALIBRATION_METHOD][layer])[0]


def rank_trend(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman correlation of paired finite values (NaN with fewer than 4 pairs)."""
    ok = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(ok) < 4:
        return math.nan
    return float(spearmanr(*zip(*ok)).statistic)


def score_lr(epochs: list[dict], lr: str, method: str, layer: str) -> dict[str, float]:
    """Gap trajectory and class sensitivity of one meta lr on one method / layer.

    ``overfit`` = evaluations after training with train acc >= 0.9; ``trend_gen`` = Spearman
    over all trained evaluations of the gap vs the generalisation gap (val − train loss);
    ``trend_val`` = Spearman of the gap vs the val loss from the val-loss minimum on.
    """
    gaps = [gap_stats(r, lr, method, layer) for r in epochs]
    trained = list(zip(epochs, gaps))[1:]
    overfit = [g for r, g in trained if r["train_acc"] >= 0.9]
    lowest = min(range(len(trained)), key=lambda i: trained[i][0]["val_loss"]) if trained else 0
    rising = trained[lowest:]
    return {
        "gap0": gaps[0]["gap"], "snr0": gaps[0]["snr"],
        "gap_overfit": float(np.mean([g["gap"] for g in overfit])) if overfit else math.nan,
        "snr_overfit": float(np.nanmean([g["snr"] for g in overfit])) if overfit else math.nan,
        "gap_last": gaps[-1]["gap"], "snr_last": gaps[-1]["snr"],
        "train_last": gaps[-1]["train"], "val_last": gaps[-1]["val"],
        "trend_gen": rank_trend([r["val_loss"] - r["train_loss"] for r, _ in trained], [g["gap"] for _, g in trained]),
        "trend_val": rank_trend([r["val_loss"] for r, _ in rising], [g["gap"] for _, g in rising]),
        "cs_plain": float(np.nanmean([sensitivity(r, method, layer, None) for r in epochs])),
        "cs_meta": float(np.nanmean([sensitivity(r, method, layer, lr) for r in epochs])),
    }


# --------------------------------------------------------------------------- printing


def fmt(x: float, spec: str = ".3f") -> str:
    return "nan" if not math.isfinite(x) else format(x, spec)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def report(result: dict) -> dict:
    """Print the tables; return the per-lr scores and the rules' picks."""
    config, epochs = result["config"], result["epochs"]
    keys = [repr(lr) for lr in config["grid"]]
    print("\n== training (eval-mode loss/acc on all train / val images)")
    print_table(["ep", "train loss", "train acc", "val loss", "val acc", "eval s"],
                [[r["epoch"], fmt(r["train_loss"]), fmt(r["train_acc"], ".2f"), fmt(r["val_loss"]),
                  fmt(r["val_acc"], ".2f"), fmt(r["eval_s"], ".0f")] for r in epochs])
    for method in METHODS:
        print(f"\n== meta correlation, label class, {method}: combined train/val/gap/SNR, then gap per layer")
        rows = []
        for r in epochs:
            for k in keys:
                g = gap_stats(r, k, method, COMBINED)
                per = [fmt(gap_stats(r, k, method, name)["gap"], "+.2f") for name in config["layers"]]
                rows.append([r["epoch"], k, fmt(g["train"]), fmt(g["val"]), fmt(g["gap"], "+.3f"),
                             fmt(g["snr"], "+.1f"), *per])
        print_table(["ep", "lr", "train", "val", "gap", "SNR", *[f"gap {n}" for n in config["layers"]]], rows)
    for method in METHODS:
        print(f"\n== class sensitivity (max vs min class, mean of train+val probes), {method}")
        rows = []
        for r in epochs:
            plain = [fmt(sensitivity(r, method, name, None), "+.2f") for name in ("layer4", COMBINED)]
            for k in keys:
                meta = [fmt(sensitivity(r, method, name, k), "+.2f") for name in ("layer4", COMBINED)]
                rows.append([r["epoch"], k, *plain, *meta])
        print_table(["ep", "lr", "plain l4", "plain comb", "meta l4", "meta comb"], rows)

    scores: dict = {}
    for method in METHODS:
        for layer in (COMBINED, "layer4"):
            print(f"\n== per meta lr, {method} / {layer}: gap = train - val meta correlation, SNR = gap / SE over"
                  " probes; overfit = evaluations with train acc >= 0.9; trend = Spearman of gap vs (val - train"
                  " loss) over trained epochs, [vs val loss after its minimum]; cs = class sensitivity, mean over"
                  " all evaluations")
            rows = []
            for k in keys:
                s = score_lr(epochs, k, method, layer)
                scores[f"{method}|{layer}|{k}"] = s
                rows.append([k, fmt(baseline_train(epochs, k, COMBINED)), fmt(s["gap0"], "+.3f"),
                             fmt(s["snr0"], "+.1f"), fmt(s["gap_overfit"], "+.3f"), fmt(s["snr_overfit"], "+.1f"),
                             fmt(s["gap_last"], "+.3f"), fmt(s["snr_last"], "+.1f"),
                             f"{fmt(s['train_last'], '.2f')}/{fmt(s['val_last'], '.2f')}",
                             f"{fmt(s['trend_gen'], '+.2f')} [{fmt(s['trend_val'], '+.2f')}]",
                             fmt(s["cs_plain"], "+.2f"), fmt(s["cs_meta"], "+.2f")])
            print_table(["lr", "ep0 train (calib)", "gap ep0", "SNR ep0", "gap overfit", "SNR overfit", "gap last",
                         "SNR last", "tr/va last", "trend", "cs plain", "cs meta"], rows)
    rules = rule_lrs(epochs, config["grid"], config["train_lr"])
    print(f"\n== rules -> lr (calibration: {CALIBRATION_METHOD} train probes at epoch 0; grid {config['grid']})")
    rows = []
    for name, k in rules.items():
        s, la = scores[f"{CALIBRATION_METHOD}|{COMBINED}|{k}"], scores[f"linear_approx|{COMBINED}|{k}"]
        rows.append([name, k, fmt(s["snr0"], "+.1f"), fmt(s["snr_overfit"], "+.1f"), fmt(s["gap_overfit"], "+.2f"),
                     fmt(s["trend_gen"], "+.2f"), fmt(s["cs_plain"], "+.2f"), fmt(s["cs_meta"], "+.2f"),
                     fmt(la["snr_overfit"], "+.1f"), fmt(la["cs_plain"], "+.2f"), fmt(la["cs_meta"], "+.2f")])
    print_table(["rule", "lr", "NGS SNR ep0", "NGS SNR overfit", "NGS gap overfit", "NGS trend", "NGS cs plain",
                 "NGS cs meta", "LA SNR overfit", "LA cs plain", "LA cs meta"], rows)
    print("(NGS = norm_grad_selective, LA = linear_approx, both on the combined map)")
    return {"per_lr": scores, "rules": rules}


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    x_train, y_train = make_images(args.train_size, seed=1000 * args.seed + 1)
    x_val, y_val = make_images(args.val_size, seed=1000 * args.seed + 2)
    probe_idx = {"train": stratified(y_train, args.probes), "val": stratified(y_val, args.probes)}
    probes = {"train": (x_train[probe_idx["train"]], y_train[probe_idx["train"]]),
              "val": (x_val[probe_idx["val"]], y_val[probe_idx["val"]])}
    model = build_model(args.width, args.seed)
    layers = default_layers(model, x_train[:1])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.train_lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed)
    config = {**vars(args), "grid": list(args.grid), "layers": layers, "methods": list(METHODS),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    epochs = []
    for epoch in range(args.epochs + 1):
        if epoch:
            train_epoch(model, optimizer, x_train, y_train, args.batch, generator)
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        tic = time.perf_counter()
        record: dict = {"epoch": epoch}
        record["train_loss"], record["train_acc"] = loss_accuracy(model, x_train, y_train)
        record["val_loss"], record["val_acc"] = loss_accuracy(model, x_val, y_val)
        for split in SPLITS:
            record[split] = measure_split(model, *probes[split], layers, args.grid)
        record["eval_s"] = time.perf_counter() - tic
        epochs.append(record)
        g = gap_stats(record, repr(args.grid[len(args.grid) // 2]), CALIBRATION_METHOD, COMBINED)
        print(f"epoch {epoch}: train {record['train_loss']:.3f}/{record['train_acc']:.2f} "
              f"val {record['val_loss']:.3f}/{record['val_acc']:.2f}  gap@lr={args.grid[len(args.grid) // 2]} "
              f"{g['gap']:+.3f} (SNR {g['snr']:+.1f})  eval {record['eval_s']:.0f} s, "
              f"total {time.perf_counter() - start:.0f} s", flush=True)
    return {"config": config, "epochs": epochs, "runtime_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"8 epochs, grid {QUICK_GRID}, 12+12 probes (about a third of the full cost)")
    parser.add_argument("--grid", type=lambda s: tuple(float(v) for v in s.split(",")), default=None,
                        help=f"comma-separated meta lrs (default {FULL_GRID})")
    parser.add_argument("--probes", type=int, default=16, help="probes per split")
    parser.add_argument("--train-size", type=int, default=100)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--width", type=int, default=32, help="ResNet-18 base width (64 = torchvision resnet18)")
    parser.add_argument("--train-lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0 and last always)")
    parser.add_argument("--out", default="/tmp/meta_lr_study.json")
    parser.add_argument("--from-json", default=None, help="re-analyse a saved study instead of running one")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
    else:
        if args.quick:
            args.epochs, args.probes = min(args.epochs, 8), min(args.probes, 12)
            args.grid = args.grid or QUICK_GRID
        args.grid = args.grid or FULL_GRID
        result = run(args)
    result = {key: result[key] for key in ("config", "epochs", "runtime_s")}
    result["analysis"] = report(result)
    print(f"\nstudy runtime {result['runtime_s']:.0f} s ({result['config']['threads']} thread)")
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
