"""saliency-monitor: backpropagation saliency (Extract & Aggregate, NormGrad, meta-saliency)
for PyTorch, and a Lightning callback that watches it evolve during training."""

from .aggregate import AGGREGATIONS, EXTRACTS, NAMED_METHODS
from .layers import default_layers
from .meta import DEFAULT_META_LR
from .saliency import compute_saliency

__all__ = ["AGGREGATIONS", "DEFAULT_META_LR", "EXTRACTS", "NAMED_METHODS", "compute_saliency", "default_layers"]
__version__ = "0.1.0"
