"""The one registry of saliency methods: each registered once, with what it needs.

A method's maps come from one of two passes:

- ``GRADIENT``: one forward and one activation backward per target (:mod:`.capture`); the map
  is a function of a layer's activation x and gradient g = d logit_c / d x. Every cell of the
  Extract & Aggregate grid is one (``"extract:aggregation"``, :mod:`.aggregate`), the named
  cells and Grad-CAM below included.
- ``RELEVANCE``: layer-wise relevance propagation on a private copy of the model
  (:mod:`.relevance`); ``refines`` names the method whose maps a method post-processes
  (Salient Relevance refines LRP's maps by context-aware saliency detection).

========================  ====================  ===============================================
name                      pass                  map
========================  ====================  ===============================================
``gradient``              gradient              bias:maxabs, max_k |g_k| (Simonyan et al. 2014)
``linear_approx``         gradient              scaling:sum, Σ_k g_k x_k (gradient × input)
``grad_cam``              gradient              relu(Σ_k mean_u(g_k) x_k) (Selvaraju et al. 2017)
``norm_grad``             gradient              conv1x1:norm, ‖g‖‖x‖ (Rebuffi et al. 2020)
``norm_grad_selective``   gradient              scaling:filter_norm, ‖(g ⊙ x)₊‖
``norm_grad_conv``        gradient (Conv2d)     conv:norm, the real conv's weight gradient
``lrp``                   relevance             relevance summed over channels (Bach et al. 2015)
``salient_relevance``     relevance, from lrp   context-aware saliency of the LRP map
``extract:aggregation``   gradient              any cell of :data:`EXTRACTS` x :data:`AGGREGATIONS`
========================  ====================  ===============================================

No other module names a method: it asks the registry (:func:`get_method`,
:func:`parse_methods`) and reads what the method needs from its fields.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from .._checks import check_distinct
from .aggregate import AGGREGATIONS, EXTRACTS, cell_map, grad_cam_map
from .capture import Capture
from .relevance import salient_relevance

GRADIENT = "gradient"
RELEVANCE = "relevance"


@dataclass(frozen=True)
class Method:
    """A saliency method and what computing it needs."""

    name: str
    computed_by: str
    """The pass its maps come from: :data:`GRADIENT` or :data:`RELEVANCE`."""
    extract: str | None = None
    """Its grid cell's extract (None for Grad-CAM and the relevance methods)."""
    aggregation: str | None = None
    refines: str | None = None
    """The method whose maps this one post-processes (they are computed first)."""
    from_capture: Callable[[Capture], Tensor] | None = field(default=None, compare=False, repr=False)
    """Gradient methods: (B, T, h, w) float32 map from one layer's capture."""
    refine: Callable[[Tensor, int], Tensor] | None = field(default=None, compare=False, repr=False)
    """Refining methods: (maps of ``refines``, ``context_size``) -> maps."""
    label: str = field(default="", compare=False)
    """A short label (letters, digits, ``_``) for places with little room, such as logged
    keys: ``NGsel`` for norm_grad_selective; a grid cell abbreviates its extract and
    aggregation (``conv3x3_depthwise:filter_norm`` -> ``dw3_fnorm``)."""

    @property
    def needs_conv_layer(self) -> bool:
        """Whether its layer must be an ``nn.Conv2d`` (the real-conv extract reads its kernel)."""
        return self.extract == "conv"

    def gradient_map(self, capture: Capture) -> Tensor:
        """The (B, T, h, w) float32 map of a gradient method from one layer's capture."""
        if self.from_capture is None:
            raise TypeError(f"Expected a gradient method, but {self.name!r} is computed by {self.computed_by}.")
        return self.from_capture(capture)

    def refined(self, maps: Tensor, context_size: int) -> Tensor:
        """This method's maps from the maps of the pass it is computed by (unchanged unless it refines)."""
        return maps if self.refine is None else self.refine(maps, context_size)

    def __str__(self) -> str:
        return self.name


_EXTRACT_LABELS = {"bias": "b", "scaling": "s", "conv1x1": "c1", "conv3x3": "c3", "conv3x3_depthwise": "dw3",
                   "conv": "cv"}
