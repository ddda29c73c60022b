"""Model-parameter randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018; Rebuffi et al., "There and Back Again", §4.5 and supp. E).

*Cascading randomisation*: starting from the trained model, re-initialise its parameterised
modules one at a time from the output end down to the input, cumulatively (step k has the last
k modules random), and after every step compare each image's saliency map with the map of the
trained model. A method that depends on what the model learned loses that correlation as the
randomisation goes down; one that does not (an edge detector) keeps it.

- Order: modules with parameters of their own (``module.parameters(recurse=False)``) that ran
  in one eval-mode forward of the images, in *reverse order of completion* (the forward
  order, so that a residual block's ``downsample`` lands where it runs, whatever the
  definition order). Modules that did not run (an unused head) are never randomised.
- Re-initialisation: each module's own ``reset_parameters()`` (PyTorch's default initialiser
  for that layer type) under ``torch.manual_seed(s)`` with s = the first 8 bytes (little
  endian) of ``sha256(f"{seed}:{name}")`` modulo 2⁶³: a module's random weights depend on the
  seed and its name only, not on the order.
  The global RNG state (CPU, and CUDA for modules on a CUDA device) is restored afterwards.
- BatchNorm: its ``reset_parameters()`` resets it to its initial state (γ = 1, β = 0, running
  mean 0, running variance 1, the batch count 0), i.e. in eval mode the near-identity
  x / √(1 + eps): its learned scale and shift and the statistics of the trained features are
  removed (nothing random can be drawn for it). With ``batchnorm="reset"`` (default) every
  BatchNorm is a step of its own at its place in the order, as Adebayo et al. re-initialise
  every layer's variables; ``batchnorm="keep"`` leaves every normalisation layer trained and
  randomises only the other modules (then a random conv's output is normalised with the
  trained statistics). Other normalisation layers (``GroupNorm``, ``LayerNorm``, ...) are
  treated the same way.
- Everything happens on a deep copy; ``model`` itself is never touched (bitwise), nor is the
  global RNG state.

Correlations are Spearman's ρ of maps upsampled bilinearly to the image size
(:func:`~saliency_monitor.metrics.map_correlation`); the meta variant compares meta maps
(each computed at its own inner step of the model at that stage) with the trained model's
meta maps. Pure math: no Lightning, no logging.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ..engine.compute import saliency_maps, saliency_options
from ..engine.layers import trace_forward
from ..engine.meta import check_meta_lr
from ..engine.methods import LINEAR_AND_SELECTIVE
from ..engine.model_io import OutputToLogits, check_images
from ..metrics import map_correlation

__all__ = ["BATCHNORM_MODES", "ORIGINAL", "RandomizationResult", "cascading_randomization", "randomization_order"]

ORIGINAL = "original"
"""The name of step 0: the trained model, nothing randomised."""
BATCHNORM_MODES = ("reset", "keep")
NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
"""Module types that ``batchnorm="keep"`` leaves trained (``_NormBase``: every BatchNorm/InstanceNorm)."""


@dataclass(frozen=True)
class RandomizationResult:
    """Per-step, per-image rank correlation with the trained model's maps."""

    steps: tuple[str, ...]
    """``"original"`` (step 0, nothing randomised), then the module randomised at each step
    (cumulatively: step k has ``steps[1:k+1]`` random)."""
    correlations: dict[str, dict[str, Tensor]]
    """``correlations[method][layer]``: (len(steps), N) float64 Spearman ρ of each image's map at
    that step with its map at step 0; row 0 is 1 (NaN for a constant map). Meta variants are
    keyed ``f"{method}+meta"``."""
    targets: Tensor
    """(N,) the class each map explains."""

    def mean(self, method: str, layer: str) -> Tensor:
        """(len(steps),) mean ρ over the images (NaN images left out)."""
        return self.correlations[method][layer].nanmean(dim=1)


def randomization_order(
    model: nn.Module, images: Tensor, batchnorm: str = "reset"
) -> list[str]:
    """Names of the modules :func:`cascading_randomization` re-initialises, in its order.

    Modules with parameters of their own that run in an eval-mode forward of ``images[:1]``,
    last to finish first; ``batchnorm="keep"`` leaves out normalisation layers. The model
    itself must not hold parameters directly (they could not be re-initialised).
    """
    check_images(images)
    _check_batchnorm(batchnorm)
    own = [name for name, _ in model.named_parameters(recurse=False)]
    if own:
        raise ValueError(
            f"Expected the model's parameters to live in submodules, but the model itself holds {own}: they cannot "
            "be randomised."
        )
    trace = trace_forward(model, images[:1])
    modules = dict(model.named_modules())
    order = []
    for name in reversed(trace.order):
        module = modules[name]
        if next(module.parameters(recurse=False), None) is None:
            continue
        if batchnorm == "keep" and isinstance(module, NORMALIZATION_TYPES):
            continue
        if not callable(getattr(module, "reset_parameters", None)):
            raise TypeError(
                f"Expected every parameterised module to have reset_parameters() to re-initialise it, but "
                f"{name!r} ({type(module).__name__}) has none; pass `modules=` without it."
            )
        order.append(name)
    return order


