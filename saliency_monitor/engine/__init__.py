"""Model in, maps out: backpropagation saliency for any PyTorch classifier (no Lightning, no wandb).

=================  ========================================================================
layers             which modules maps can be computed at; ``default_layers``
layouts            how a layer's output reads as a map: channels first / last, tokens on a patch grid
layout_detection   which layout a layer has, found during the forward; ``declare_layout`` where it cannot be
model_io           images, targets and logits checked once; eval mode; ``two_class_logits``
task               multiclass / multilabel: a class's loss and probabilities
capture            one forward + one activation backward: each layer's x and g per target
aggregate          the Extract & Aggregate grid in closed form, Grad-CAM
methods            the one registry of methods and what each needs
meta               meta-saliency: one SGD step per (image, target) through functional_call
relevance          LRP on a private copy (zennit) and Salient Relevance
context_saliency   Goferman et al.'s context-aware saliency detection (for Salient Relevance)
smoothing          checkerboard smoothing at stride-2 convolutions (Smooth Deep Saliency)
compute            ``compute_saliency``: options checked once, then every method's maps
=================  ========================================================================
"""

from .aggregate import AGGREGATIONS, EXTRACTS
from .compute import SaliencyMaps, SaliencyOptions, compute_saliency, saliency_maps, saliency_options
from .layers import INPUT, default_layers
from .layouts import declare_layout
from .meta import DEFAULT_META_LR
from .methods import METHODS, NAMED_METHODS, Method, get_method, parse_methods
from .model_io import two_class_logits
from .task import TASKS

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_META_LR",
    "EXTRACTS",
    "INPUT",
    "METHODS",
    "NAMED_METHODS",
    "TASKS",
    "Method",
    "SaliencyMaps",
    "SaliencyOptions",
    "compute_saliency",
    "declare_layout",
    "default_layers",
    "get_method",
    "parse_methods",
    "saliency_maps",
    "saliency_options",
    "two_class_logits",
]
