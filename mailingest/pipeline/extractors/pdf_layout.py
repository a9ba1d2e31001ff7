"""Positioned text and the neighbourhood questions label-anchored extraction asks of it.

Invoices print a value after its label (``Invoice No: 123``), right of it in the same row
(``Rechnungsnummer      471102``) or under it in a column header (``Fälligkeit`` over
``03.10.2018``). ``Layout`` answers exactly those three questions, so the field rules in
``pdf_fields`` stay free of geometry, and an OCR front end only has to produce ``TextLine``s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Where = Literal["inline", "right", "below"]

POSITION_WEIGHT: dict[Where, float] = {"inline": 1.0, "right": 0.9, "below": 0.75}
"""How much a value's position relative to its label is trusted."""

SEPARATORS = " \t:#=.-–—|"
_PLAIN_GAP = re.compile(r"[\s:#=.\-–—|]*")

TITLE_WORDS = r"invoice|\w*rechnung|gutschrift|facture|avoir|factuur|factura|fattura|credit\s*note"
"""Words that title an invoice (or credit note) in the languages the labels cover."""


def labels(*alternatives: str) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of ``alternatives`` (kept apart for readability)."""
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)


@dataclass(frozen=True)
class TextLine:
    """A run of text on one baseline with no wide gap in it, in PDF points (origin bottom left).

    Wide gaps split a printed line into several ``TextLine``s on purpose: a label and its value
    in separate table cells must be separate to be told apart. ``char_x`` holds the left edge
    of every character plus the right edge of the last, so a value's own box can be reported.
    """

    page: int
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    char_x: tuple[float, ...] | None = None

    @property
    def height(self) -> float:
        return max(self.y1 - self.y0, 1.0)

    def span_bbox(self, start: int, end: int) -> list[float]:
        """Box of ``text[start:end]``: exact with ``char_x``, else spread evenly over the line."""
        start, end = max(0, min(start, len(self.text))), max(0, min(end, len(self.text)))
        if self.char_x is not None and len(self.char_x) == len(self.text) + 1:
            left, right = self.char_x[start], self.char_x[end]
        else:
            width = (self.x1 - self.x0) / max(len(self.text), 1)
            left, right = self.x0 + width * start, self.x0 + width * end
        return [round(left, 2), round(self.y0, 2), round(right, 2), round(self.y1, 2)]


@dataclass(frozen=True)
class Hit(Generic[T]):
    """A value found on the page, where it was, and how it stood to its label."""

    value: T
    line: TextLine
    start: int
    end: int
    where: Where = "inline"


@dataclass(frozen=True)
class Candidate:
    """A value proposed for one field, where it stands, and how much it is believed (0..1)."""

    value: Any
    score: float
    line: TextLine
    start: int
    end: int
    where: Where = "inline"

    @classmethod
    def of(cls, hit: Hit[Any], score: float) -> Candidate:
        return cls(hit.value, score * POSITION_WEIGHT[hit.where], hit.line, hit.start, hit.end, hit.where)

    @property
    def raw(self) -> str:
        return self.line.text[self.start : self.end].strip()

    @property
    def bbox(self) -> list[float]:
        return self.line.span_bbox(self.start, self.end)


Finder = Callable[[str, int], list[tuple[T, int, int]]]
"""Finds values in ``text`` at or after ``offset``: (value, start, end) in reading order."""


def _v_overlap(a: TextLine, b: TextLine) -> float:
    overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
    return overlap / min(a.height, b.height)


def _h_overlap(a: TextLine, b: TextLine) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0


class Layout:
    """The lines of a document in reading order, with neighbour look-ups per page."""

    def __init__(self, lines: Iterable[TextLine]) -> None:
        self.lines = sorted((ln for ln in lines if ln.text.strip()), key=lambda ln: (ln.page, -ln.y1, ln.x0))
        self.pages: dict[int, list[TextLine]] = {}
        for line in self.lines:
            self.pages.setdefault(line.page, []).append(line)
        self._rows: dict[int, list[TextLine]] = {}

    def row(self, line: TextLine) -> list[TextLine]:
        """Every line sharing ``line``'s row (vertical overlap of at least half a line), left to right."""
        if (cached := self._rows.get(id(line))) is not None:
            return cached
        same = [
            o for o in self.pages[line.page] if o is line or (o.y0 < line.y1 and _v_overlap(line, o) >= 0.5)
        ]
        self._rows[id(line)] = row = sorted(same, key=lambda o: o.x0)
        return row

    def right_of(self, line: TextLine) -> list[TextLine]:
        return [o for o in self.row(line) if o is not line and o.x0 >= line.x1 - 2]

    def left_of(self, line: TextLine) -> TextLine | None:
        left = [o for o in self.row(line) if o is not line and o.x1 <= line.x0 + 2]
        return left[-1] if left else None

    def below(self, line: TextLine, rows: float = 3, aligned: bool = False) -> list[TextLine]:
        """Lines under ``line`` within about ``rows`` line pitches, sharing its column, top first.

        ``aligned`` also accepts lines that start near the label without overlapping it, as in
        an address block indented under its heading.
        """
        limit = line.y0 - rows * 1.6 * line.height
        out = []
        for o in self.pages[line.page]:
            if o is line or o.y1 > line.y0 + 0.3 * line.height or o.y1 < limit:
                continue
            if _h_overlap(line, o) or (aligned and abs(o.x0 - line.x0) <= 20):
                out.append(o)
        return sorted(out, key=lambda o: (-o.y1, o.x0))

    def lookup(
        self,
        line: TextLine,
        end: int,
        find: Finder[T],
        *,
        gap: re.Pattern[str] = _PLAIN_GAP,
        neighbours: bool = True,
    ) -> Hit[T] | None:
        """The value belonging to a label that ends at ``line.text[end]``.

        Tried in the order people print them: after the label on the same line, in the next
        cell to the right, in the cell below. Only separators (or what ``gap`` allows) may stand
        between label and value, so "Rechnung gemäß Bestellung 123" yields no invoice number.
        """
        for value, start, stop in find(line.text, end):
            if gap.fullmatch(line.text[end:start]):
                return Hit(value, line, start, stop, "inline")
            break
        if not neighbours or line.text[end:].strip(SEPARATORS):
            return None
        where: Where
        for where in ("right", "below"):
            cells = self.right_of(line) if where == "right" else self.below(line, rows=2)
            for other in cells[:1]:
                for value, start, stop in find(other.text, 0):
                    if gap.fullmatch(other.text[:start]):
                        return Hit(value, other, start, stop, where)
                    break
        return None


def best(candidates: Sequence[Candidate]) -> Candidate | None:
    """Highest score; on a tie the one read first (page 1 top beats a repeated footer)."""
    return max(candidates, key=lambda c: c.score, default=None)
