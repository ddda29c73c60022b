"""Saliency maps as pictures: colormaps, overlays and a labelled grid, as uint8 RGB arrays.

Everything returns ``numpy.uint8`` arrays of shape (..., H, W, 3), the format W&B
(``wandb.Image``), TensorBoard (``add_image(..., dataformats="HWC")``) and Pillow take as is.
numpy, torch and Pillow only: no matplotlib, no Lightning, no wandb.

- :func:`to_uint8_images`: input images (any normalisation) -> uint8, per-image min-max.
- :func:`colorize`: maps -> colours through a 256-entry table (:data:`COLORMAPS`).
- :func:`overlay`: ``(1 - alpha) * image + alpha * heat``, rounded.
- :func:`saliency_grid`: one row per :class:`GridRow` (image, then one overlay per map), with
  column titles, row labels and an optional title drawn by Pillow's default font.
- :func:`save_png`: write a picture, creating parent folders.

Colormaps:

- ``"turbo"``: Google's Turbo (A. Mikhailov, "Turbo, An Improved Rainbow Colormap for
  Visualization", Google AI Blog, 2019-08-20,
  https://research.google/blog/turbo-an-improved-rainbow-colormap-for-visualization/), the
  published 256-entry sRGB byte table ``turbo_srgb_bytes`` from
  https://gist.github.com/mikhailov-work/6a308c20e494d9e0ccc29036b28faa7a (Apache-2.0,
  Copyright 2019 Google LLC); it equals ``round(255 * turbo_colormap_data)`` of the float table.
- ``"viridis"``: matplotlib's viridis (S. van der Walt and N. Smith, BIDS,
  https://github.com/BIDS/colormap, CC0), its 256 float entries rounded to bytes.
- ``"gray"``: entry ``i`` is ``(i, i, i)``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .metrics import resize_maps

__all__ = [
    "COLORMAPS",
    "NAN_COLOR",
    "GridRow",
    "colorize",
    "colormap_table",
    "overlay",
    "saliency_grid",
    "save_png",
    "to_uint8_images",
]

COLORMAPS = ("turbo", "viridis", "gray")
NAN_COLOR = (128, 128, 128)
"""Colour of NaN pixels in :func:`colorize`."""

_BACKGROUND = 255  # white canvas; the gaps between tiles are the separators
_TEXT_COLOR = (0, 0, 0)
_SEP = 2  # px between tiles and around the grid
_PAD = 3  # px around text
_FONT_SIZE = 13

# fmt: off
_TURBO: tuple[tuple[int, int, int], ...] = (
    (48,18,59), (50,21,67), (51,24,74), (52,27,81), (53,30,88), (54,33,95), (55,36,102), (56,39,109),
    (57,42,115), (58,45,121), (59,47,128), (60,50,134), (61,53,139), (62,56,145), (63,59,151), (63,62,156),
    (64,64,162), (65,67,167), (65,70,172), (66,73,177), (66,75,181), (67,78,186), (68,81,191), (68,84,195),
    (68,86,199), (69,89,203), (69,92,207), (69,94,211), (70,97,214), (70,100,218), (70,102,221), (70,105,224),
    (70,107,227), (71,110,230), (71,113,233), (71,115,235), (71,118,238), (71,120,240), (71,123,242), (70,125,244),
    (70,128,246), (70,130,248), (70,133,250), (70,135,251), (69,138,252), (69,140,253), (68,143,254), (67,145,254),
    (66,148,255), (65,150,255), (64,153,255), (62,155,254), (61,158,254), (59,160,253), (58,163,252), (56,165,251),
    (55,168,250), (53,171,248), (51,173,247), (49,175,245), (47,178,244), (46,180,242), (44,183,240), (42,185,238),
    (40,188,235), (39,190,233), (37,192,231), (35,195,228), (34,197,226), (32,199,223), (31,201,221), (30,203,218),
    (28,205,216), (27,208,213), (26,210,210), (26,212,208), (25,213,205), (24,215,202), (24,217,200), (24,219,197),
    (24,221,194), (24,222,192), (24,224,189), (25,226,187), (25,227,185), (26,228,182), (28,230,180), (29,231,178),
    (31,233,175), (32,234,172), (34,235,170), (37,236,167), (39,238,164), (42,239,161), (44,240,158), (47,241,155),
    (50,242,152), (53,243,148), (56,244,145), (60,245,142), (63,246,138), (67,247,135), (70,248,132), (74,248,128),
    (78,249,125), (82,250,122), (85,250,118), (89,251,115), (93,252,111), (97,252,108), (101,253,105), (105,253,102),
    (109,254,98), (113,254,95), (117,254,92), (121,254,89), (125,255,86), (128,255,83), (132,255,81), (136,255,78),
    (139,255,75), (143,255,73), (146,255,71), (150,254,68), (153,254,66), (156,254,64), (159,253,63), (161,253,61),
    (164,252,60), (167,252,58), (169,251,57), (172,251,56), (175,250,55), (177,249,54), (180,248,54), (183,247,53),
    (185,246,53), (188,245,52), (190,244,52), (193,243,52), (195,241,52), (198,240,52), (200,239,52), (203,237,52),
    (205,236,52), (208,234,52), (210,233,53), (212,231,53), (215,229,53), (217,228,54), (219,226,54), (221,224,55),
    (223,223,55), (225,221,55), (227,219,56), (229,217,56), (231,215,57), (233,213,57), (235,211,57), (236,209,58),
    (238,207,58), (239,205,58), (241,203,58), (242,201,58), (244,199,58), (245,197,58), (246,195,58), (247,193,58),
    (248,190,57), (249,188,57), (250,186,57), (251,184,56), (251,182,55), (252,179,54), (252,177,54), (253,174,53),
    (253,172,52), (254,169,51), (254,167,50), (254,164,49), (254,161,48), (254,158,47), (254,155,45), (254,153,44),
    (254,150,43), (254,147,42), (254,144,41), (253,141,39), (253,138,38), (252,135,37), (252,132,35), (251,129,34),
    (251,126,33), (250,123,31), (249,120,30), (249,117,29), (248,114,28), (247,111,26), (246,108,25), (245,105,24),
    (244,102,23), (243,99,21), (242,96,20), (241,93,19), (240,91,18), (239,88,17), (237,85,16), (236,83,15),
    (235,80,14), (234,78,13), (232,75,12), (231,73,12), (229,71,11), (228,69,10), (226,67,10), (225,65,9),
    (223,63,8), (221,61,8), (220,59,7), (218,57,7), (216,55,6), (214,53,6), (212,51,5), (210,49,5),
    (208,47,5), (206,45,4), (204,43,4), (202,42,4), (200,40,3), (197,38,3), (195,37,3), (193,35,2),
    (190,33,2), (188,32,2), (185,30,2), (183,29,2), (180,27,1), (178,26,1), (175,24,1), (172,23,1),
    (169,22,1), (167,20,1), (164,19,1), (161,18,1), (158,16,1), (155,15,1), (152,14,1), (149,13,1),
    (146,11,1), (142,10,1), (139,9,2), (136,8,2), (133,7,2), (129,6,2), (126,5,2), (122,4,3),
)
_VIRIDIS: tuple[tuple[int, int, int], ...] = (
    (68,1,84), (68,2,86), (69,4,87), (69,5,89), (70,7,90), (70,8,92), (70,10,93), (70,11,94),
    (71,13,96), (71,14,97), (71,16,99), (71,17,100), (71,19,101), (72,20,103), (72,22,104), (72,23,105),
    (72,24,106), (72,26,108), (72,27,109), (72,28,110), (72,29,111), (72,31,112), (72,32,113), (72,33,115),
    (72,35,116), (72,36,117), (72,37,118), (72,38,119), (72,40,120), (72,41,121), (71,42,122), (71,44,122),
    (71,45,123), (71,46,124), (71,47,125), (70,48,126), (70,50,126), (70,51,127), (70,52,128), (69,53,129),
    (69,55,129), (69,56,130), (68,57,131), (68,58,131), (68,59,132), (67,61,132), (67,62,133), (66,63,133),
    (66,64,134), (66,65,134), (65,66,135), (65,68,135), (64,69,136), (64,70,136), (63,71,136), (63,72,137),
    (62,73,137), (62,74,137), (62,76,138), (61,77,138), (61,78,138), (60,79,138), (60,80,139), (59,81,139),
    (59,82,139), (58,83,139), (58,84,140), (57,85,140), (57,86,140), (56,88,140), (56,89,140), (55,90,140),
    (55,91,141), (54,92,141), (54,93,141), (53,94,141), (53,95,141), (52,96,141), (52,97,141), (51,98,141),
    (51,99,141), (50,100,142), (50,101,142), (49,102,142), (49,103,142), (49,104,142), (48,105,142), (48,106,142),
    (47,107,142), (47,108,142), (46,109,142), (46,110,142), (46,111,142), (45,112,142), (45,113,142), (44,113,142),
    (44,114,142), (44,115,142), (43,116,142), (43,117,142), (42,118,142), (42,119,142), (42,120,142), (41,121,142),
    (41,122,142), (41,123,142), (40,124,142), (40,125,142), (39,126,142), (39,127,142), (39,128,142), (38,129,142),
    (38,130,142), (38,130,142), (37,131,142), (37,132,142), (37,133,142), (36,134,142), (36,135,142), (35,136,142),
    (35,137,142), (35,138,141), (34,139,141), (34,140,141), (34,141,141), (33,142,141), (33,143,141), (33,144,141),
    (33,145,140), (32,146,140), (32,146,140), (32,147,140), (31,148,140), (31,149,139), (31,150,139), (31,151,139),
    (31,152,139), (31,153,138), (31,154,138), (30,155,138), (30,156,137), (30,157,137), (31,158,137), (31,159,136),
    (31,160,136), (31,161,136), (31,161,135), (31,162,135), (32,163,134), (32,164,134), (33,165,133), (33,166,133),
    (34,167,133), (34,168,132), (35,169,131), (36,170,131), (37,171,130), (37,172,130), (38,173,129), (39,173,129),
    (40,174,128), (41,175,127), (42,176,127), (44,177,126), (45,178,125), (46,179,124), (47,180,124), (49,181,123),
    (50,182,122), (52,182,121), (53,183,121), (55,184,120), (56,185,119), (58,186,118), (59,187,117), (61,188,116),
    (63,188,115), (64,189,114), (66,190,113), (68,191,112), (70,192,111), (72,193,110), (74,193,109), (76,194,108),
    (78,195,107), (80,196,106), (82,197,105), (84,197,104), (86,198,103), (88,199,101), (90,200,100), (92,200,99),
    (94,201,98), (96,202,96), (99,203,95), (101,203,94), (103,204,92), (105,205,91), (108,205,90), (110,206,88),
    (112,207,87), (115,208,86), (117,208,84), (119,209,83), (122,209,81), (124,210,80), (127,211,78), (129,211,77),
    (132,212,75), (134,213,73), (137,213,72), (139,214,70), (142,214,69), (144,215,67), (147,215,65), (149,216,64),
    (152,216,62), (155,217,60), (157,217,59), (160,218,57), (162,218,55), (165,219,54), (168,219,52), (170,220,50),
    (173,220,48), (176,221,47), (178,221,45), (181,222,43), (184,222,41), (186,222,40), (189,223,38), (192,223,37),
    (194,223,35), (197,224,33), (200,224,32), (202,225,31), (205,225,29), (208,225,28), (210,226,27), (213,226,26),
    (216,226,25), (218,227,25), (221,227,24), (223,227,24), (226,228,24), (229,228,25), (231,228,25), (234,229,26),
    (236,229,27), (239,229,28), (241,229,29), (244,230,30), (246,230,32), (248,230,33), (251,231,35), (253,231,37),
)
# fmt: on


# --------------------------------------------------------------------------- colour tables


def colormap_table(colormap: str) -> np.ndarray:
    """The (256, 3) uint8 table of a colormap in :data:`COLORMAPS` (entry ``i`` is value ``i / 255``)."""
    _check_colormap(colormap)
    return _table(colormap).copy()


@functools.cache
def _table(colormap: str) -> np.ndarray:
    if colormap == "gray":
        table = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    else:
        table = np.array(_TURBO if colormap == "turbo" else _VIRIDIS, dtype=np.uint8)
    table.setflags(write=False)
    return table


def _check_colormap(colormap: object) -> None:
    if not isinstance(colormap, str) or colormap not in COLORMAPS:
        raise ValueError(f"Expected `colormap` in {list(COLORMAPS)}, but got {colormap!r}.")


# --------------------------------------------------------------------------- images and maps


def to_uint8_images(images: Tensor) -> np.ndarray:
    """(N, C, H, W) float images in any normalisation -> (N, H, W, 3) uint8.

    The user's normalisation (ImageNet mean/std, [0, 1], [-1, 1], ...) cannot be known here, so
    each image is min-max stretched on its own, jointly over its shown channels (colour balance
    is kept, absolute brightness and contrast are not); a constant image becomes mid gray (128).
    C == 1 is shown as gray, C == 3 as RGB, C > 3 shows (and normalises) the first 3 channels
    only (e.g. RGB + depth); C == 2 is an error. NaN or inf is an error.
    """
    return _images_to_uint8(images, "images")


def colorize(maps: Tensor, colormap: str = "turbo") -> np.ndarray:
    """(N, h, w) float maps -> (N, h, w, 3) uint8 colours of ``colormap``.

    Each map is min-max normalised on its own over its non-NaN pixels, then value ``t`` in [0, 1]
    gets table entry ``round(255 * t)`` (:func:`colormap_table`): the map's minimum gets entry 0
    and its maximum entry 255. A constant map gets entry 0 everywhere; NaN pixels get
    :data:`NAN_COLOR`; ±inf is an error.
    """
    _check_colormap(colormap)
    return _colorize(maps, colormap, "maps")


def overlay(images: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend uint8 RGB ``images`` and ``heat`` (same shape, (N, H, W, 3) or (H, W, 3)).

    Returns ``floor((1 - alpha) * images + alpha * heat + 0.5)`` (round half up) as uint8. Shapes
    must match exactly: resize before blending.
    """
    _check_alpha(alpha)
    for name, value in (("images", images), ("heat", heat)):
        if not (isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (3, 4)
                and value.shape[-1] == 3):
            raise TypeError(
                f"Expected `{name}` to be a uint8 numpy array of shape (N, H, W, 3) or (H, W, 3), but got "
                f"{_describe(value)}."
            )
    if images.shape != heat.shape:
        raise ValueError(
            f"Expected `heat` to have the shape of `images` {images.shape}, but got {heat.shape}."
        )
    blend = (1.0 - alpha) * images.astype(np.float64) + alpha * heat.astype(np.float64)
    return _round_uint8(blend)


