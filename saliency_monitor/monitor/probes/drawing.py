"""Drawing a probe set once, deterministically, without touching training's RNGs or samplers.

:func:`draw_probes` draws a class-balanced probe set from a seed; :func:`load_probes` re-reads
the same items (bitwise the same images, random transforms included). Every read runs under
isolated global RNGs (torch CPU and initialised CUDA devices, ``random``, numpy).

Probes of different sizes (a dataset whose images differ in size, e.g. PASCAL VOC before any
resize; items are read one at a time, or a stream's batches are collated into lists) are
brought to one size once drawn: the most common (H, W) among the drawn probes (ties: the
largest area), every other image resized to it with bilinear, antialiased interpolation
(integer images as float, then rounded back to their dtype), boxes scaled with it, instance
masks resized by nearest neighbour (:mod:`.sizing`). The probe set's ``resized`` then says how
many were resized and to what size (fit start warns once). Re-read probes get the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..._checks import check_int, describe
from ..rng import derived_seed, isolated_rng
from .batch import ProbeBatch, int_list
from .parsing import check_class_names, parse_parts
from .sizing import one_size


def draw_probes(
    dataloader: DataLoader,
    count: int,
    *,
    seed: int = 0,
    batch_to_probe: Callable[[object], object] | None = None,
    class_names: Sequence[str] | None = None,
    max_candidates: int | None = None,
) -> tuple[ProbeBatch, list[int]]:
    """Draw ``count`` probe images once, deterministically from ``seed``, spread across classes.

    Candidates:

    - map-style dataset: the first ``max_candidates`` indices of
      ``torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))``; each item
      ``dataset[i]`` is collated alone with the loader's ``collate_fn([item])`` (in this process)
      and must give one image. Identity = dataset index.
    - :class:`~torch.utils.data.IterableDataset`: the first ``max_candidates`` images the
      dataset yields, read through a fresh single-process DataLoader with the loader's
      ``batch_size`` and ``collate_fn`` (the user's loader, its workers and its iterator are
      never touched). Identity = position in that stream.

    Each batch goes through ``batch_to_probe`` (when given) and then
    :func:`~.parsing.parse_batch` (images of different sizes: see the module docstring).
    Selection is a greedy round-robin over classes: repeat {for each class in ascending order,
    take the earliest unused candidate having it} until ``count`` are chosen or none is left;
    fewer candidates than ``count`` gives all of them.

    RNG isolation: every read runs with the global torch (CPU, and CUDA when initialised),
    ``random`` and numpy RNGs saved, seeded from ``(seed, identity)`` (from ``seed`` for a
    stream) and restored afterwards, so random transforms give the same images at every call
    and training's RNG streams and samplers are left exactly as they were (the loader's
    sampler and batch sampler are never used). :func:`load_probes` re-reads the same images.

    Args:
        dataloader: the training or validation DataLoader.
        count: number of probes, >= 1.
        seed: int >= 0.
        batch_to_probe: turns a batch into (images, labels) or a :class:`ProbeBatch`.
        class_names: see :func:`parse_batch`.
        max_candidates: most items (images of a stream) read; default ``max(8 * count, 64)``,
            at least ``count``.

    Returns:
        The probes in selection order, and their identities.
    """
    count = check_int(count, "count", minimum=1)
    seed = _check_seed(seed)
    limit = max(8 * count, 64) if max_candidates is None else check_int(max_candidates, "max_candidates", minimum=1)
    if limit < count:
        raise ValueError(f"Expected `max_candidates` to be >= `count`={count}, but got {max_candidates!r}.")
    reader = _Reader(dataloader, seed, batch_to_probe, class_names)
    if reader.map_style:
        order = torch.randperm(reader.length, generator=torch.Generator().manual_seed(seed))
        identities = order[:limit].tolist()
        candidates = reader.items(identities)
    else:
        candidates = reader.stream(limit)
        identities = list(range(len(candidates)))
    chosen = _spread([candidate.classes[0] for candidate in candidates], count)
    return one_size([candidates[k] for k in chosen]), [identities[k] for k in chosen]


def load_probes(
    dataloader: DataLoader,
    identities: Sequence[int],
    *,
    seed: int = 0,
    batch_to_probe: Callable[[object], object] | None = None,
    class_names: Sequence[str] | None = None,
) -> ProbeBatch:
    """Re-read the probes :func:`draw_probes` returned as ``identities`` (same ``seed``).

    Items are read exactly as :func:`draw_probes` read them (same per-item seeding), so the
    images are bitwise the same when the dataset and its transforms are deterministic given
    the global RNGs. A stream is re-read from its start up to ``max(identities) + 1`` images.
    """
    seed = _check_seed(seed)
    reader = _Reader(dataloader, seed, batch_to_probe, class_names)
    wanted = int_list(identities)
    if wanted is None or not wanted or min(wanted) < 0 or (reader.map_style and max(wanted) >= reader.length):
        bound = f"in [0, {reader.length})" if reader.map_style else ">= 0"
        raise ValueError(f"Expected `identities` to be a non-empty sequence of ints {bound}, but got {identities!r}.")
    if reader.map_style:
        return one_size(reader.items(wanted))
    stream = reader.stream(max(wanted) + 1)
    if len(stream) <= max(wanted):
        raise ValueError(
            f"Expected the dataset to yield at least {max(wanted) + 1} images, as when the probes were drawn, "
            f"but it yielded {len(stream)}."
        )
    return one_size([stream[k] for k in wanted])


class _Reader:
    """Reads single items (map-style) or the start of a stream (iterable) under isolated RNGs."""

    def __init__(
        self,
        dataloader: object,
        seed: int,
        batch_to_probe: Callable[[object], object] | None,
        class_names: Sequence[str] | None,
    ) -> None:
        if not isinstance(dataloader, DataLoader):
            raise TypeError(f"Expected `dataloader` to be a torch DataLoader, but got {describe(dataloader)}.")
        if batch_to_probe is not None and not callable(batch_to_probe):
            raise TypeError(f"Expected `batch_to_probe` to be None or a callable, but got {batch_to_probe!r}.")
        self.names = check_class_names(class_names)
        self.loader, self.seed, self.batch_to_probe = dataloader, seed, batch_to_probe
        dataset = dataloader.dataset
        self.map_style = not isinstance(dataset, IterableDataset)
        if self.map_style:
            if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
                raise TypeError(
                    "Expected `dataloader.dataset` to be a map-style dataset (with __len__ and __getitem__) or an "
                    f"IterableDataset, but got {describe(dataset)}."
                )
            if dataloader.batch_sampler is None:
                raise ValueError(
                    "Expected `dataloader` to batch samples (batch_size or batch_sampler set), but got a DataLoader "
                    "with batch_size=None. Probes are drawn one dataset item at a time: give the monitor a loader "
                    "whose dataset yields single images, or an IterableDataset."
                )
            self.length = len(dataset)
        if self.map_style and self.length == 0:
            raise ValueError("Expected `dataloader.dataset` to hold at least one item, but it is empty.")

    def parse(self, batch: object) -> list[ProbeBatch]:
        """One probe per image of the batch, each at its own size."""
        parts = parse_parts(batch if self.batch_to_probe is None else self.batch_to_probe(batch), self.names)
        return [part if len(part) == 1 else part.select([n]) for part in parts for n in range(len(part))]

    def items(self, indices: Sequence[int]) -> list[ProbeBatch]:
        return [self.item(i) for i in indices]

    def item(self, index: int) -> ProbeBatch:
        with isolated_rng(derived_seed(self.seed, index)):
            probes = self.parse(self.loader.collate_fn([self.loader.dataset[index]]))
        if len(probes) != 1:
            raise ValueError(
                f"Expected dataset item {index}, collated alone, to give one image, but got {len(probes)}."
            )
        return probes[0]

    def stream(self, limit: int) -> list[ProbeBatch]:
        loader = DataLoader(
            self.loader.dataset, batch_size=self.loader.batch_size, collate_fn=self.loader.collate_fn, num_workers=0
        )
        probes: list[ProbeBatch] = []
        with isolated_rng(derived_seed(self.seed, "stream")):
            for batch in loader:
                probes += self.parse(batch)
                if len(probes) >= limit:
                    break
        if not probes:
            raise ValueError("Expected `dataloader.dataset` to yield at least one item, but it yielded none.")
        return probes[:limit]


def _spread(classes: Sequence[tuple[int, ...]], count: int) -> list[int]:
    """Greedy round-robin over classes (ascending): positions of the chosen candidates, in order."""
    by_class: dict[int, list[int]] = {}
    for position, image_classes in enumerate(classes):
        for c in image_classes:
            by_class.setdefault(c, []).append(position)
    cursor = dict.fromkeys(by_class, 0)
    used = [False] * len(classes)
    chosen: list[int] = []
    target = min(count, len(classes))  # every candidate has a class: each round takes one at least
    while len(chosen) < target:
        for c in sorted(by_class):
            queue, i = by_class[c], cursor[c]
            while i < len(queue) and used[queue[i]]:
                i += 1
            cursor[c] = i
            if i < len(queue) and len(chosen) < target:
                used[queue[i]] = True
                chosen.append(queue[i])
    return chosen


def _check_seed(seed: object) -> int:
    expected = "an int in [0, 2**63)"
    value = check_int(seed, "seed", expected=expected)
    if value >= 2**63:
        raise ValueError(f"Expected `seed` to be {expected}, but got {seed!r}.")
    return value
