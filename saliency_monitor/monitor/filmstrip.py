"""The filmstrip: how the logged probes' maps evolved during the fit, one picture per split.

Rows are the ``num_logged_images`` probes of the pictures (``saliency_maps/{split}``), columns
evaluations, the fit's first (e.g. the pretrained model) on the left. Each cell is the probe's
plain label-class map combined across layers (§4.2), of the first monitored method, blended on
the image as the pictures are (:func:`thumbnails`): ``THUMBNAIL`` px on the long edge. A header
band gives each column's global step, a left band each row's label class (at the latest
evaluation) and the method's short label in the corner (the caption names it in full).

Columns: at most :data:`MAX_COLUMNS`. Each evaluation adds one; past the limit, one column
between the first and the latest is dropped, the one whose neighbours are closest in steps
(``argmin_i steps[i+1] − steps[i−1]``, the earliest on ties, :func:`column_to_drop`): the first
(the baseline) and the latest column always stay, the others stay spread over the run. A
dropped column never comes back and a kept one never changes, so consecutive strips differ by
one added and at most one dropped column. Only the kept cells are stored, as blended uint8
RGB (≤ ``MAX_COLUMNS × probes × 64 × 64 × 3`` bytes per split: 393 KB for 4 probes), and
kept in checkpoints, so a resumed fit's strip goes on (cells keep the colormap they were made with).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..metrics import resize_maps
from ..metrics.maps import constant_maps
from .evaluation import EvaluationPlan, SplitEvaluation
from .keys import COMBINED, method_label
from .probe_metrics import LABEL
from .probes import ProbeBatch
from .render import colorize, overlay, to_uint8_images

MAX_COLUMNS = 8
THUMBNAIL = 64
"""Cell size: px on the long edge (the short edge keeps the image's aspect ratio)."""
ALPHA = 0.5
"""Heat weight of the blend, as in the pictures (:func:`~.render.saliency_grid`)."""

_SEP, _PAD, _FONT_SIZE, _LABEL_WIDTH = 2, 3, 13, 96
_BACKGROUND, _TEXT_COLOR = 255, (0, 0, 0)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass
class Filmstrip:
    """One split's kept columns: ``cells[j]`` (probes, h, w, 3) uint8 made at ``steps[j]``."""

    method: str
    """The method the cells show; another method at a resume starts a new strip."""
    steps: list[int] = field(default_factory=list)
    cells: list[np.ndarray] = field(default_factory=list)

    def add(self, step: int, cells: np.ndarray) -> None:
        """Append a column; past :data:`MAX_COLUMNS`, drop :func:`column_to_drop`'s."""
        self.steps.append(step)
        self.cells.append(cells)
        drop = column_to_drop(self.steps, MAX_COLUMNS)
        if drop is not None:
            del self.steps[drop], self.cells[drop]

    def fits(self, method: str, cells: np.ndarray) -> bool:
        """Whether a column of ``cells`` of ``method`` continues this strip (same method, probes, size)."""
        return method == self.method and all(c.shape == cells.shape for c in self.cells)

    def state_dict(self) -> dict[str, Any]:
        """Tensors, not numpy arrays: checkpoints load with ``torch.load(weights_only=True)``."""
        return {"method": self.method, "steps": list(self.steps), "cells": [torch.from_numpy(c) for c in self.cells]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Filmstrip:
        cells = [np.asarray(torch.as_tensor(c), dtype=np.uint8) for c in state["cells"]]
        return cls(str(state["method"]), [int(s) for s in state["steps"]], cells)


def column_to_drop(steps: Sequence[int], limit: int) -> int | None:
    """The column to drop when there are more than ``limit`` (>= 2): among all but the first and
    the last, the one minimising ``steps[i+1] − steps[i−1]`` (the earliest on ties); else None."""
    if len(steps) <= limit:
        return None
    gaps = [steps[i + 1] - steps[i - 1] for i in range(1, len(steps) - 1)]
    return 1 + gaps.index(min(gaps))


def thumbnail_size(height: int, width: int, size: int = THUMBNAIL) -> tuple[int, int]:
    """(h, w) with ``max(h, w) == size`` and the aspect ratio of ``height × width`` (each >= 1)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumbnails(images: Tensor, maps: Tensor, colormap: str, size: int = THUMBNAIL) -> np.ndarray:
    """(N, C, H, W) images and (N, h, w) maps -> (N, th, tw, 3) uint8 cells, (th, tw) from
    :func:`thumbnail_size`: ``(1 − ALPHA)·image + ALPHA·colour(map)`` as in the pictures. The image
    is converted by :func:`~.render.to_uint8_images` (uint8 pixels as they are) then shrunk; the
    map is resized bilinearly (antialiased when shrinking) and coloured by
    :func:`~.render.colorize` (per-map min-max; NaN grey)."""
    target = thumbnail_size(images.shape[-2], images.shape[-1], size)
    pixels = torch.from_numpy(to_uint8_images(images)).permute(0, 3, 1, 2).double()
    small = resize_maps(pixels, target, antialias=True).permute(0, 2, 3, 1).numpy()
    base = np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8)
    heat = colorize(resize_maps(maps.detach().to("cpu", torch.float64), target, antialias=True), colormap)
    return overlay(base, heat, ALPHA)


def update_filmstrips(
    strips: dict[str, Filmstrip], results: dict[str, SplitEvaluation], probes: dict[str, ProbeBatch],
    plan: EvaluationPlan, class_name: Callable[[int], str], num_images: int, colormap: str, step: int,
) -> dict[str, tuple[np.ndarray, str]]:
    """Add each evaluated split's column to its strip (a new strip when it does not :meth:`~Filmstrip.fits`)
    and draw it: ``{split: (uint8 (H, W, 3) picture, caption)}``; empty with ``num_images=0``."""
    if num_images == 0:
        return {}
    method = plan.methods[0].name
    out = {}
    for split, result in results.items():
        shown = slice(0, min(num_images, len(probes[split])))
        maps = result.maps[method][COMBINED][shown]
        maps = torch.where(constant_maps(maps)[:, None, None], math.nan, maps)  # blank, as in the pictures
        cells = thumbnails(probes[split].images[shown], maps, colormap)
        strip = strips.get(split)
        if strip is None or not strip.fits(method, cells):
            strip = strips[split] = Filmstrip(method)
        strip.add(step, cells)
        labels = [class_name(int(c)) for c in result.targets[shown, LABEL]]
        picture = draw_filmstrip(strip, labels, method_label(method))
        caption = (f"{split} {method}: each probe's combined label-class map (rows) at steps "
                   f"{', '.join(map(str, strip.steps))} (columns)")
        out[split] = (picture, caption)
    return out


# --------------------------------------------------------------------------- drawing


def draw_filmstrip(strip: Filmstrip, labels: Sequence[str], corner: str) -> np.ndarray:
    """The strip as one (H, W, 3) uint8 picture: a header band with ``step {s}`` over each column
    (on two lines, ``step`` and ``{s}``, when wider than the column) and ``corner`` (the method)
    over the labels, then one row per probe, its label on the left (cut with ``…`` past 96 px);
    2-px white gaps between cells. The height never changes as the strip grows; the width grows
    by one column (``max(thumbnail, text)`` + 2 px) per column."""
    font = _font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    probes, height, width = strip.cells[0].shape[:3]
    headers = [_step_lines(s, width, draw, font) for s in strip.steps]
    column = max(width, *(math.ceil(draw.textlength(t, font=font)) + 2 * _PAD for h in headers for t in h))
    names = [_cut(text, _LABEL_WIDTH, draw, font) for text in (corner, *labels)]
    left = max(math.ceil(draw.textlength(n, font=font)) for n in names) + 2 * _PAD
    line = _line_height(draw, font)
    top = _SEP + 2 * line + 2 * _PAD  # the header band: two lines, whatever the steps
    xs = [_SEP + left + j * (column + _SEP) for j in range(len(strip.cells))]
    canvas = np.full((top + probes * (height + _SEP), xs[-1] + column + _SEP, 3), _BACKGROUND, dtype=np.uint8)
    for x, cells in zip(xs, strip.cells):
        x += (column - width) // 2
        for i in range(probes):
            y = top + i * (height + _SEP)
            canvas[y : y + height, x : x + width] = cells[i]
    picture = Image.fromarray(canvas)
    pen = ImageDraw.Draw(picture)
    for x, lines in zip(xs, headers):  # centred in the band, like the corner
        for k, text in enumerate(lines):
            y = _SEP + _PAD + (2 - len(lines)) * line // 2 + k * line
            pen.text((x + (column - draw.textlength(text, font=font)) / 2, y), text, fill=_TEXT_COLOR, font=font)
    pen.text((_SEP + _PAD, _SEP + _PAD + line // 2), names[0], fill=_TEXT_COLOR, font=font)
    for i, name in enumerate(names[1:]):
        pen.text((_SEP + _PAD, top + i * (height + _SEP) + (height - line) // 2), name, fill=_TEXT_COLOR, font=font)
    return np.array(picture)


@functools.cache
def _font() -> Font:
    """Pillow's default font at ~13 px (as the pictures); Pillow < 10.1 or no FreeType: its bitmap font."""
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _line_height(draw: ImageDraw.ImageDraw, font: Font) -> int:
    return int(draw.textbbox((0, 0), "Ågjp|·", font=font)[3]) + 2


def _step_lines(step: int, width: int, draw: ImageDraw.ImageDraw, font: Font) -> list[str]:
    text = f"step {step}"
    return [text] if draw.textlength(text, font=font) + 2 * _PAD <= width else ["step", str(step)]


def _cut(text: str, width: int, draw: ImageDraw.ImageDraw, font: Font) -> str:
    """``text``, or its longest prefix + ``…`` that is at most ``width`` px wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
