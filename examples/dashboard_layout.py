"""Count the panels of a W&B run as the web UI and ``wandb leet`` lay them out.

    .ci/venv python examples/dashboard_layout.py wandb-runs/wandb/latest-run

Reads the run's records with ``wandb leet inspect --json`` (offline runs included) and prints, per
panel section (the text before a key's first ``/``), how many line charts it holds (keys that
carry numbers), the media panels (pictures) and the tables, then the totals. W&B's own keys
(``_step``, ``_runtime``, ``_timestamp``) are not charts and are left out.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from saliency_monitor.monitor.loggers.wandb import offline_history, read_offline_run


@dataclass
class Section:
    """The panels of one section: line charts (numeric keys), pictures and tables."""

    charts: set[str] = field(default_factory=set)
    media: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)


def panel_sections(history: list[dict[str, object]]) -> dict[str, Section]:
    """Per section (text before the first ``/``, or the key itself), its panels' keys."""
    keys = {key: value for item in history for key, value in item.items() if not key.startswith("_")}
    typed = {key[: -len("._type")]: value for key, value in keys.items() if key.endswith("._type")}
    sections: dict[str, Section] = defaultdict(Section)

    def section(key: str) -> Section:
        return sections[key.split("/", 1)[0]]

    for base, kind in typed.items():  # a picture list or a table: its attributes are not charts
        (section(base).tables if kind == "table-file" else section(base).media).add(base)
    for key, value in keys.items():
        attribute_of = any(key.startswith(base + ".") for base in typed)
        if not attribute_of and isinstance(value, (int, float)) and not isinstance(value, bool):
            section(key).charts.add(key)
    return dict(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="an offline-run-* directory (or its wandb/ parent: the latest run)")
    args = parser.parse_args(argv)
    sections = panel_sections(offline_history(read_offline_run(args.run_dir)))
    width = max(len(name) for name in sections)
    print(f"{'section':<{width}}  charts  pictures  tables")
    for name in sorted(sections):
        section = sections[name]
        print(f"{name:<{width}}  {len(section.charts):>6}  {len(section.media):>8}  {len(section.tables):>6}")
    charts = sum(len(s.charts) for s in sections.values())
    print(f"{len(sections)} sections, {charts} line charts in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
