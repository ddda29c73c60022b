"""Capture ``wandb leet`` on a run as a terminal shows it, and render the capture to a PNG.

    .ci/venv python docs/leet_capture.py wandb-runs/wandb/latest-run docs/pages/leet_dashboard

Starts leet in a detached tmux session of 200 × 60 cells (leet's default layout: run overview
and summary on the left, a 4 × 3 grid of charts, system metrics on the right), waits for it to
load the run, captures the pane with its colours and writes ``OUT.txt`` (the plain text) and
``OUT.png`` (the text drawn in DejaVu Sans Mono with the captured colours). Leet stores the panes
it toggles in its config file: it runs with a copy of yours in a temporary ``WANDB_CONFIG_DIR``.
Needs tmux and the DejaVu fonts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
BACKGROUND, FOREGROUND = (24, 24, 27), (220, 220, 220)
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_BASIC = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
          (17, 168, 205), (229, 229, 229)]
_BRIGHT = [(102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234), (214, 112, 214),
           (41, 184, 219), (255, 255, 255)]
Style = tuple[tuple[int, int, int], tuple[int, int, int] | None, bool]
"""(foreground, background or None, bold)."""


def capture(run_dir: Path, width: int = 200, height: int = 60, wait: float = 8.0) -> str:
    """The pane of ``wandb leet run RUN_DIR`` after ``wait`` seconds, with its escape sequences."""
    session = f"leet-capture-{os.getpid()}"
    with tempfile.TemporaryDirectory() as config_dir:
        shared = Path.home() / ".config" / "wandb" / "wandb-leet.json"
        if shared.exists():
            shutil.copy(shared, Path(config_dir) / shared.name)
        command = f"WANDB_CONFIG_DIR={config_dir} {sys.executable} -m wandb leet run {run_dir.resolve()}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), command],
                       check=True)
        try:
            time.sleep(wait)
            result = subprocess.run(["tmux", "capture-pane", "-p", "-e", "-t", session],
                                    check=True, capture_output=True, text=True)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    return result.stdout


def _color(codes: list[int], i: int) -> tuple[tuple[int, int, int], int]:
    """The colour of a 38/48 sequence starting at ``codes[i]`` and the index after it."""
    if codes[i + 1] == 2:
        return (codes[i + 2], codes[i + 3], codes[i + 4]), i + 5
    n = codes[i + 2]
    if n < 16:
        return (_BASIC + _BRIGHT)[n], i + 3
    if n < 232:
        r, g, b = (n - 16) // 36, (n - 16) // 6 % 6, (n - 16) % 6
        return tuple(0 if c == 0 else 55 + 40 * c for c in (r, g, b)), i + 3  # type: ignore[return-value]
    return (8 + 10 * (n - 232),) * 3, i + 3  # type: ignore[return-value]


def _apply(style: Style, codes: list[int]) -> Style:
    fg, bg, bold = style
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            fg, bg, bold, i = FOREGROUND, None, False, i + 1
        elif code in (38, 48):
            color, i = _color(codes, i)
            fg, bg = (color, bg) if code == 38 else (fg, color)
        else:
            if code == 1:
                bold = True
            elif code == 22:
                bold = False
            elif 30 <= code <= 37 or 90 <= code <= 97:
                fg = (_BASIC if code < 90 else _BRIGHT)[code % 10]
            elif 40 <= code <= 47 or 100 <= code <= 107:
                bg = (_BASIC if code < 100 else _BRIGHT)[code % 10]
            elif code == 39:
                fg = FOREGROUND
            elif code == 49:
                bg = None
            i += 1
    return fg, bg, bold


_DOTS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3))
"""(column, row) of braille dots 1-8 (bit i of the pattern: dot i + 1)."""


def _braille(draw: ImageDraw.ImageDraw, bits: int, x: float, y: float, w: float, h: float, fill: object) -> None:
    """A braille pattern (leet draws its charts with them) as dots: the fonts here have no glyphs."""
    radius = max(1.0, w / 6)
    for bit, (column, row) in enumerate(_DOTS):
        if bits >> bit & 1:
            cx, cy = x + w * (1 + 2 * column) / 4, y + h * (1 + 2 * row) / 8
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)  # type: ignore[arg-type]


def render(text: str, path: Path, size: int = 14) -> None:
    """Draw a captured pane (escape sequences read for colours) as a PNG."""
    fonts = {False: ImageFont.truetype(FONT, size), True: ImageFont.truetype(BOLD, size)}
    cell_w, cell_h = fonts[False].getlength("M"), size + 3
    lines = text.rstrip("\n").split("\n")
    columns = max(len(_SGR.sub("", line)) for line in lines)
    image = Image.new("RGB", (int(cell_w * columns) + 16, cell_h * len(lines) + 16), BACKGROUND)
    draw = ImageDraw.Draw(image)
    style: Style = (FOREGROUND, None, False)
    for row, line in enumerate(lines):
        column = 0
        for index, part in enumerate(_SGR.split(line)):  # text, codes, text, codes, ..., text
            if index % 2:
                style = _apply(style, [int(c) if c else 0 for c in part.split(";")])
                continue
            for char in part:
                x, y = 8 + column * cell_w, 8 + row * cell_h
                if style[1] is not None:
                    draw.rectangle([x, y, x + cell_w, y + cell_h], fill=style[1])
                if 0x2800 <= ord(char) <= 0x28FF:
                    _braille(draw, ord(char) - 0x2800, x, y, cell_w, cell_h, style[0])
                else:
                    draw.text((x, y), char, font=fonts[style[2]], fill=style[0])
                column += 1
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="an offline-run-* directory (or wandb/latest-run)")
    parser.add_argument("out", type=Path, help="output path without suffix: OUT.txt and OUT.png are written")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds to let leet load the run")
    args = parser.parse_args(argv)
    raw = capture(args.run_dir, wait=args.wait)
    args.out.with_suffix(".txt").write_text(_SGR.sub("", raw))
    render(raw, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.txt')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
