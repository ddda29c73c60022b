"""Colormaps, overlays and the saliency grid: exact arithmetic, published colour values, and the
grid's tiles found pixel for pixel where they belong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saliency_monitor.monitor.render import (
    COLORMAPS,
    NAN_COLOR,
    GridRow,
    colorize,
    colormap_table,
    overlay,
    saliency_grid,
    save_png,
    to_uint8_images,
)

WHITE = (255, 255, 255)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(n: int = 256) -> torch.Tensor:
    """One (1, 1, n) map with values j / (n - 1): entry j of the table for n = 256."""
    return torch.linspace(0, 1, n, dtype=torch.float64).reshape(1, 1, n)


# --------------------------------------------------------------------------- colormaps

# Published values: Turbo's ``turbo_srgb_bytes`` (Google, 2019) entries 0, 128, 255; viridis'
# float table (matplotlib / BIDS) entries 0, 128, 255 times 255, rounded.
PUBLISHED = {
    "turbo": [(48, 18, 59), (164, 252, 60), (122, 4, 3)],
    "viridis": [(68, 1, 84), (33, 145, 140), (253, 231, 37)],
    "gray": [(0, 0, 0), (128, 128, 128), (255, 255, 255)],
}


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_colorize_published_values_at_0_half_1(colormap: str) -> None:
    maps = torch.tensor([[[0.0, 0.5, 1.0]]])  # 0.5 -> entry round(127.5) = 128
    assert colorize(maps, colormap)[0, 0].tolist() == [list(c) for c in PUBLISHED[colormap]]


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_colorize_endpoints_of_a_random_map(colormap: str) -> None:
    maps = torch.randn(3, 5, 7, generator=gen(0)) * torch.tensor([1.0, 100.0, 1e-3]).reshape(3, 1, 1)
    out = colorize(maps, colormap)
    assert out.shape == (3, 5, 7, 3) and out.dtype == np.uint8
    for i in range(3):
        flat = maps[i].flatten()
        assert out[i].reshape(-1, 3)[flat.argmin()].tolist() == list(PUBLISHED[colormap][0])
        assert out[i].reshape(-1, 3)[flat.argmax()].tolist() == list(PUBLISHED[colormap][2])


def test_turbo_close_to_the_published_anchor_values() -> None:
    turbo = colorize(ramp(), "turbo")[0, 0].astype(int)
    # brief's reference points, +-2: Turbo(0), Turbo(0.5), Turbo(1)
    for value, reference in [(0, (48, 18, 59)), (128, (164, 252, 60)), (255, (122, 4, 3))]:
        assert np.abs(turbo[value] - reference).max() <= 2


@pytest.mark.parametrize("colormap", ["turbo", "viridis"])
def test_tables_equal_matplotlib(colormap: str) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    x = np.linspace(0, 1, 256)
    reference = np.floor(matplotlib.colormaps[colormap](x)[:, :3] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(colorize(ramp(), colormap)[0, 0], reference)
    np.testing.assert_array_equal(colormap_table(colormap), reference)


def cie_lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB bytes (D65): linearise, relative luminance Y, L*."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, 24389 / 27 * y)


@pytest.mark.parametrize(("colormap", "rise"), [("viridis", 70.0), ("gray", 99.0)])
def test_lightness_is_monotone(colormap: str, rise: float) -> None:
    lightness = cie_lightness(colorize(ramp(), colormap)[0, 0])
    steps = np.diff(lightness)
    assert steps.min() > -0.05  # byte rounding of viridis' floats: at most a hair down, never a visible dip
    assert np.all(lightness[8:] - lightness[:-8] > 0)  # strictly brighter over every 8 entries
    assert lightness[-1] - lightness[0] > rise


def test_colorize_rounds_to_the_nearest_entry() -> None:
    maps = torch.tensor([[[0.0, 1.0, 3.0, 0.5 / 255 * 3 - 1e-9, 0.5 / 255 * 3 + 1e-9]]], dtype=torch.float64)
    # t = 0, 1/3, 1, just under and just over half an entry
    assert colorize(maps, "gray")[0, 0, :, 0].tolist() == [0, 85, 255, 0, 1]


def test_colorize_normalises_each_map_on_its_own() -> None:
    maps = torch.rand(1, 6, 9, generator=gen(1))
    scaled = torch.cat([maps, 1000 * maps - 3, 1e-6 * maps - 2e-6])
    out = colorize(scaled, "viridis")
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


def test_colorize_nan_pixels_are_gray_and_ignored_by_the_range() -> None:
    nan = float("nan")
    maps = torch.tensor([[[nan, 0.0], [1.0, 4.0]], [[nan, nan], [nan, nan]], [[nan, 2.0], [2.0, 2.0]]])
    out = colorize(maps, "gray")
    assert out[0].reshape(4, 3).tolist() == [list(NAN_COLOR), [0] * 3, [64] * 3, [255] * 3]
    assert (out[1] == NAN_COLOR).all()  # all-NaN map: all gray
    assert out[2].reshape(4, 3).tolist() == [list(NAN_COLOR)] + [[0] * 3] * 3  # constant rest: entry 0


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_colorize_constant_map_is_entry_0(colormap: str) -> None:
    out = colorize(torch.full((2, 3, 4), 7.5), colormap)
    assert (out == np.array(PUBLISHED[colormap][0], dtype=np.uint8)).all()


def test_colorize_accepts_any_float_tensor_and_leaves_it_alone() -> None:
    maps = torch.rand(2, 4, 4, generator=gen(2)).requires_grad_()
    before = maps.detach().clone()
    reference = colorize(maps.detach().double())
    np.testing.assert_array_equal(colorize(maps), reference)
    assert torch.equal(maps.detach(), before) and maps.grad is None
    assert colorize(maps.detach().to(torch.bfloat16)).shape == (2, 4, 4, 3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: colorize(torch.zeros(1, 2, 2), "jet"), ValueError,
         "Expected `colormap` in ['turbo', 'viridis', 'gray'], but got 'jet'."),
        (lambda: colorize(torch.zeros(2, 2)), ValueError,
         "Expected `maps` of shape (N, h, w) with no empty dimension, but got shape (2, 2)."),
        (lambda: colorize(torch.zeros(1, 0, 2)), ValueError,
         "Expected `maps` of shape (N, h, w) with no empty dimension, but got shape (1, 0, 2)."),
        (lambda: colorize(torch.zeros(1, 2, 2, dtype=torch.long)), TypeError,
         "Expected `maps` to be a floating-point tensor (N, h, w), but got a torch.int64 tensor of shape (1, 2, 2)."),
        (lambda: colorize(np.zeros((1, 2, 2))), TypeError,
         "Expected `maps` to be a floating-point tensor (N, h, w), but got a float64 array of shape (1, 2, 2)."),
        (lambda: colorize(torch.tensor([[[1.0, float("inf")], [-float("inf"), float("nan")]]])), ValueError,
         "Expected `maps` to hold finite values or NaN, but got 2 infinite values."),
        (lambda: colormap_table("hot"), ValueError,
         "Expected `colormap` in ['turbo', 'viridis', 'gray'], but got 'hot'."),
    ],
)
def test_colorize_errors(call: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


# --------------------------------------------------------------------------- images


def test_to_uint8_images_hand_example() -> None:
    # one image, 3 channels, 1x2 pixels; min -2, max 2: v -> round_half_up((v + 2) / 4 * 255)
    images = torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.5]], [[2.0, -2.0]]]])
    out = to_uint8_images(images)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 2, 3)
    assert out[0, 0].tolist() == [[64, 128, 255], [191, 159, 0]]  # 63.75, 127.5, 191.25, 159.375


def test_to_uint8_images_normalises_each_image_over_all_channels() -> None:
    first = torch.randn(1, 3, 4, 5, generator=gen(3))
    images = torch.cat([first, 100 * first - 7, torch.rand(1, 3, 4, 5, generator=gen(4))])
    out = to_uint8_images(images)
    np.testing.assert_array_equal(out[1], out[0])  # affine changes of one image change nothing
    for i in range(3):  # every image reaches 0 and 255 somewhere (joint over channels, not per channel)
        assert out[i].min() == 0 and out[i].max() == 255
    joint = torch.tensor([[[[0.0, 0.5]], [[0.0, 1.0]], [[0.0, 1.0]]]])  # red only reaches half of the range
    assert to_uint8_images(joint)[0, 0].tolist() == [[0, 0, 0], [128, 255, 255]]  # per channel would give 255


def test_to_uint8_images_channels_and_constant() -> None:
    gray = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    assert to_uint8_images(gray)[0, 0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    rgb = torch.randn(2, 3, 3, 3, generator=gen(5))
    extra = torch.cat([rgb, 1e6 * torch.ones(2, 2, 3, 3)], dim=1)  # C = 5: the first 3 channels only
    np.testing.assert_array_equal(to_uint8_images(extra), to_uint8_images(rgb))
    assert (to_uint8_images(torch.full((1, 3, 2, 2), -4.0)) == 128).all()  # constant image: mid gray


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.zeros(1, 2, 4, 4), ValueError,
         "Expected `images` of shape (N, C, H, W) with C = 1 or C >= 3 and no empty dimension, "
         "but got shape (1, 2, 4, 4)."),
        (torch.zeros(3, 4, 4), ValueError,
         "Expected `images` of shape (N, C, H, W) with C = 1 or C >= 3 and no empty dimension, "
         "but got shape (3, 4, 4)."),
        (torch.zeros(1, 3, 4, 4, dtype=torch.bool), TypeError,
         "Expected `images` to be a float or integer tensor (N, C, H, W), "
         "but got a torch.bool tensor of shape (1, 3, 4, 4)."),
        (torch.tensor([[[[0.0, float("nan"), float("inf")]]]]), ValueError,
         "Expected `images` to hold finite values, but got 2 non-finite (NaN or inf) values."),
    ],
)
def test_to_uint8_images_errors(images: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        to_uint8_images(images)


# --------------------------------------------------------------------------- overlay


def test_overlay_exact_arithmetic() -> None:
    images = np.array([[[[0, 100, 255]]]], dtype=np.uint8)
    heat = np.array([[[[255, 0, 1]]]], dtype=np.uint8)
    # 0.75 * a + 0.25 * b: 63.75 -> 64, 75 -> 75, 191.5 -> 192 (half up)
    assert overlay(images, heat, 0.25).tolist() == [[[[64, 75, 192]]]]
    assert overlay(images, heat, 0.5).tolist() == [[[[128, 50, 128]]]]  # 127.5 -> 128, 128 -> 128
    np.testing.assert_array_equal(overlay(images, heat, 0.0), images)
    np.testing.assert_array_equal(overlay(images, heat, 1), heat)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 3, 4, 5, 3), dtype=np.uint8)
    literal = np.floor(0.7 * a.astype(float) + 0.3 * b.astype(float) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(overlay(a, b, 0.3), literal)
    assert overlay(a[0], b[0], 0.3).shape == (4, 5, 3)  # one (H, W, 3) picture works too


@pytest.mark.parametrize(
    ("images", "heat", "alpha", "error", "message"),
    [
        (np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 5, 3), np.uint8), 0.5, ValueError,
         "Expected `heat` to have the shape of `images` (1, 4, 4, 3), but got (1, 4, 5, 3)."),
        (np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 4, 3), np.uint8), 0.5, TypeError,
         "Expected `images` to be a uint8 numpy array of shape (N, H, W, 3) or (H, W, 3), but got a float32 "
         "array of shape (1, 4, 4, 3)."),
        (np.zeros((1, 4, 4, 3), np.uint8), torch.zeros(1, 4, 4, 3, dtype=torch.uint8), 0.5, TypeError,
         "Expected `heat` to be a uint8 numpy array of shape (N, H, W, 3) or (H, W, 3), but got a torch.uint8 "
         "tensor of shape (1, 4, 4, 3)."),
        (np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), 1.5, ValueError,
         "Expected `alpha` to be a number in [0, 1], but got 1.5."),
        (np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), True, ValueError,
         "Expected `alpha` to be a number in [0, 1], but got True."),
    ],
)
def test_overlay_errors(images: object, heat: object, alpha: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        overlay(images, heat, alpha)


# --------------------------------------------------------------------------- grid


def find(grid: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``patch`` appears exactly in ``grid``."""
    h, w = patch.shape[:2]
    ys, xs = np.nonzero((grid[: grid.shape[0] - h + 1, : grid.shape[1] - w + 1] == patch[0, 0]).all(-1))
    return [(int(y), int(x)) for y, x in zip(ys, xs) if np.array_equal(grid[y : y + h, x : x + w], patch)]


