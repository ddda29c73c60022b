"""Every option of the SaliencyMonitor, checked once, where it enters.

:class:`MonitorConfig` is what ``SaliencyMonitor(...)`` builds from its keyword arguments.
Each option is checked by exactly one function (the engine's checks for the options it
passes on to :func:`~saliency_monitor.engine.compute_saliency`), with a message that names the
option; numpy integers and floats are accepted wherever a number is. What needs the model or
the data (layer names, the task when inferred, the meta step when calibrated) is settled at
fit start (:mod:`saliency_monitor.monitor.fit_start`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from torch import Tensor

from .._checks import check_callable, check_choice, check_distinct, check_int, check_names, check_number
from ..engine.compute import SaliencyOptions, saliency_options
from ..engine.meta import check_meta_lr
from ..engine.methods import MONITOR_METHODS
from ..engine.relevance import DEFAULT_CONTEXT_SIZE
from ..engine.task import TASKS
from ..metrics.combination import COMBINATIONS, FIXED_WEIGHTINGS
from .render import COLORMAPS

META_LR_RULES = ("calibrate", "optimizer")
"""``meta_lr`` values other than a number: calibrated at fit start, or the optimizer's lr."""
ON_ERROR = ("warn", "raise")


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's options; ``SaliencyMonitor(**options)`` builds one as ``monitor.config``.

    Construction checks every option and normalises it (sequences become tuples, numpy scalars
    Python numbers, ``every_n_epochs`` 1 when no schedule is given); :attr:`saliency` holds the
    options the engine gets, checked by the engine's own checks.

    Args:
        layers: layer names from ``pl_module.named_modules()`` (or ``"input"``); None =
            :func:`~saliency_monitor.default_layers` of the module.
        methods: saliency methods (names from :mod:`saliency_monitor.engine.methods`).
        num_train_probes, num_val_probes: probe images per split (val 0 = train only).
        every_n_epochs, every_n_train_steps: the schedule; give at most one (neither: every
            epoch).
        meta_lr: the meta step: a number (an SGD learning rate; the paper uses 0.002),
            ``"calibrate"`` (default, see :mod:`saliency_monitor.monitor.meta_step`),
            ``"optimizer"`` (the first optimizer's learning rate) or None (no meta maps or meta
            metrics).
        task: ``"multiclass"`` or ``"multilabel"`` (the meta step's loss and how the label
            class is chosen); None = inferred from the labels.
        meta_params: parameters the meta step moves: ``"all"`` or ``"trainable"``.
        meta_batching: how the meta maps' (probe, class) pairs run: ``"loop"`` (one at a time),
            ``"vmap"`` (vectorised chunks, :mod:`saliency_monitor.engine.meta_vectorised`) or
            ``"auto"`` (default: the loop on a CPU; elsewhere both are timed at fit start on
            the probes and the faster is kept). Same maps either way.
        meta_memory: bytes of θ' a vectorised chunk holds (pairs per chunk = ``meta_memory`` //
            bytes of the stepped parameters); None: a quarter of what a CUDA device can still
            give, 2 GiB elsewhere.
        class_names: names for pictures and tables (default: the dataset's ``classes``
            attribute if it has one, else indices); also maps VOC annotation names to indices.
        batch_to_probe: callable turning one of your batches into ``(images, labels)``, for
            batch formats the default parser does not know (see
            :func:`saliency_monitor.monitor.probes.parse_batch`).
        output_to_logits: for modules whose forward does not return the (B, C) logits tensor
            (a dict, a tuple, ...): maps the output to it, e.g. ``lambda out: out["logits"]``.
        smooth: checkerboard-noise removal at stride-2 convolutions during the saliency passes
            (:mod:`saliency_monitor.engine.smoothing`): ``"backward"``, ``"forward"`` (changes
            the predictions; their change is logged) or None. Gradient methods only.
        lrp_composite: the LRP rules of the relevance methods: ``"epsilon_plus_flat"``,
            ``"epsilon_gamma_box"`` or a ``zennit.core.Composite``.
        context_size: long edge (px) at which Salient Relevance runs context-aware saliency
            detection (Goferman et al. use 250; the cost grows with its 4th power).
        num_logged_images: probes shown in the pictures (0 = no pictures).
        combine_weights, combine_mode: the layer combination (``uniform``/``linear``,
            ``sum``/``product``).
        pointing_tolerance: pointing game radius in pixels (15 in the paper).
        probe_batch_size: probes per saliency call (bounds memory).
        seed: seeds the probe draw (and random transforms while drawing) and the RNG streams
            the evaluation passes run under (models that draw random numbers in eval mode).
        on_error: ``"warn"`` (a fault inside the monitor is reported once with its
            traceback, counted in ``saliency_run/errors``, and training goes on) or ``"raise"``.
        colormap: colour map of the pictures (``turbo``, ``viridis``, ``gray``).
    """

    layers: Sequence[str] | None = None
    methods: Sequence[str] = MONITOR_METHODS
    num_train_probes: int = 16
    num_val_probes: int = 16
    every_n_epochs: int | None = None
    every_n_train_steps: int | None = None
    meta_lr: float | str | None = "calibrate"
    task: str | None = None
    meta_params: str = "all"
    meta_batching: str = "auto"
    meta_memory: int | None = None
    class_names: Sequence[str] | None = None
    batch_to_probe: Callable[[Any], Any] | None = None
    output_to_logits: Callable[[Any], Tensor] | None = None
    smooth: str | None = None
    lrp_composite: Any = "epsilon_plus_flat"
    context_size: int = DEFAULT_CONTEXT_SIZE
    num_logged_images: int = 4
    combine_weights: str = "uniform"
    combine_mode: str = "sum"
    pointing_tolerance: float = 15.0
    probe_batch_size: int = 16
    seed: int = 0
    on_error: str = "warn"
    colormap: str = "turbo"
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """The options the user gave (the others hold their defaults): at a resume they win over
    the checkpoint's (see :mod:`saliency_monitor.monitor.fit_start`)."""
    saliency: SaliencyOptions = field(init=False, repr=False, compare=False)
    """The engine's options: layers (None until fit start), methods, task ("multiclass" until
    it is inferred at fit start), meta parameters, smoothing, relevance options."""

    def __post_init__(self) -> None:
        def set_(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        unknown = set(self.explicit) - set(OPTION_NAMES)
        if unknown:
            raise ValueError(f"Expected `explicit` to name options of {OPTION_NAMES}, but got {sorted(unknown)}.")
        set_("explicit", frozenset(self.explicit))
        set_("task", check_choice(self.task, "task", TASKS, or_none=True))
        layers = None if self.layers is None else check_names(self.layers, "layers")
        saliency = saliency_options(
            layers, check_names(self.methods, "methods"), task=self.task or "multiclass",
            meta_params=self.meta_params, meta_batching=self.meta_batching, meta_memory=self.meta_memory,
            output_to_logits=self.output_to_logits, smooth=self.smooth,
            lrp_composite=self.lrp_composite, context_size=self.context_size,
        )
        set_("saliency", saliency)
        set_("layers", saliency.layers)
        set_("methods", tuple(m.name for m in saliency.methods))
        set_("context_size", saliency.context_size)
        set_("num_train_probes", check_int(self.num_train_probes, "num_train_probes", minimum=1))
        set_("num_val_probes", check_int(self.num_val_probes, "num_val_probes", minimum=0))
        if self.every_n_epochs is not None and self.every_n_train_steps is not None:
            raise ValueError(
                "Expected at most one of `every_n_epochs` and `every_n_train_steps`, but got "
                f"every_n_epochs={self.every_n_epochs!r} and every_n_train_steps={self.every_n_train_steps!r}."
            )
        if self.every_n_train_steps is not None:
            set_("every_n_train_steps", check_int(self.every_n_train_steps, "every_n_train_steps", minimum=1))
        else:
            epochs = 1 if self.every_n_epochs is None else self.every_n_epochs
            set_("every_n_epochs", check_int(epochs, "every_n_epochs", minimum=1))
        set_("meta_lr", _check_meta_lr_option(self.meta_lr))
        if self.class_names is not None:
            set_("class_names", check_names(self.class_names, "class_names"))
            check_distinct(self.class_names, "class_names")
        check_callable(self.batch_to_probe, "batch_to_probe")
        set_("num_logged_images", check_int(self.num_logged_images, "num_logged_images", minimum=0))
        check_choice(self.combine_weights, "combine_weights", FIXED_WEIGHTINGS)
        check_choice(self.combine_mode, "combine_mode", COMBINATIONS)
        set_("pointing_tolerance", check_number(self.pointing_tolerance, "pointing_tolerance",
                                                expected="a number >= 0", valid=lambda v: v >= 0))
        set_("probe_batch_size", check_int(self.probe_batch_size, "probe_batch_size", minimum=1))
        set_("seed", check_int(self.seed, "seed", minimum=0))
        check_choice(self.on_error, "on_error", ON_ERROR)
        check_choice(self.colormap, "colormap", COLORMAPS)


OPTION_NAMES = tuple(f.name for f in fields(MonitorConfig) if f.name not in ("explicit", "saliency"))
"""The monitor's options, in ``SaliencyMonitor(...)``'s order."""

S = TypeVar("S")
P = ParamSpec("P")


def records_explicit_options(init: Callable[Concatenate[S, P], None]) -> Callable[Concatenate[S, P], None]:
    """Decorates ``SaliencyMonitor.__init__`` (keyword-only options): after it ran, the names of
    the keyword arguments the caller passed are recorded in ``self.config.explicit``."""

    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> None:
        init(self, *args, **kwargs)
        config = getattr(self, "config")  # noqa: B009 - the decorated __init__ sets it
        setattr(self, "config", replace(config, explicit=frozenset(kwargs)))  # noqa: B010

    functools.update_wrapper(wrapper, init)  # the signature and docstring stay the options'
    return wrapper


def _check_meta_lr_option(meta_lr: object) -> float | str | None:
    """None, a rule of :data:`META_LR_RULES` or a finite non-zero number."""
    if meta_lr is None:
        return None
    if isinstance(meta_lr, str) and meta_lr in META_LR_RULES:
        return meta_lr
    try:
        return check_meta_lr(meta_lr)
    except ValueError:
        raise ValueError(
            f"Expected `meta_lr` to be a non-zero number, one of {list(META_LR_RULES)} or None, but got {meta_lr!r}."
        ) from None
