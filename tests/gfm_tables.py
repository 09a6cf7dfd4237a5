"""GitHub-flavoured reading of a Markdown report's pipe tables: the source split as GFM splits it,
and what markdown-it-py (CommonMark + the GFM table rule) renders. markdown-it pads or cuts a row
to the header's width, so a row broken by an unescaped `|` is only visible in the source split."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

DELIMITER = re.compile(r"^\|( *:?-{3,}:? *\|)+$")


def source_tables(md: str) -> list[list[list[str]]]:
    """Each pipe table of the source as rows of cells, split as GFM does (at unescaped `|`)."""
    lines, tables, i = md.splitlines(), [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and DELIMITER.match(lines[i + 1]):
            rows, j = [lines[i]], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(lines[j])
                j += 1
            tables.append([[c.strip() for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in rows])
            i = j
        else:
            i += 1
    return tables


def rendered_tables(md: str) -> list[list[int]]:
    """Cells per row of each <table> markdown-it-py (CommonMark + the GFM table rule) renders."""
    tables: list[list[int]] = []
    for tok in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(md):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            tables[-1].append(0)
        elif tok.type in ("th_open", "td_open"):
            tables[-1][-1] += 1
    return tables


def assert_tables_whole(md: str) -> None:
    src, html = source_tables(md), rendered_tables(md)
    assert src, "no table in the report"
    assert len(html) == len(src), "a pipe table of the source did not become an HTML table"
    for s, h in zip(src, html, strict=True):
        width = len(s[0])
        assert [len(r) for r in s] == [width] * len(s), f"a row splits into a different number of cells: {s}"
        assert h == [width] * len(s), f"rendered rows {h} vs {len(s)} source rows of {width} cells"