def cascading_randomization(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layer: str | Sequence[str],
    method: str | Sequence[str] = LINEAR_AND_SELECTIVE,
    *,
    meta_lr: float | None = None,
    seed: int = 0,
    batchnorm: str = "reset",
    modules: Sequence[str] | None = None,
    task: str = "multiclass",
    output_to_logits: OutputToLogits | None = None,
) -> RandomizationResult:
    """Cascading model-parameter randomisation (see the module docstring).

    Args:
        model: the trained classifier; never modified (a deep copy is randomised).
        images: (N, C, H, W) on the model's device.
        targets: (N,) class of each image's map, the same at every step (e.g. the trained
            model's predicted class).
        layer: the layer(s) whose maps are compared (names for
            :func:`~saliency_monitor.compute_saliency`, ``"input"`` included).
        method: saliency method(s) (:func:`~saliency_monitor.compute_saliency` names).
        meta_lr: if given, the meta-saliency variant of every method is compared too
            (keyed ``f"{method}+meta"``), with this inner-step learning rate.
        seed: seeds every re-initialisation (per module, with its name).
        batchnorm: ``"reset"`` (normalisation layers are steps too) or ``"keep"``.
        modules: the modules to randomise, output end first (default:
            :func:`randomization_order`); each needs ``reset_parameters()``.
        task: the meta loss (``"multiclass"`` or ``"multilabel"``).
        output_to_logits: picks the logits from a non-tensor output.

    Returns:
        :class:`RandomizationResult` with ``len(modules) + 1`` steps.
    """
    check_images(images)
    targets = _check_targets(targets, images)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"Expected `seed` to be an int, but got {seed!r}.")
    order = randomization_order(model, images, batchnorm) if modules is None else _check_modules(model, modules)
    plain = saliency_options(layer, method, task=task, output_to_logits=output_to_logits,
                             output_size=(images.shape[-2], images.shape[-1]))
    variants = {"": plain} if meta_lr is None else {"": plain, "+meta": replace(plain, meta_lr=check_meta_lr(meta_lr))}
    clone = copy.deepcopy(model)
    named = dict(clone.named_modules())
    reference = {suffix: saliency_maps(clone, images, targets, options) for suffix, options in variants.items()}
    rows: dict[str, dict[str, list[Tensor]]] = {}
    for step in (None, *order):  # one step's maps at a time: memory does not grow with the steps
        if step is not None:
            _reset(named[step], _module_seed(seed, step))
        for suffix, options in variants.items():
            maps = reference[suffix] if step is None else saliency_maps(clone, images, targets, options)
            for name, per_layer in maps.items():
                for layer_name, value in per_layer.items():
                    rho = map_correlation(value[:, 0], reference[suffix][name][layer_name][:, 0], None)
                    rows.setdefault(name + suffix, {}).setdefault(layer_name, []).append(rho.double().cpu())
    correlations = {key: {name: torch.stack(per) for name, per in table.items()} for key, table in rows.items()}
    return RandomizationResult((ORIGINAL, *order), correlations, targets.cpu())


def _reset(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` under ``seed``, the global RNG state restored afterwards."""
    devices = sorted({p.device.index or 0 for p in module.parameters(recurse=False) if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        getattr(module, "reset_parameters")()  # noqa: B009 - checked callable by randomization_order


def _module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _check_batchnorm(batchnorm: object) -> None:
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"Expected `batchnorm` to be one of {list(BATCHNORM_MODES)}, but got {batchnorm!r}.")


def _check_targets(targets: object, images: Tensor) -> Tensor:
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.shape != (images.shape[0],):
        raise ValueError(
            f"Expected `targets` to be ({images.shape[0]},) integer class indices (one per image), but got "
            f"{targets.dtype} of shape {tuple(targets.shape)}."
        )
    return targets.to(device=images.device, dtype=torch.long)


def _check_modules(model: nn.Module, modules: Sequence[str]) -> list[str]:
    if isinstance(modules, str) or not isinstance(modules, Sequence):
        raise TypeError(f"Expected `modules` to be a sequence of module names, but got {modules!r}.")
    named = dict(model.named_modules())
    for name in modules:
        if name not in named or name == "":
            raise ValueError(f"Expected `modules` to be names from model.named_modules(), but got {name!r}.")
        if not callable(getattr(named[name], "reset_parameters", None)):
            raise TypeError(
                f"Expected every module in `modules` to have reset_parameters(), but {name!r} "
                f"({type(named[name]).__name__}) has none."
            )
    duplicates = sorted({n for n in modules if list(modules).count(n) > 1})
    if duplicates:
        raise ValueError(f"Expected distinct module names in `modules`, but got duplicates: {duplicates}.")
    return list(modules)
