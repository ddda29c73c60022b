"""The API reference's docstring conversion (docs/rst_docstrings.py, a griffe extension)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("rst_docstrings", ROOT / "docs" / "rst_docstrings.py")
assert _spec is not None and _spec.loader is not None
rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rst)


def test_roles_become_code_spans() -> None:
    text = (":func:`~saliency_monitor.engine.compute_saliency`, :mod:`saliency_monitor.metrics`, "
            ":class:`.degenerate`, :data:`the grid <EXTRACTS>` and ``literal``")
    assert rst.to_markdown(text) == (
        "`compute_saliency`, `saliency_monitor.metrics`, `degenerate`, `the grid` and ``literal``"
    )


def test_a_simple_table_with_a_header_becomes_a_markdown_table() -> None:
    text = textwrap.dedent("""\
        Keys:

        ============  ====================
        key           value
        ============  ====================
        ``a|b``       first line
                      continued
        ``c``         second
        ============  ====================

        After.""")
    assert rst.to_markdown(text).split("\n") == [
        "Keys:", "", "", "| key | value |", "|---|---|", "| ``a\\|b`` | first line continued |",
        "| ``c`` | second |", "", "", "After.",
    ]


def test_a_simple_table_without_a_header_becomes_a_list() -> None:
    text = textwrap.dedent("""\
        =======  =============
        layers   which modules
        ``x``    the input
        =======  =============""")
    assert rst.to_markdown(text).split("\n") == ["", "- `layers`: which modules", "- ``x``: the input", ""]


def test_a_literal_block_becomes_a_fenced_block() -> None:
    text = textwrap.dedent("""\
        Add it to a Trainer::

            trainer = Trainer(callbacks=[SaliencyMonitor()])
            trainer.fit(model)

        Then read the panels.""")
    assert rst.to_markdown(text).split("\n") == [
        "Add it to a Trainer:", "", "```python", "trainer = Trainer(callbacks=[SaliencyMonitor()])",
        "trainer.fit(model)", "```", "", "Then read the panels.",
    ]


def test_the_package_loads_with_every_docstring_converted() -> None:
    package = griffe.load("saliency_monitor", search_paths=[str(ROOT)], extensions=griffe.load_extensions(
        f"{ROOT / 'docs' / 'rst_docstrings.py'}:RstToMarkdown"))
    logic = package["monitor.logic.SaliencyMonitorLogic"].docstring.value
    # both Lightning namespaces' classes get the docstring their body assigns (__doc__ = ...)
    assert package["callback.SaliencyMonitor"].docstring.value == logic
    assert package["lightning.SaliencyMonitor"].docstring.value == logic
    assert ":func:`" not in package["engine.compute.compute_saliency"].docstring.value
    assert "| name | pass | map |" in package["engine.methods"].docstring.value
