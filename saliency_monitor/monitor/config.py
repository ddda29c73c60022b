"""Every option of the SaliencyMonitor, checked once, where it enters.

:class:`MonitorConfig` is what ``SaliencyMonitor(...)`` builds from its keyword arguments.
Each option is checked by exactly one function (the engine's checks for the options it
passes on to :func:`~saliency_monitor.engine.compute_saliency`), with a message that names the
option; numpy integers and floats are accepted wherever a number is. What needs the model or
the data (layer names, the task when inferred, the meta step when calibrated) is settled at
fit start (:mod:`saliency_monitor.monitor.fit_start`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """The monitor's options (see :class:`~saliency_monitor.SaliencyMonitor` for each one's meaning).

    Construction checks every option and normalises it (sequences become tuples, numpy scalars
    Python numbers, ``every_n_epochs`` 1 when no schedule is given); :attr:`saliency` holds the
    options the engine gets, checked by the engine's own checks.
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
    saliency: SaliencyOptions = field(init=False, repr=False, compare=False)
    """The engine's options: layers (None until fit start), methods, task ("multiclass" until
    it is inferred at fit start), meta parameters, smoothing, relevance options."""

    def __post_init__(self) -> None:
        def set_(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        set_("task", check_choice(self.task, "task", TASKS, or_none=True))
        layers = None if self.layers is None else check_names(self.layers, "layers")
        saliency = saliency_options(
            layers, check_names(self.methods, "methods"), task=self.task or "multiclass",
            meta_params=self.meta_params, output_to_logits=self.output_to_logits, smooth=self.smooth,
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
