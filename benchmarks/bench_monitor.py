"""SaliencyMonitor overhead in a real Lightning fit of the VOC example's shape.

    .ci/venv python benchmarks/bench_monitor.py [--accelerator cpu|gpu --arch resnet50 --size 224 --batch 16]

Stand-in for the VOC example: a torchvision ``--arch`` with 20 outputs, multilabel BCE, SGD,
synthetic ``--size``² images carrying boxes (so the pointing game runs), BatchNorm statistics
estimated on two batches (as a pretrained network has them; see ``warm_up_batch_norm``), the
monitor at its
defaults (16 + 16 probes, norm_grad_selective + norm_grad, default layers, meta on with the
calibrated step). A full VOC2007 trainval epoch (5011 images) does not fit a CPU benchmark,
so the script measures, in one run:

- the training step (median of ``--repeat`` steps of a batch, forward + backward + SGD step);
- one monitor evaluation (``saliency_run/time_s`` as the monitor logs it, median over the
  evaluations of a short fit: the baseline at fit start and one at each epoch end);
- the one-off fit-start cost (probe draw, step calibration, the one-probe check), from the fit's wall time;

and prints the evaluation as a multiple of a training step and the monitor's share of a
VOC2007-trainval-sized epoch at ``every_n_epochs=1``:
share = evaluation / (evaluation + ceil(5011 / batch) · step).

Then, with the fit's settled plan and probes, one evaluation (both splits) with
``meta_batching="loop"`` and with ``"vmap"``: its time and its aten operator calls (dispatched
from Python and autograd, and kernels reaching the backend; ``_timing.operator_calls``), the
device-independent figure behind a GPU's cost of batch-1 passes. On a GPU (``--accelerator
gpu``) the training step is the one a user runs there: batch 32 (``--batch``), AMP float16
(``16-mixed``), and the monitor's ``auto`` times both paths at fit start.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from _timing import measure, operator_calls, print_table
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from saliency_monitor import SaliencyMonitor
from saliency_monitor.metrics import correlation
from saliency_monitor.monitor.evaluation import evaluate_probes

VOC_TRAINVAL = 5011
NUM_CLASSES = 20


class Boxes(Dataset):
    """Random images, 1-2 classes each with a box; targets as torchvision detection dicts."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.targets = []
        for i in range(count):
            classes = torch.randperm(NUM_CLASSES, generator=generator)[: 1 + i % 2]
            corners = torch.rand(len(classes), 2, generator=generator) * size / 2
            boxes = torch.cat([corners, corners + size / 3], dim=1)
            self.targets.append({"labels": classes, "boxes": boxes})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def collate(batch):
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def multi_hot(targets) -> torch.Tensor:
    return torch.stack([torch.zeros(NUM_CLASSES).index_fill_(0, t["labels"], 1.0) for t in targets])


