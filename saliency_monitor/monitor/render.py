"""Saliency maps as pictures: colormaps, overlays and a labelled grid, as uint8 RGB arrays.

Everything returns ``numpy.uint8`` arrays of shape (..., H, W, 3), the format W&B
(``wandb.Image``), TensorBoard (``add_image(..., dataformats="HWC")``) and Pillow take as is.
numpy, torch and Pillow only: no matplotlib, no Lightning, no wandb.

- :func:`to_uint8_images`: input images (any normalisation) -> uint8, per-image min-max
  (uint8 images are pixels already: shown as they are).
- :func:`colorize`: maps -> colours through a 256-entry table (:data:`COLORMAPS`).
- :func:`overlay`: ``(1 - alpha) * image + alpha * heat``, rounded.
- :func:`saliency_grid`: one row per :class:`GridRow` (image, then one overlay per map), with
  column titles, row labels and an optional title drawn by Pillow's default font.
- :func:`save_png`: write a picture, creating parent folders.

Colour tables: :mod:`saliency_monitor.monitor.colormaps`.
"""

from __future__ import annotations

import functools
import io
import math
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from torch import Tensor

from .._checks import describe
from ..metrics import resize_maps
from .colormaps import COLORMAPS, check_colormap, colormap_table, table

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

NAN_COLOR = (128, 128, 128)
"""Colour of NaN pixels in :func:`colorize`."""

_BACKGROUND = 255  # white canvas; the gaps between tiles are the separators
_TEXT_COLOR = (0, 0, 0)
_SEP = 2  # px between tiles and around the grid
_PAD = 3  # px around text
_FONT_SIZE = 13


# --------------------------------------------------------------------------- images and maps


def to_uint8_images(images: Tensor) -> np.ndarray:
    """(N, C, H, W) images in any normalisation -> (N, H, W, 3) uint8.

    uint8 images are pixel values: shown as they are. Otherwise (float, other integers) the
    user's normalisation (ImageNet mean/std, [0, 1], [-1, 1], ...) cannot be known here, so each
    image is min-max stretched on its own, jointly over its shown channels (colour balance is
    kept, absolute brightness and contrast are not); a constant image becomes mid gray (128).
    C == 1 is shown as gray, C == 3 as RGB, C > 3 shows (and normalises) the first 3 channels
    only (e.g. RGB + depth); C == 2 is an error. NaN or inf is an error.
    """
    return _images_to_uint8(images, "images", pixels=isinstance(images, Tensor) and images.dtype == torch.uint8)


def colorize(maps: Tensor, colormap: str = "turbo") -> np.ndarray:
    """(N, h, w) float maps -> (N, h, w, 3) uint8 colours of ``colormap``.

    Each map is min-max normalised on its own over its non-NaN pixels, then value ``t`` in [0, 1]
    gets table entry ``round(255 * t)`` (:func:`colormap_table`): the map's minimum gets entry 0
    and its maximum entry 255. A constant map gets entry 0 everywhere; NaN pixels get
    :data:`NAN_COLOR`; ±inf is an error.
    """
    check_colormap(colormap)
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
                f"{describe(value)}."
            )
    if images.shape != heat.shape:
        raise ValueError(
            f"Expected `heat` to have the shape of `images` {images.shape}, but got {heat.shape}."
        )
    blend = (1.0 - alpha) * images.astype(np.float64) + alpha * heat.astype(np.float64)
    return _round_uint8(blend)


def _images_to_uint8(images: object, name: str, pixels: bool = False) -> np.ndarray:
    """``pixels``: uint8 pixel values (possibly interpolated): rounded, not stretched."""
    if not (isinstance(images, Tensor) and _real(images)):
        raise TypeError(f"Expected `{name}` to be a float or integer tensor (N, C, H, W), but got {describe(images)}.")
    if images.ndim != 4 or images.shape[1] == 2 or 0 in images.shape:
        raise ValueError(
            f"Expected `{name}` of shape (N, C, H, W) with C = 1 or C >= 3 and no empty dimension, but got "
            f"shape {tuple(images.shape)}."
        )
    x = images.detach().to("cpu", torch.float64)[:, :3]
    _check_finite(x, name, allow_nan=False)
    if pixels:
        return _round_uint8(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())
    lo = x.amin(dim=(1,2,3), keepdim=True)
    span = x.amax(dim=(1,2,3), keepdim=True) - lo
    scaled = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), 0.5)
    rgb = scaled.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    return _round_uint8(255.0 * rgb.numpy())


def _real(x: Tensor) -> bool:
    return not x.is_complex() and x.dtype != torch.bool


def _colorize(maps: object, colormap: str, name: str) -> np.ndarray:
    if not (isinstance(maps, Tensor) and maps.is_floating_point()):
        raise TypeError(f"Expected `{name}` to be a floating-point tensor (N, h, w), but got {describe(maps)}.")
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
    colours = table(colormap)[index]
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


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class GridRow:
    """One row of :func:`saliency_grid`: an image, its maps (one per column) and a label.

    ``image``: (C, H, W) float or integer, any normalisation (see :func:`to_uint8_images`);
    ``maps``: a sequence of (h, w) float tensors, any resolution; ``label``: e.g.
    ``"dog · p=0.93 · plain"``. Shapes and types are checked here; values (finite) when drawn.
    """

    image: Tensor
    maps: Sequence[Tensor]
    label: str

    def __post_init__(self) -> None:
        if not (isinstance(self.image, Tensor) and _real(self.image) and self.image.ndim == 3):
            raise TypeError(
                f"Expected `image` to be a (C, H, W) floating-point or integer tensor, but got {describe(self.image)}."
            )
        if isinstance(self.maps, (str, Tensor)) or not isinstance(self.maps, Sequence):
            raise TypeError(f"Expected `maps` to be a sequence of (h, w) tensors, but got {describe(self.maps)}.")
        if self.image.shape[0] == 2 or 0 in self.image.shape:
            raise ValueError(
                "Expected `image` of shape (C, H, W) with C = 1 or C >= 3 and no empty dimension, but got "
                f"shape {tuple(self.image.shape)}."
            )
        for j, m in enumerate(self.maps):
            if not (isinstance(m, Tensor) and m.is_floating_point() and m.ndim == 2):
                raise TypeError(f"Expected `maps[{j}]` to be an (h, w) floating-point tensor, but got {describe(m)}.")
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
    check_colormap(colormap)
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
    image = _images_to_uint8(_resize(row.image[None], size), f"rows[{i}].image", row.image.dtype == torch.uint8)
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


def save_png(image: np.ndarray, path: str | os.PathLike[str], caption: str = "") -> None:
    """Write an (H, W, 3) uint8 picture as PNG at ``path`` (suffix ``.png``; a local path or an
    fsspec URL, parent folders created), ``caption`` in its "Description" text chunk."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3):
        raise TypeError(f"Expected `image` to be a uint8 numpy array of shape (H, W, 3), but got {describe(image)}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected `path` to be a str or os.PathLike, but got {path!r}.")
    if not os.fspath(path).lower().endswith(".png"):
        raise ValueError(f"Expected `path` to end in '.png', but got {str(path)!r}.")
    from fsspec.core import url_to_fs

    info = PngImagePlugin.PngInfo()
    info.add_text("Description", caption)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", pnginfo=info)
    fs, local = url_to_fs(os.fspath(path))
    fs.makedirs(posixpath.dirname(local), exist_ok=True)
    with fs.open(local, "wb") as file:
        file.write(buffer.getvalue())
