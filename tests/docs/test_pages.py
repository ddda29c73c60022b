"""The documentation pages as MkDocs lays them out (the strict build itself runs in .ci/run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

PAGES = Path(__file__).resolve().parents[2] / "docs" / "pages"


def url(page: Path) -> str:
    """The page's URL with MkDocs' directory URLs: a/b.md -> a/b/, a/index.md and a/README.md -> a/."""
    relative = page.relative_to(PAGES).with_suffix("")
    parts = relative.parts[:-1] if relative.name in ("index", "README") else relative.parts
    return "/".join(parts) + "/"


def test_no_two_pages_share_a_url() -> None:
    # MkDocs builds both and silently keeps one: e.g. reproduce.md and reproduce/README.md
    counts = Counter(url(page) for page in PAGES.rglob("*.md"))
    assert [address for address, count in counts.items() if count > 1] == []
    assert url(PAGES / "reproduce" / "README.md") == "reproduce/" and url(PAGES / "index.md") == "/"