class Module(pl.LightningModule):
    def __init__(self, arch: str) -> None:
        super().__init__()
        self.model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return F.binary_cross_entropy_with_logits(self(images), multi_hot(targets))

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        loss = F.binary_cross_entropy_with_logits(self(images), multi_hot(targets))
        self.log("val_loss", loss, batch_size=len(images))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Spy(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.meta_lr = math.nan
        self.errors = 0.0

    name = "spy"
    version = "0"

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.errors = max(self.errors, metrics.get("saliency_run/errors", 0.0))
        if "saliency_run/time_s" in metrics:
            self.times.append(metrics["saliency_run/time_s"])
            self.meta_lr = metrics.get("saliency_run/meta_lr", math.nan)


def warm_up_batch_norm(module: pl.LightningModule, loader: DataLoader, batches: int = 2) -> None:
    """Estimate BatchNorm running statistics on a few batches, as a pretrained network has them:
    a random-init ResNet in eval mode (running var 1) has activations growing ~1e10 through its
    blocks, so any saliency (and the meta step most) works at the edge of float32."""
    module.train()
    with torch.no_grad():
        for i, (images, _) in enumerate(loader):
            if i == batches:
                break
            module(images)


def fit(args, monitor: SaliencyMonitor | None, spy: Spy) -> tuple[float, pl.LightningModule]:
    pl.seed_everything(0, verbose=False)
    train = DataLoader(Boxes(max(64, args.batch * args.steps), args.size, 0), batch_size=args.batch, shuffle=True,
                       collate_fn=collate)
    val = DataLoader(Boxes(32, args.size, 1), batch_size=args.batch, collate_fn=collate)
    trainer = pl.Trainer(
        max_epochs=args.epochs, limit_train_batches=args.steps, limit_val_batches=1, accelerator=args.accelerator,
        precision=args.precision,
        devices=1, logger=spy, callbacks=[monitor] if monitor else [], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(),
    )
    module = Module(args.arch)
    warm_up_batch_norm(module, train)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(takes scalars only|litlogger|log_every_n_steps).*")
        trainer.fit(module, train, val)
    return time.perf_counter() - start, module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: 16 on CPU, 32 on GPU)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per epoch in the short fits")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    args.batch = args.batch or (32 if device == "cuda" else 16)
    args.precision = "16-mixed" if device == "cuda" else "32-true"
    print(f"{args.arch} {args.size}px batch {args.batch}, {torch.get_num_threads()} threads, device {device}, "
          f"load {os.getloadavg()[0]:.2f}", file=sys.stderr)

    module = Module(args.arch).to(device)
    optimizer = module.configure_optimizers()
    batch = collate([Boxes(args.batch, args.size, 2)[i] for i in range(args.batch)])
    images, targets = batch[0].to(device), multi_hot(batch[1]).to(device)

    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            loss = F.binary_cross_entropy_with_logits(module(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()

    before = measure(step, repeat=args.repeat).median

    without = Spy()
    base_wall, _ = fit(args, None, without)
    spy = Spy()
    monitor = SaliencyMonitor()
    with_wall, fitted = fit(args, monitor, spy)
    # the step timed before and after the fits: a drift of a shared machine's speed moves both
    step_time = (before + measure(step, repeat=args.repeat).median) / 2
    if spy.errors or len(spy.times) != args.epochs + 1:
        raise SystemExit(f"the monitor logged {len(spy.times)} evaluations and {spy.errors:.0f} errors; expected "
                         f"{args.epochs + 1} and 0")
    evaluation = statistics.median(spy.times)
    fit_start = with_wall - base_wall - sum(spy.times)
    steps_per_epoch = math.ceil(VOC_TRAINVAL / args.batch)
    share = evaluation / (evaluation + steps_per_epoch * step_time)
    plan = monitor.state.plan
    rows = [
        ["training step (s), mean of the medians before and after the fits", f"{step_time:.3f}"],
        ["monitor evaluation (s), median of " + str(len(spy.times)), f"{evaluation:.2f}"],
        ["evaluation / training step", f"{evaluation / step_time:.1f}"],
        ["fit-start cost: probe draw + calibration + check (s)", f"{fit_start:.1f}"],
        ["calibrated meta_lr", f"{spy.meta_lr:.3g}"],
        ["meta_batching settled by auto", plan.saliency.meta_batching],
        [f"share of a VOC2007 trainval epoch ({steps_per_epoch} steps)", f"{100 * share:.1f}%"],
    ]
    rows += compare_batching(fitted.to(device), monitor, step_time, steps_per_epoch, args.repeat)
    print_table(["quantity", "value"], rows)
    print("command:", " ".join(["python", *sys.argv]))


def compare_batching(module, monitor: SaliencyMonitor, step_time: float, steps_per_epoch: int, repeat: int):
    """One evaluation (both splits, the fit's plan and probes) with each meta_batching: time and aten
    calls; on a CPU the calls are counted as a GPU makes them (rank correlations in the accelerator's
    chunks, a split's meta pairs in one vectorised chunk: ``meta_memory``'s CUDA default holds them)."""
    plan = monitor.state.plan
    on_cpu = next(module.parameters()).device.type == "cpu"
    shapes = [(" as on a GPU", True)] if on_cpu else [("", False)]
    rows, calls = [], {}
    for batching in ("loop", "vmap", "no meta"):
        settled = replace(plan, saliency=replace(plan.saliency, meta_batching=batching))
        if batching == "no meta":  # what both share: plain maps, metrics, combination
            settled = replace(plan, meta_lr=None)

        def evaluation(settled=settled) -> None:
            for probes in monitor.state.probes.values():
                evaluate_probes(module, probes, settled)

        if batching != "no meta":
            seconds = measure(evaluation, repeat=max(1, repeat - 2)).median
            share = seconds / (seconds + steps_per_epoch * step_time)
            rows.append([f"evaluation with meta_batching={batching!r}: s / training steps / epoch share",
                         f"{seconds:.2f} / {seconds / step_time:.1f} / {100 * share:.1f}%"])
        for shape, gpu in shapes:
            with gpu_shaped(gpu):
                gpu_plan = replace(settled, saliency=replace(settled.saliency, meta_memory=1 << 40))
                calls[batching, shape] = operator_calls(lambda p=gpu_plan if gpu else settled: evaluation(p))
    for shape, _ in shapes:
        for kind in ("dispatched", "kernels"):
            loop, vmap, shared = (calls[batching, shape][kind] for batching in ("loop", "vmap", "no meta"))
            rows.append([f"aten calls ({kind}) per evaluation{shape}: loop, vmap, ratio; meta part only",
                         f"{loop}, {vmap}, {loop / vmap:.1f}; {(loop - shared) / (vmap - shared):.1f}"])
    return rows


@contextlib.contextmanager
def gpu_shaped(active: bool):
    """Rank correlations chunked as on an accelerator (the CPU ranks a few rows at a time)."""
    saved = dict(correlation._CHUNK_ELEMENTS)
    if active:
        correlation._CHUNK_ELEMENTS["cpu"] = correlation._CHUNK_ELEMENTS["default"]
    try:
        yield
    finally:
        correlation._CHUNK_ELEMENTS.update(saved)


if __name__ == "__main__":
    main()