def expected_overlay(image: np.ndarray, heat_map: torch.Tensor, colormap: str, alpha: float) -> np.ndarray:
    return overlay(image[None], colorize(heat_map[None], colormap), alpha)[0]


@pytest.fixture(scope="module")
def two_rows() -> tuple[list[GridRow], list[torch.Tensor]]:
    """Row 0: a 32x48 image (no resize at tile=32), a 32x48 map and a 4x6 map (upsampled).
    Row 1: a 64x64 image (shrunk to 32x32, antialiased) with two 8x8 maps."""
    images = [torch.randn(3, 32, 48, generator=gen(6)), torch.randn(3, 64, 64, generator=gen(7))]
    maps = [
        [torch.randn(32, 48, generator=gen(8)), torch.rand(4, 6, generator=gen(9))],
        [torch.rand(8, 8, generator=gen(10)), -torch.rand(8, 8, generator=gen(11))],
    ]
    rows = [GridRow(images[0], maps[0], ""), GridRow(images[1], maps[1], "")]
    return rows, images


def test_grid_tiles_are_the_image_and_the_overlays_in_place(two_rows: tuple[list[GridRow], list[torch.Tensor]]) -> None:
    rows, images = two_rows
    grid = saliency_grid(rows, ["norm_grad", "gradient"], tile=32, colormap="viridis", alpha=0.25)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] == 3 * 48 + 4 * 2  # three 48-px columns, 2-px gaps between and around

    def upsampled(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(m[None, None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]

    image0 = to_uint8_images(images[0][None])[0]
    row0 = [image0, expected_overlay(image0, rows[0].maps[0], "viridis", 0.25),
            expected_overlay(image0, upsampled(rows[0].maps[1], (32, 48)), "viridis", 0.25)]
    shrunk = F.interpolate(
        images[1][None].double(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    image1 = to_uint8_images(shrunk)[0]
    row1 = [image1] + [expected_overlay(image1, upsampled(m, (32, 32)), "viridis", 0.25) for m in rows[1].maps]

    places = [[find(grid, tile) for tile in row] for row in (row0, row1)]
    assert all(len(p) == 1 for row in places for p in row), places  # each tile exactly once
    (y0, x00), (_, x01), (_, x02) = (p[0] for p in places[0])
    assert [p[0][0] for p in places[0]] == [y0] * 3 and (x00, x01 - x00, x02 - x01) == (2, 50, 50)
    y1 = places[1][0][0][0]
    assert [p[0][0] for p in places[1]] == [y1] * 3 and y1 >= y0 + 32 + 2
    assert [p[0][1] for p in places[1]] == [x + 8 for x in (x00, x01, x02)]  # 32-px tiles centred in 48-px cells


def test_grid_header_title_and_labels(two_rows: tuple[list[GridRow], list[torch.Tensor]]) -> None:
    rows, images = two_rows
    plain = saliency_grid(rows, ["norm_grad", "gradient"], tile=32)
    tile_top = find(plain, to_uint8_images(images[0][None])[0])[0][0]
    header = plain[:tile_top]  # labels are "": only the column titles are above the first tile
    for c in range(3):  # every column title ("image", "norm_grad", "gradient") drew dark pixels
        cell = header[:, 2 + 50 * c : 2 + 50 * c + 48]
        assert (cell != 255).any() and cell.min() < 128
    assert (plain[:, :2] == 255).all() and (plain[:, -2:] == 255).all()  # white margins

    titled = saliency_grid(rows, ["norm_grad", "gradient"], tile=32, title="epoch 3 · val")
    band = titled.shape[0] - plain.shape[0]
    assert band > 0 and (titled[:band] != 255).any()
    np.testing.assert_array_equal(titled[band:], plain)  # the title band sits on top of the same grid

    labelled_rows = [GridRow(rows[0].image, rows[0].maps, "dog · p=0.93 · plain"), rows[1]]
    labelled = saliency_grid(labelled_rows, ["norm_grad", "gradient"], tile=32)
    assert labelled.shape == plain.shape  # one line of label, as "" takes
    changed = np.nonzero((labelled != plain).any(-1).any(-1))[0]
    header_end = np.nonzero((plain[:tile_top] != 255).any(-1).any(-1))[0].max()
    assert len(changed) and changed.min() > header_end and changed.max() < tile_top  # between header and tiles


def test_grid_wraps_long_text_and_keeps_aspect_ratio() -> None:
    row = GridRow(torch.rand(3, 20, 40, generator=gen(12)), [torch.rand(5, 10, generator=gen(13))], "x")
    short = saliency_grid([row], ["a"], tile=32)
    long = saliency_grid([row], ["norm_grad_selective · layer4.0.conv1"], tile=32)
    assert short.shape[1] == long.shape[1] == 2 * 64 + 3 * 2  # 20x40 image -> 32x64 tiles
    assert long.shape[0] > short.shape[0]  # the long title wrapped onto more lines; nothing cut off
    only_image = saliency_grid([GridRow(row.image, [], "x")], [], tile=32)
    assert only_image.shape[1] == 64 + 2 * 2


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: saliency_grid([], []), ValueError,
         "Expected `rows` to be a non-empty sequence of GridRow, but got []."),
        (lambda: saliency_grid(iter([]), []), TypeError,
         "Expected `rows` to be a non-empty sequence of GridRow, but got list_iterator."),
        (lambda: saliency_grid([(torch.zeros(3, 4, 4), [], "a")], []), TypeError,
         "Expected `rows[0]` to be a GridRow, but got tuple."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [torch.zeros(2, 2)], "a")], ["x", "y"]), ValueError,
         "Expected `rows[0].maps` to hold one map per column (2: ['x', 'y']), but got 1 maps."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [torch.zeros(2, 2)], "a")], "x"), TypeError,
         "Expected `columns` to be a sequence of str (one title per map), but got 'x'."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [], "a")], [], tile=0), ValueError,
         "Expected `tile` to be a positive int, but got 0."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [], "a")], [], colormap="jet"), ValueError,
         "Expected `colormap` in ['turbo', 'viridis', 'gray'], but got 'jet'."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [], "a")], [], alpha=-0.1), ValueError,
         "Expected `alpha` to be a number in [0, 1], but got -0.1."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [], "a")], [], title=3), TypeError,
         "Expected `title` to be a str or None, but got 3."),
        (lambda: saliency_grid([GridRow(torch.zeros(3, 4, 4), [torch.zeros(2, 2)], "a"),
                                GridRow(torch.zeros(3, 4, 4), [torch.tensor([[0.0, float("inf")]])], "b")], ["m"]),
         ValueError, "Expected `rows[1].maps[0]` to hold finite values or NaN, but got 1 infinite values."),
        (lambda: saliency_grid([GridRow(torch.full((3, 4, 4), float("nan")), [], "a")], []), ValueError,
         "Expected `rows[0].image` to hold finite values, but got 48 non-finite (NaN or inf) values."),
        (lambda: GridRow(torch.zeros(3, 4, 4), [torch.zeros(1, 2, 2)], "a"), TypeError,
         "Expected `maps[0]` to be an (h, w) floating-point tensor, "
         "but got a torch.float32 tensor of shape (1, 2, 2)."),
        (lambda: GridRow(torch.zeros(3, 4, 4), [torch.zeros(2, 2), torch.zeros(0, 2)], "a"), ValueError,
         "Expected `maps[1]` to have no empty dimension, but got shape (0, 2)."),
        (lambda: GridRow(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4), "a"), TypeError,
         "Expected `maps` to be a sequence of (h, w) tensors, but got a torch.float32 tensor of shape (2, 4, 4)."),
        (lambda: GridRow(torch.zeros(4, 4), [], "a"), TypeError,
         "Expected `image` to be a (C, H, W) floating-point or integer tensor, but got a torch.float32 tensor of "
         "shape (4, 4)."),
        (lambda: GridRow(torch.zeros(2, 4, 4), [], "a"), ValueError,
         "Expected `image` of shape (C, H, W) with C = 1 or C >= 3 and no empty dimension, but got shape (2, 4, 4)."),
        (lambda: GridRow(torch.zeros(3, 4, 4), [], None), TypeError, "Expected `label` to be a str, but got None."),
    ],
)
def test_grid_errors(call: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


# --------------------------------------------------------------------------- files


def test_save_png_round_trip(tmp_path: Path, two_rows: tuple[list[GridRow], list[torch.Tensor]]) -> None:
    grid = saliency_grid(two_rows[0], ["a", "b"], tile=32, title="t")
    path = tmp_path / "new" / "folder" / "grid.png"
    save_png(grid, path)
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), grid)
    save_png(grid[:5, :7], str(tmp_path / "small.PNG"))
    with Image.open(tmp_path / "small.PNG") as saved:
        np.testing.assert_array_equal(np.asarray(saved), grid[:5, :7])


@pytest.mark.parametrize(
    ("image", "path", "error", "message"),
    [
        (np.zeros((4, 4, 3), np.uint8), "grid.jpg", ValueError,
         "Expected `path` to end in '.png', but got 'grid.jpg'."),
        (np.zeros((4, 4, 3), np.uint8), 3, TypeError, "Expected `path` to be a str or os.PathLike, but got 3."),
        (np.zeros((4, 4), np.uint8), "grid.png", TypeError,
         "Expected `image` to be a uint8 numpy array of shape (H, W, 3), but got a uint8 array of shape (4, 4)."),
    ],
)
def test_save_png_errors(image: object, path: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        save_png(image, path)