def _images_to_uint8(images: object, name: str) -> np.ndarray:
    if not (isinstance(images, Tensor) and images.is_floating_point()):
        raise TypeError(f"Expected `{name}` to be a floating-point tensor (N, C, H, W), but got {_describe(images)}.")
    if images.ndim != 4 or images.shape[1] == 2 or 0 in images.shape:
        raise ValueError(
            f"Expected `{name}` of shape (N, C, H, W) with C = 1 or C >= 3 and no empty dimension, but got "
            f"shape {tuple(images.shape)}."
        )
    x = images.detach().to("cpu", torch.float64)[:, :3]
    _check_finite(x, name, allow_nan=False)
    lo = x.amin(dim=(1,2,3), keepdim=True)
    span = x.amax(dim=(1,2,3), keepdim=True) - lo
    scaled = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), 0.5)
    rgb = scaled.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    return _round_uint8(255.0 * rgb.numpy())


def _colorize(maps: object, colormap: str, name: str) -> np.ndarray:
    if not (isinstance(maps, Tensor) and maps.is_floating_point()):
        raise TypeError(f"Expected `{name}` to be a floating-point tensor (N, h, w), but got {_describe(maps)}.")
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(
            f"Expected `{name}` of shape (N, h, w) with no empty dimension, but got shape {tuple(maps.shape)}."
        )
    x = maps.detach().to("cpu", torch.float64)
    _check_finite(x, name, allow_nan=True)
    valid = ~torch.isnan(x)
    lo = torch.where(valid, x, math.inf).amin(dim=(1, 2), keepdim=True)
    hi = torch.where(valid, x, -math.inf).amax(dim=(1, 2), keepdim=True)
    spread = valid & (hi > lo)  # pixels of maps with a range; all-NaN maps have lo = inf > hi
    scaled = torch.where(spread, (x - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
    index = torch.floor(255.0 * scaled + 0.5).clamp(0, 255).long().numpy()
    colours = _table(colormap)[index]
    colours[~valid.numpy()] = NAN_COLOR
    return colours


def _check_finite(x: Tensor, name: str, *, allow_nan: bool) -> None:
    bad = torch.isinf(x) if allow_nan else ~torch.isfinite(x)
    if bad.any():
        expected = "finite values or NaN" if allow_nan else "finite values"
        kind = "infinite" if allow_nan else "non-finite (NaN or inf)"
        raise ValueError(f"Expected `{name}` to hold {expected}, but got {int(bad.sum())} {kind} values.")


def _check_alpha(alpha: object) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Expected `alpha` to be a number in [0, 1], but got {alpha!r}.")


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """Round half up and clip to [0, 255]."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    return type(x).__name__


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class GridRow:
    """One row of :func:`saliency_grid`: an image, its maps (one per column) and a label.

    ``image``: (C, H, W) float, any normalisation (see :func:`to_uint8_images`);
    ``maps``: a sequence of (h, w) float tensors, any resolution; ``label``: e.g.
    ``"dog · p=0.93 · plain"``. Shapes and types are checked here; values (finite) when drawn.
    """

    image: Tensor
    maps: Sequence[Tensor]
    label: str

    def __post_init__(self) -> None:
        if not (isinstance(self.image, Tensor) and self.image.is_floating_point() and self.image.ndim == 3):
            raise TypeError(
                f"Expected `image` to be a (C, H, W) floating-point tensor, but got {_describe(self.image)}."
            )
        if isinstance(self.maps, (str, Tensor)) or not isinstance(self.maps, Sequence):
            raise TypeError(f"Expected `maps` to be a sequence of (h, w) tensors, but got {_describe(self.maps)}.")
        if self.image.shape[0] == 2 or 0 in self.image.shape:
            raise ValueError(
                "Expected `image` of shape (C, H, W) with C = 1 or C >= 3 and no empty dimension, but got "
                f"shape {tuple(self.image.shape)}."
            )
        for j, m in enumerate(self.maps):
            if not (isinstance(m, Tensor) and m.is_floating_point() and m.ndim == 2):
                raise TypeError(f"Expected `maps[{j}]` to be an (h, w) floating-point tensor, but got {_describe(m)}.")
            if 0 in m.shape:
                raise ValueError(f"Expected `maps[{j}]` to have no empty dimension, but got shape {tuple(m.shape)}.")
        if not isinstance(self.label, str):
            raise TypeError(f"Expected `label` to be a str, but got {self.label!r}.")


def saliency_grid(
    rows: Sequence[GridRow],
    columns: Sequence[str],
    *,
    tile: int = 128,
    colormap: str = "turbo",
    alpha: float = 0.5,
    title: str | None = None,
) -> np.ndarray:
    """Draw a labelled grid of saliency overlays -> one (H, W, 3) uint8 picture.

    One row per :class:`GridRow`: first the image, resized to the tile and converted by
    :func:`to_uint8_images`, then one tile per map: the map resized bilinearly to the tile
    (``align_corners=False``; ``antialias=True`` only when shrinking; a NaN pixel spreads to its
    interpolation neighbours), colourised by :func:`colorize` and blended on the tile's image by
    :func:`overlay` at ``alpha``. Tiles are ``tile`` px high and keep the image's aspect ratio
    (width ``max(1, round(tile * W / H))``); a column is as wide as its widest tile, narrower
    tiles are centred. Above the tiles, a header band holds the column titles (``"image"``,
    then ``columns``, one per map); above each row, a band holds its label; an optional title
    band comes first. Text is Pillow's default font (~13 px where Pillow can size it), wrapped
    to fit (nothing is cut off); tiles are separated and framed by 2-px white gaps, so the
    width is ``2 + (len(columns) + 1) * (column width + 2)``.
    """
    _check_grid_args(rows, columns, tile, colormap, alpha, title)
    tiles = [_row_tiles(row, i, tile, colormap, alpha) for i, row in enumerate(rows)]
    cell = max(row_tiles[0].shape[1] for row_tiles in tiles)
    col_x = [_SEP + c * (cell + _SEP) for c in range(len(columns) + 1)]
    width = col_x[-1] + cell + _SEP
    font = _font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = width - 2 * (_SEP + _PAD)
    title_lines = [] if title is None else _wrap(title, draw, font, text_width)
    header_lines = [_wrap(name, draw, font, cell - 2 * _PAD) for name in ("image", *columns)]
    label_lines = [_wrap(row.label, draw, font, text_width) for row in rows]
    line = _line_height(draw, font)

    def band(lines: int) -> int:
        return lines * line + 2 * _PAD if lines else 0

    header = band(max(map(len, header_lines)))
    height = _SEP + band(len(title_lines)) + header + sum(band(len(lab)) + tile + _SEP for lab in label_lines)
    canvas = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    texts: list[_Text] = []
    y = _SEP
    if title_lines:
        texts.append(_Text(width // 2, y + _PAD, title_lines, centre=True))
    y += band(len(title_lines))
    texts += [_Text(x + cell // 2, y + _PAD, lines, centre=True) for x, lines in zip(col_x, header_lines)]
    y += header
    for row_tiles, lines in zip(tiles, label_lines):
        texts.append(_Text(_SEP + _PAD, y + _PAD, lines, centre=False))
        y += band(len(lines))
        for x, picture in zip(col_x, row_tiles):
            left = x + (cell - picture.shape[1]) // 2
            canvas[y : y + tile, left : left + picture.shape[1]] = picture
        y += tile + _SEP
    return _draw_texts(canvas, texts, font, line)


@dataclass(frozen=True)
class _Text:
    """Lines of text drawn from ``y`` down, starting at ``x`` (left) or centred on it."""

    x: int
    y: int
    lines: list[str]
    centre: bool


def _check_grid_args(
    rows: object, columns: object, tile: object, colormap: object, alpha: object, title: object
) -> None:
    if isinstance(rows, str) or not isinstance(rows, Sequence):
        raise TypeError(f"Expected `rows` to be a non-empty sequence of GridRow, but got {type(rows).__name__}.")
    if len(rows) == 0:
        raise ValueError(f"Expected `rows` to be a non-empty sequence of GridRow, but got {rows!r}.")
    for i, row in enumerate(rows):
        if not isinstance(row, GridRow):
            raise TypeError(f"Expected `rows[{i}]` to be a GridRow, but got {type(row).__name__}.")
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not all(isinstance(c, str) for c in columns):
        raise TypeError(f"Expected `columns` to be a sequence of str (one title per map), but got {columns!r}.")
    for i, row in enumerate(rows):
        if len(row.maps) != len(columns):
            raise ValueError(
                f"Expected `rows[{i}].maps` to hold one map per column ({len(columns)}: {list(columns)}), "
                f"but got {len(row.maps)} maps."
            )
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"Expected `tile` to be a positive int, but got {tile!r}.")
    _check_colormap(colormap)
    _check_alpha(alpha)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"Expected `title` to be a str or None, but got {title!r}.")


def _row_tiles(row: GridRow, i: int, tile: int, colormap: str, alpha: float) -> list[np.ndarray]:
    """[image, overlay of map 0, overlay of map 1, ...], each (tile, tile_width, 3) uint8."""
    _check_finite(row.image.detach(), f"rows[{i}].image", allow_nan=False)
    for j, m in enumerate(row.maps):  # before resizing: interpolation turns inf into NaN
        _check_finite(m.detach(), f"rows[{i}].maps[{j}]", allow_nan=True)
    height, width = row.image.shape[1:]
    size = (tile, max(1, round(tile * width / height)))
    image = _images_to_uint8(_resize(row.image[None], size), f"rows[{i}].image")
    heats = [
        _colorize(_resize(m[None, None], size)[:, 0], colormap, f"rows[{i}].maps[{j}]") for j, m in enumerate(row.maps)
    ]
    return [image[0], *(overlay(image, heat, alpha)[0] for heat in heats)]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (N, C, h, w) -> (N, C, *size) in float64; antialiased only when shrinking."""
    return resize_maps(x.detach().to("cpu", torch.float64), size, antialias=True)


# --------------------------------------------------------------------------- text


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ~13 px; Pillow < 10.1 (no ``size=``) or no FreeType: its bitmap font."""
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _line_height(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    return int(draw.textbbox((0, 0), "Ågjp|·", font=font)[3]) + 2


def _wrap(
    text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[str]:
    """Greedy wrap to ``width`` px, breaking after spaces, ``_``, ``/``, ``.`` or ``-``; a piece
    wider than that on its own is broken between characters."""

    def fits(s: str) -> bool:
        return draw.textlength(s.rstrip(), font=font) <= width

    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for piece in re.split(r"(?<=[ _/.\-])", paragraph):
            if fits(current + piece):
                current += piece
                continue
            if current.strip():
                lines.append(current.rstrip())
            current = ""
            for char in piece:
                if current and not fits(current + char):
                    lines.append(current.rstrip())
                    current = ""
                current += char
        lines.append(current.rstrip())
    return lines


def _draw_texts(
    canvas: np.ndarray, texts: list[_Text], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, line: int
) -> np.ndarray:
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for text in texts:
        for k, content in enumerate(text.lines):
            left = text.x - draw.textlength(content, font=font) / 2 if text.centre else text.x
            draw.text((left, text.y + k * line), content, fill=_TEXT_COLOR, font=font)
    return np.array(picture)


# --------------------------------------------------------------------------- files


def save_png(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an (H, W, 3) uint8 picture as PNG at ``path`` (suffix ``.png``), creating parent folders."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3):
        raise TypeError(f"Expected `image` to be a uint8 numpy array of shape (H, W, 3), but got {_describe(image)}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected `path` to be a str or os.PathLike, but got {path!r}.")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"Expected `path` to end in '.png', but got {str(path)!r}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(target, format="PNG")
