"""Fixed probe sets: the user's batches read, drawn once and re-loaded identically.

- :class:`ProbeBatch` (:mod:`.batch`): probe images with their classes and, when known, object
  regions (boxes in PASCAL VOC's convention, optional instance masks).
- :func:`parse_batch` (:mod:`.parsing`): the default reader of a batch as the user's
  DataLoader yields it.
- :func:`draw_probes` / :func:`load_probes` (:mod:`.drawing`): a class-balanced probe set
  drawn deterministically from a seed, without advancing any RNG or sampler training uses.
- :func:`one_size` (:mod:`.sizing`): probes of different sizes brought to one size
  (:class:`Resizing` records it).
"""

from .batch import ProbeBatch, Resizing, label_max_min_targets, probe_chunks
from .drawing import draw_probes, load_probes
from .parsing import IMAGE_KEYS, LABEL_KEYS, VOC_CLASSES, parse_batch
from .sizing import one_size

__all__ = [
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "VOC_CLASSES",
    "ProbeBatch",
    "Resizing",
    "draw_probes",
    "label_max_min_targets",
    "load_probes",
    "one_size",
    "parse_batch",
    "probe_chunks",
]