_AGGREGATION_LABELS = {"sum": "sum", "max": "max", "maxabs": "mabs", "norm": "norm", "filter_norm": "fnorm"}


def _cell(extract: str, aggregation: str, name: str | None = None, label: str | None = None) -> Method:
    return Method(name or f"{extract}:{aggregation}", GRADIENT, extract, aggregation,
                  from_capture=functools.partial(cell_map, extract, aggregation),
                  label=label or f"{_EXTRACT_LABELS[extract]}_{_AGGREGATION_LABELS[aggregation]}")


_NAMED = (
    _cell("bias", "maxabs", "gradient", "grad"),
    _cell("scaling", "sum", "linear_approx", "lin"),
    Method("grad_cam", GRADIENT, from_capture=grad_cam_map, label="GradCAM"),
    _cell("conv1x1", "norm", "norm_grad", "NG"),
    _cell("scaling", "filter_norm", "norm_grad_selective", "NGsel"),
    _cell("conv", "norm", "norm_grad_conv", "NGconv"),
    Method("lrp", RELEVANCE, label="LRP"),
    Method("salient_relevance", RELEVANCE, refines="lrp", refine=salient_relevance, label="SalRel"),
)
METHODS: dict[str, Method] = {method.name: method for method in _NAMED}
"""The named methods; any ``"extract:aggregation"`` pair is a method too (:func:`get_method`)."""
NAMED_METHODS: dict[str, tuple[str, str] | None] = {
    m.name: (m.extract, m.aggregation) if m.extract and m.aggregation else None
    for m in _NAMED
    if m.computed_by == GRADIENT
}
"""The named gradient methods and their grid cells (None: Grad-CAM, not a cell)."""
DEFAULT_METHOD = "norm_grad_selective"
"""``compute_saliency``'s default."""
MONITOR_METHODS = ("norm_grad_selective", "norm_grad")
"""The monitor's default: the paper's selective NormGrad and NormGrad."""
LINEAR_AND_SELECTIVE = ("linear_approx", "norm_grad_selective")
"""Gradient × input and selective NormGrad, the pair the paper's §4.5 randomisation compares."""


@functools.cache
def _lookup(name: str) -> Method | None:
    if name in METHODS:
        return METHODS[name]
    extract, separator, aggregation = name.partition(":")
    if separator and extract in EXTRACTS and aggregation in AGGREGATIONS:
        return _cell(extract, aggregation)
    return None


def get_method(spec: object, argument: str = "methods") -> Method:
    """The method named ``spec`` (a :class:`Method` is returned as it is); ``argument`` names
    the option in the error."""
    if isinstance(spec, Method):
        return spec
    method = _lookup(spec) if isinstance(spec, str) else None
    if method is None:
        raise ValueError(
            f"Expected `{argument}` to hold methods in {sorted(METHODS)} or 'extract:aggregation' with extract in "
            f"{list(EXTRACTS)} and aggregation in {list(AGGREGATIONS)}, but got {spec!r}."
        )
    return method


def parse_methods(methods: object, argument: str = "methods") -> tuple[Method, ...]:
    """A method name (or :class:`Method`) or a non-empty sequence of distinct ones -> methods."""
    specs = [methods] if isinstance(methods, (str, Method)) else methods
    if not isinstance(specs, (list, tuple)):
        raise TypeError(f"Expected `{argument}` to be a sequence of method names, but got {methods!r}.")
    if not specs:
        raise ValueError(f"Expected `{argument}` to name at least one method, but got an empty list.")
    parsed = tuple(get_method(spec, argument) for spec in specs)
    check_distinct([m.name for m in parsed], argument)
    return parsed


def with_sources(methods: tuple[Method, ...]) -> tuple[Method, ...]:
    """``methods`` plus, after them, every method one of them refines that is not already there."""
    names = {m.name for m in methods}
    sources = [get_method(m.refines) for m in methods if m.refines and m.refines not in names]
    return (*methods, *dict.fromkeys(sources))
