"""Maps in, numbers out: pure functions on tensors (no model, no Lightning, no logging).

=====================  =====================================================================
correlation            Spearman ρ of maps (:func:`rank_correlation`), class sensitivity
                       (§4.3), meta correlation (supp. D), drift
smoothness             total variation of a map (Smooth Deep Saliency)
localisation           the pointing game and its "difficult" subset (supp. A), VOC boxes
similarity             SSIM (Wang et al. 2004), as "Beyond Saliency" compares maps
maps                   bilinear resizing and min-max normalisation of maps
combination            layer weights and the combination of layers' maps (§4.2)
statistics             mean and standard error over probes
=====================  =====================================================================
"""

from .combination import (
    COMBINATIONS,
    FIXED_WEIGHTINGS,
    combine_maps,
    fixed_weights,
    linear_weights,
    normalize_weights,
    uniform_weights,
)
from .correlation import (
    class_sensitivity,
    drift,
    map_correlation,
    max_min_targets,
    meta_correlation,
    rank_correlation,
    rank_data,
)
from .localisation import PointingGameResult, difficult_pairs, pointing_game, pointing_hits, voc_boxes_to_masks
from .maps import minmax_normalize, resize_maps
from .similarity import structural_similarity
from .smoothness import total_variation
from .statistics import mean_stderr

__all__ = [
    "COMBINATIONS",
    "FIXED_WEIGHTINGS",
    "PointingGameResult",
    "class_sensitivity",
    "combine_maps",
    "difficult_pairs",
    "drift",
    "fixed_weights",
    "linear_weights",
    "map_correlation",
    "max_min_targets",
    "mean_stderr",
    "meta_correlation",
    "minmax_normalize",
    "normalize_weights",
    "pointing_game",
    "pointing_hits",
    "rank_correlation",
    "rank_data",
    "resize_maps",
    "structural_similarity",
    "total_variation",
    "uniform_weights",
    "voc_boxes_to_masks",
]
