"""Markdown building blocks for the reports: escaped table cells, tables, human sizes and paths
shown relative to the working directory.

A GitHub pipe table splits a row at every unescaped `|` and ends at a newline, so `max |Δ|` or a
multi-line error inside a cell breaks the table; every cell goes through `cell()`. A leaf module
(no project imports), so report.py, charts.py, diagnose.py and prune_report.py can all use it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# a folder this tool creates for a run's work (optimize.files.own_temp_work_dir): its name means nothing to a reader
_WORK_DIR = re.compile(re.escape(tempfile.gettempdir().rstrip(os.sep) + os.sep) + r"optimize-[A-Za-z0-9_]+")


def one_line(text: Any) -> str:
    """Text on one line: newlines (and the spaces around them) become one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


def tidy_paths(text: str, cwd: Path | None = None) -> str:
    """Absolute paths under the working directory written relative to it, and a run's temporary
    work folder written as `WORK_DIR` (it is gone after the run)."""
    base = str(cwd or Path.cwd()).rstrip(os.sep) + os.sep
    return _WORK_DIR.sub("WORK_DIR", text.replace(base, ""))


def cell(value: Any) -> str:
    """One table cell: `|` escaped, newlines as `<br>`, `<` as an entity (never read as an HTML
    tag), paths tidied; None is an em dash."""
    if value is None:
        return "—"
    text = tidy_paths(str(value)).strip()
    text = text.replace("\\|", "|").replace("|", "\\|").replace("<", "&lt;")
    return re.sub(r"\s*(\r\n|\r|\n)\s*", "<br>", text)


def row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """A pipe table; every row padded or cut to the header's width. `align`: per column '' or 'right'."""
    width = len(header)
    marks = [("---:" if a == "right" else "---") for a in (align or [""] * width)]
    lines = [row(header), "| " + " | ".join(marks) + " |"]
    for r in rows:
        cells = list(r)[:width]
        lines.append(row(cells + [""] * (width - len(cells))))
    return lines


def code(text: Any) -> str:
    """Inline code for a path or name (a backtick inside would end the span: then plain text)."""
    s = str(text)
    return s if "`" in s else f"`{s}`"


def human_bytes(n: int | float | None) -> str | None:
    """1275 → '1.2 KiB' (binary units); None stays None."""
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None  # unreachable: the loop returns at GiB


def display_path(path: str | os.PathLike[str] | None, cwd: Path | None = None) -> str | None:
    """A path relative to the working directory when it lies under it; a run's temporary work
    folder as WORK_DIR; anything else as given."""
    if path is None:
        return None
    p = Path(path)
    base = (cwd or Path.cwd()).resolve()
    if p.is_absolute():
        try:
            return str(p.resolve().relative_to(base))
        except ValueError:
            return tidy_paths(str(p), base)
    return str(p)


__all__ = ["cell", "code", "display_path", "human_bytes", "one_line", "row", "table", "tidy_paths"]
