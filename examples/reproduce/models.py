"""The models the analyses explain: the cached default training run, weights and checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saliency-monitor" / "reproduce"
DEFAULT_ARCH = "resnet18"
DEFAULT_SIZE = 64
"""The default model's input size (pixels)."""
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


# --------------------------------------------------------------------------- the default model


@dataclass(frozen=True)
class TrainedRun:
    """The cached voc_finetune run: its data, per-epoch checkpoints and how long it took."""

    directory: Path
    data_root: Path
    checkpoints: tuple[Path, ...]
    train_seconds: float

    @property
    def final(self) -> Path:
        """The last epoch's checkpoint."""
        return self.checkpoints[-1]


def default_run(cache: Path = CACHE) -> TrainedRun:
    """The synthetic-VOC ResNet-18 trained by ``voc_finetune.main`` with its offline defaults.

    Trained on first use (only the output paths differ from the defaults: the data, W&B run
    and picture go to the cache folder; per-epoch checkpoints via ``--checkpoint-dir``) and
    reused afterwards: a ``run.json`` written last marks a complete run.
    """
    argv = ["--data-dir", "{dir}/synthetic-voc", "--checkpoint-dir", "{dir}/checkpoints",
            "--wandb-dir", "{dir}/wandb", "--picture", "{dir}/voc_saliency.png"]
    key = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    directory = Path(cache) / f"voc_finetune-{key}"
    marker = directory / "run.json"
    if not marker.is_file():
        _train_default(directory, [a.format(dir=directory) for a in argv], marker)
    info = json.loads(marker.read_text())
    checkpoints = tuple(sorted((directory / "checkpoints").glob("epoch_*.pt")))
    return TrainedRun(directory, directory / "synthetic-voc", checkpoints, float(info["train_seconds"]))


def _train_default(directory: Path, argv: list[str], marker: Path) -> None:
    """Run ``voc_finetune.main(argv)`` (W&B offline unless set), then write ``marker``."""
    from examples import voc_finetune

    print(f"Training the default synthetic-VOC model once (voc_finetune {' '.join(argv)}) ...", flush=True)
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline" if previous is None else previous
    start = time.perf_counter()
    try:
        voc_finetune.main(argv)
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"voc_finetune_argv": argv, "train_seconds": seconds}, indent=2) + "\n")
    print(f"Trained in {seconds:.0f} s; cached in {directory}", flush=True)


# --------------------------------------------------------------------------- models


def build_model(arch: str, weights: str | Path | None, num_classes: int | None) -> nn.Module:
    """``torchvision.models.<arch>`` in eval mode with ``weights``.

    ``weights``: a path to a state dict or a Lightning checkpoint (its ``state_dict``, with the
    wrapper's prefix such as ``model.`` removed) for a model with ``num_classes`` outputs; a
    torchvision weights name such as ``DEFAULT`` or ``IMAGENET1K_V1`` (downloaded by torchvision,
    its own head kept); or None for a seeded random initialisation.
    """
    if weights is None:
        return torchvision.models.get_model(arch, num_classes=num_classes).eval()
    if Path(weights).is_file():
        model = torchvision.models.get_model(arch, num_classes=num_classes)
        model.load_state_dict(_matching_state(load_state_dict(Path(weights)), model, Path(weights)))
        return model.eval()
    try:
        return torchvision.models.get_model(arch, weights=str(weights)).eval()
    except Exception as error:  # an unknown name, or no network: say which, never fall back
        raise SystemExit(
            f"Could not load {arch} weights {str(weights)!r}: not a file, and torchvision could not provide them "
            f"({type(error).__name__}: {error})."
        ) from error


def on_device(model: nn.Module, device: str) -> nn.Module:
    """``model`` moved to ``device``, in eval mode."""
    return model.to(torch.device(device)).eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by ``torch.save`` or a Lightning checkpoint's ``state_dict`` (CPU tensors)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise SystemExit(f"Could not read a state dict from {path} ({type(error).__name__}: {error}).") from error
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise SystemExit(f"Expected {path} to hold a state dict (name -> tensor) or a Lightning checkpoint.")
    return content


def _matching_state(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """``state`` with wrapper prefixes dropped until its keys are ``model``'s, else SystemExit."""
    wanted = set(model.state_dict())
    candidate = state
    while candidate and set(candidate) != wanted:
        heads = {k.split(".", 1)[0] for k in candidate}
        if len(heads) != 1 or not all("." in k for k in candidate):
            break
        candidate = {k.split(".", 1)[1]: v for k, v in candidate.items()}  # drop a wrapper prefix
    if set(candidate) != wanted:
        missing, unexpected = sorted(wanted - set(state))[:3], sorted(set(state) - wanted)[:3]
        raise SystemExit(
            f"Expected {path} to hold the parameters of {type(model).__name__}, but keys differ "
            f"(missing e.g. {missing}, unexpected e.g. {unexpected})."
        )
    return candidate


# --------------------------------------------------------------------------- checkpoints


def epoch_checkpoints(paths: Sequence[Path] | None, run: TrainedRun | None) -> list[tuple[int, Path]] | None:
    """(epoch, path) of the meta-gap's checkpoints: ``paths`` (files, or folders of them, sorted by
    name), else the default run's; None when neither is given (the one model analysed)."""
    if paths:
        files = [p for path in paths for p in (sorted(path.iterdir()) if path.is_dir() else [path])
                 if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
        if not files:
            suffixes = ", ".join(CHECKPOINT_SUFFIXES)
            raise SystemExit(f"Expected checkpoint files ({suffixes}) in --checkpoints, but found none.")
    elif run is not None:
        files = list(run.checkpoints)
    else:
        return None  # meta-gap on the one model given
    return [(_epoch(p, i), p) for i, p in enumerate(files)]


def _epoch(path: Path, index: int) -> int:
    """The last number in ``path``'s name, else ``index``."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else index
