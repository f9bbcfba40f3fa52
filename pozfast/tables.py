"""Text tables: Markdown for reports and results files, aligned plain text for terminals."""

from __future__ import annotations

from collections.abc import Sequence


def _widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numbers_right: bool = True) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned (``numbers_right``)."""
    widths = _widths(headers, rows)

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i and numbers_right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain columns separated by two spaces, a dashed rule under the headers; numbers right-aligned."""
    widths = _widths(headers, rows)

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
