"""A griffe extension for the API reference (loaded by ``docs/mkdocs.yml``).

The package's docstrings are Google-style sections (``Args:``, ``Returns:``) written with three
reST habits that Markdown does not know. Before mkdocstrings renders a docstring, this turns:

- Sphinx roles (``:func:`~saliency_monitor.engine.compute_saliency```, ``:mod:`...```,
  ``:class:``, ``:data:``, ...) into code spans (``compute_saliency``, the last dotted part
  when the target starts with ``~``);
- simple tables (columns framed by ``====  ====`` lines) into Markdown tables, or into a list
  when the table has no header row;
- a paragraph ending in ``::`` followed by an indented block into a fenced Python block.

Nothing else changes: double-backtick literals are Markdown code spans already.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
BORDER = re.compile(r"^(\s*)=+(\s+=+)+\s*$")


def _role(match: re.Match[str]) -> str:
    tilde, text = match.groups()
    titled = re.fullmatch(r"(.*?)\s*<([^>]+)>", text)
    if titled:
        return f"`{titled.group(1)}`"
    name = text.strip().lstrip(".")
    return f"`{name.rsplit('.', 1)[-1] if tilde else name}`"


def _columns(border: str) -> list[int]:
    return [m.start() for m in re.finditer(r"=+", border)]


def _rows(lines: list[str], starts: list[int]) -> list[list[str]]:
    """Cells per row; a line whose first column is blank continues the row above."""
    rows: list[list[str]] = []
    for line in lines:
        ends = [*starts[1:], None]
        cells = [line[start:end].strip() for start, end in zip(starts, ends)]
        if rows and not cells[0]:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return rows


def _markdown_table(indent: str, header: list[str] | None, body: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    if header is None:  # no header row: a list, "first: the rest"
        items = []
        for first, *rest in body:
            label = first if "`" in first or " " in first else f"`{first}`"
            items.append(f"{indent}- {label}: {' — '.join(cell(text) for text in rest if text)}")
        return ["", *items, ""]
    lines = [
        indent + "| " + " | ".join(cell(text) for text in header) + " |",
        indent + "|" + "---|" * len(header),
    ]
    lines += [indent + "| " + " | ".join(cell(text) for text in row) + " |" for row in body]
    return ["", *lines, ""]


def _next_border(lines: list[str], start: int) -> int | None:
    """The index of the next border line from ``start``, before any blank line."""
    for index in range(start, len(lines)):
        if BORDER.match(lines[index]):
            return index
        if not lines[index].strip():
            return None
    return None


def convert_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(lines):
        match = BORDER.match(lines[index])
        second = _next_border(lines, index + 1) if match else None
        if match is None or second is None:
            out.append(lines[index])
            index += 1
            continue
        starts = _columns(lines[index])
        third = _next_border(lines, second + 1) if second + 1 < len(lines) and lines[second + 1].strip() else None
        if third is not None:  # border, header, border, body, border
            header = [" ".join(cells) for cells in zip(*_rows(lines[index + 1:second], starts))]
            out += _markdown_table(match.group(1), header, _rows(lines[second + 1:third], starts))
            index = third + 1
        else:
            out += _markdown_table(match.group(1), None, _rows(lines[index + 1:second], starts))
            index = second + 1
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert_literal_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.rstrip().endswith("::") or BORDER.match(line):
            out.append(line)
            index += 1
            continue
        base = _indent(line)
        block_start = index + 1
        while block_start < len(lines) and not lines[block_start].strip():
            block_start += 1
        block_end = block_start
        while block_end < len(lines) and (not lines[block_end].strip() or _indent(lines[block_end]) > base):
            block_end += 1
        block = lines[block_start:block_end]
        while block and not block[-1].strip():
            block.pop()
        if not block or _indent(block[0]) <= base:
            out.append(line)
            index += 1
            continue
        text = line.rstrip()[:-2].rstrip()
        if text.strip():
            out.append(text + ":")
        depth = min(_indent(code) for code in block if code.strip())
        pad = " " * base
        out += ["", pad + "```python", *(pad + code[depth:] for code in block), pad + "```", ""]
        index = block_end
    return out


def to_markdown(docstring: str) -> str:
    """The docstring with its reST roles, simple tables and literal blocks as Markdown."""
    lines = ROLE.sub(_role, docstring).split("\n")
    return "\n".join(convert_literal_blocks(convert_tables(lines)))


def _inherit_doc_assignments(obj: griffe.Object) -> None:
    """``__doc__ = Base.__doc__`` in a class body: give the class its base's docstring.

    Static analysis does not run that assignment (the two Lightning namespaces'
    ``SaliencyMonitor`` classes share their logic's docstring that way).
    """
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        if member.is_class and member.docstring is None and "__doc__" in member.members:
            source = str(getattr(member.members["__doc__"], "value", ""))
            base_name = source.removesuffix(".__doc__")
            for base in member.resolved_bases:
                if base.name == base_name and base.docstring is not None:
                    member.docstring = griffe.Docstring(base.docstring.value, parent=member)
        if member.is_module or member.is_class:
            _inherit_doc_assignments(member)


class RstToMarkdown(griffe.Extension):
    """Converts every docstring of the loaded package as it is visited."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe >= 2
        _inherit_doc_assignments(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 1
        _inherit_doc_assignments(pkg)
