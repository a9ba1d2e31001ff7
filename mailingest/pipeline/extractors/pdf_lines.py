"""Line items from the table printed on an invoice: header row, column ranges, rows to the totals.

Works on ``TextLine`` cells, so the text layer and OCR words go through the same code, and knows
no vendor: a table is found by its header row (description / quantity / unit price / VAT /
amount words in en, de, fr, es, it, nl), each header word gives its column an x-range, and every
row below is cut into those columns until the totals block (``Subtotal``, ``Netto``, ``Total HT``)
or the end of the table. Rows with text but no numbers continue the previous item's description.

A row is believed more when its own arithmetic holds (quantity x unit price = amount); the lines
as a whole are checked against the net total by ``line_sum_message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from mailingest.models import FieldInfo, Item, Line, LineVat, Price, ValidationMessage
from mailingest.pipeline.extractors.pdf_layout import Layout, TextLine
from mailingest.pipeline.extractors.pdf_totals import classify_total_label
from mailingest.pipeline.extractors.pdf_values import find_amounts

Column = Literal["pos", "desc", "qty", "unit", "price", "vat", "amount"]
NUMERIC: tuple[Column, ...] = ("qty", "price", "vat", "amount")
RULE_LINE_SUM = "MI-LINES-01"
"""Warning: the line amounts do not add up to the net total (or no net total to check against)."""

# One alternation, most specific first: at each position the first matching alternative wins, so
# "Gesamtpreis" is an amount before "\w*preis" can make it a price, "Unit price" a price before
# "unit" makes it a unit column.
_HEADER_WORDS: list[tuple[Column, str]] = [
    (
        "amount",
        r"line\s+total|total\s+(?:ht|net|hors\s+taxes?|excl\.?(?:\s+vat)?)|net\s+amount|amount|gesamtpreis",
    ),
    (
        "amount",
        r"gesamt(?:betrag|netto)?|\w*betrag|summe|montant(?:\s+ht)?|importe|importo|totale|total|bedrag",
    ),
    ("amount", r"totaal|prix\s+total|precio\s+total|prezzo\s+totale|netto"),
    ("price", r"unit\s+price|price\s+per\s+unit|\w*preis|e-preis|prix\s+unitaire|prix\s+u\.?\s*(?:ht)?"),
    ("price", r"p\.\s?u\.?"),
    ("price", r"precio(?:\s+unitario|\s+unidad)?|prezzo(?:\s+unitario)?|(?:stuk|eenheids)?prijs|price|rate"),
    ("price", r"tarif|prix|p\.?\s?unit\.?|ansatz"),
    (
        "qty",
        r"qty|quantity|quantit[éyàa]|qt[éeà]\.?|menge|anzahl|cantidad|cant\.|aantal|hoeveelheid|hours|stunden",
    ),
    ("vat", r"vat(?:\s*%|\s+rate)?|tax\s*%|tax\s+rate|mwst\.?(?:-?satz)?|ust\.?(?:-?satz)?|steuersatz"),
    ("vat", r"tva(?:\s*%)?|iva(?:\s*%)?|btw(?:\s*%)?|taux"),
    ("unit", r"unit|einheit|unit[ée]|unidad|unit[àa]|eenheid|u\.m\.|me\b"),
    ("desc", r"description|descripci[óo]n|descrizione|omschrijving|beschreibung|bezeichnung|d[ée]signation"),
    ("desc", r"libell[ée]|concepto|art[íi]culo|articolo|article|artikel|product|produit|producto|prodotto"),
    ("desc", r"item|service|leistung|prestation|servicio|servizio|dienst|details?|particulars"),
    ("pos", r"pos\.?|position|no\.|nr\.?|n°|#|line"),
]
_HEADER = re.compile(
    "|".join(rf"(?P<c{i}>(?<!\w){pattern}(?!\w))" for i, (_, pattern) in enumerate(_HEADER_WORDS)),
    re.IGNORECASE,
)
_PERCENT = re.compile(r"(?<![\d.,])(\d{1,2}(?:[.,]\d{1,2})?)\s?%")
_UNIT_WORD = re.compile(
    r"^(?:pcs?|pce|stk\.?|st\.?|x|h|hrs?|std\.?|days?|tage?|kg|m|m2|m²|l|ea|each|unit[ée]?s?|u\.?)$", re.I
)


@dataclass
class _Col:
    kind: Column
    x0: float
    x1: float

    @property
    def mid(self) -> float:
        return (self.x0 + self.x1) / 2


@dataclass
class _Cell:
    """A piece of a row: a number (with its value) or words, and where it sits."""

    text: str
    x0: float
    x1: float
    line: TextLine
    start: int
    end: int
    value: Decimal | None = None
    percent: bool = False
    money: bool = False


@dataclass
class LineItem:
    """One table row read as an invoice line, with the cells each value came from."""

    description: list[str] = field(default_factory=list)
    quantity: _Cell | None = None
    unit: str | None = None
    price: _Cell | None = None
    amount: _Cell | None = None
    vat: _Cell | None = None
    desc_cell: _Cell | None = None
    computed_amount: Decimal | None = None
    confidence: float = 0.5

    @property
    def net_amount(self) -> Decimal | None:
        return self.amount.value if self.amount else self.computed_amount


def _header_columns(row: list[TextLine]) -> list[_Col] | None:
    """The columns a row names when it is a table header, else ``None``."""
    cols: list[_Col] = []
    consumed = 0
    total = 0
    for cell in row:
        total += len(cell.text.strip())
        for m in _HEADER.finditer(cell.text):
            index = int(next(k for k, v in m.groupdict().items() if v is not None)[1:])
            kind = _HEADER_WORDS[index][0]
            box = cell.span_bbox(m.start(), m.end())
            consumed += m.end() - m.start()
            if cols and cols[-1].kind == kind and box[0] - cols[-1].x1 < 15:
                cols[-1].x1 = box[2]  # "Total HT" read as two words of one column
                continue
            cols.append(_Col(kind, box[0], box[2]))
    kinds = {c.kind for c in cols}
    if any(ch.isdigit() for cell in row for ch in cell.text):
        return None
    if not ({"amount", "price"} & kinds) or len(kinds - {"pos", "unit"}) < 3 or consumed < 0.6 * total:
        return None
    if "desc" not in kinds and "pos" not in kinds:
        return None
    return sorted(cols, key=lambda c: c.x0)


def _bounds(cols: list[_Col], page_right: float) -> list[tuple[_Col, float, float]]:
    """Each column's x-range: halfway to its neighbours' header words."""
    out = []
    for i, col in enumerate(cols):
        left = -1e9 if i == 0 else (cols[i - 1].x1 + col.x0) / 2
        right = page_right + 1e9 if i == len(cols) - 1 else (col.x1 + cols[i + 1].x0) / 2
        out.append((col, left, right))
    return out


def _cells(line: TextLine) -> list[_Cell]:
    """Numbers (amounts, percentages) and runs of words of one text line, each with its x-range."""
    out: list[_Cell] = []
    taken: list[tuple[int, int]] = []
    for m in _PERCENT.finditer(line.text):
        box = line.span_bbox(m.start(), m.end())
        value = Decimal(m.group(1).replace(",", "."))
        out.append(_Cell(m.group(0), box[0], box[2], line, m.start(), m.end(), value, percent=True))
        taken.append((m.start(), m.end()))
    for a in find_amounts(line.text):
        if any(s < a.end and a.start < e for s, e in taken):
            continue
        box = line.span_bbox(a.start, a.end)
        cell = _Cell(line.text[a.start : a.end], box[0], box[2], line, a.start, a.end, a.value)
        cell.money = a.money_like
        out.append(cell)
        taken.append((a.start, a.end))
    for m in re.finditer(r"\S+", line.text):
        if not any(s < m.end() and m.start() < e for s, e in taken):
            box = line.span_bbox(m.start(), m.end())
            out.append(_Cell(m.group(0), box[0], box[2], line, m.start(), m.end()))
    return sorted(out, key=lambda c: c.x0)


def _rows(lines: list[TextLine]) -> list[list[TextLine]]:
    """Lines grouped into rows by vertical overlap, top to bottom."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda ln: (-ln.y1, ln.x0)):
        if rows:
            ref = rows[-1][0]
            overlap = min(ref.y1, line.y1) - max(ref.y0, line.y0)
            if overlap >= 0.5 * min(ref.height, line.height):
                rows[-1].append(line)
                continue
        rows.append([line])
    return rows


def _ends_table(row: list[TextLine]) -> bool:
    """A totals-block row ("Subtotal 120,00", "Total HT", "Netto 19 %") or a page footer."""
    return any(classify_total_label(cell.text) is not None for cell in row if not cell.text[:1].isdigit())


def _column_of(cell: _Cell, bounds: list[tuple[_Col, float, float]]) -> Column:
    mid = (cell.x0 + cell.x1) / 2
    for col, left, right in bounds:
        if left <= mid < right:
            return col.kind
    return bounds[-1][0].kind


def _read_row(row: list[TextLine], bounds: list[tuple[_Col, float, float]]) -> LineItem:
    item = LineItem()
    words: list[_Cell] = []
    numbers: dict[Column, list[_Cell]] = {}
    for line in row:
        for cell in _cells(line):
            kind = _column_of(cell, bounds)
            if cell.value is not None and kind in NUMERIC:
                numbers.setdefault(kind, []).append(cell)
            elif (cell.value is None and kind == "unit") or (_UNIT_WORD.match(cell.text) and kind in NUMERIC):
                item.unit = cell.text
            elif kind != "pos":
                words.append(cell)
    for kind in NUMERIC:
        cells = numbers.get(kind, [])
        if kind == "vat":
            cells = [c for c in cells if c.percent or (c.value is not None and 0 <= c.value <= 30)]
        elif kind != "qty":
            cells = [c for c in cells if not c.percent]
        if cells:  # several numbers in one column: quantities come first, amounts last
            setattr(item, {"qty": "quantity"}.get(kind, kind), cells[0] if kind == "qty" else cells[-1])
    if item.vat is None:
        for cells in numbers.values():
            if pct := [c for c in cells if c.percent]:
                item.vat = pct[-1]
    by_line: dict[int, list[_Cell]] = {}
    for w in words:
        by_line.setdefault(id(w.line), []).append(w)
    for cells in by_line.values():
        line, start, end = cells[0].line, min(c.start for c in cells), max(c.end for c in cells)
        item.description.append(line.text[start:end].strip())
        if item.desc_cell is None:
            item.desc_cell = _Cell(line.text[start:end], cells[0].x0, cells[-1].x1, line, start, end)
    return item


def _finish(item: LineItem) -> bool:
    """Fill the amount from quantity x price when missing and score the row; ``False`` = not an item."""
    qty = item.quantity.value if item.quantity else None
    price = item.price.value if item.price else None
    if item.amount is None and qty is not None and price is not None:
        item.computed_amount = (qty * price).quantize(Decimal("0.01"))
    if item.net_amount is None or (item.computed_amount is None and not item.amount.money):  # type: ignore[union-attr]
        return False  # "Seite 1 / 2": a lone small integer is no line amount
    score = 0.6
    if qty is not None and price is not None and item.amount is not None:
        product = qty * price
        if abs(product - item.amount.value) <= Decimal("0.011") * max(1, abs(qty)):  # type: ignore[operator]
            score += 0.3
        else:
            score -= 0.2
    elif item.amount is not None and item.amount.money:
        score += 0.1
    item.confidence = round(min(score, 0.95), 2)
    return True


def find_line_items(layout: Layout) -> list[LineItem]:
    """Every item row of every table on every page, in reading order."""
    items: list[LineItem] = []
    for _page, lines in sorted(layout.pages.items()):
        page_right = max(ln.x1 for ln in lines)
        rows = _rows(lines)
        index = 0
        while index < len(rows):
            cols = _header_columns(sorted(rows[index], key=lambda c: c.x0))
            index += 1
            if cols is None:
                continue
            bounds = _bounds(cols, page_right)
            header_bottom = min(ln.y0 for ln in rows[index - 1])
            last_y = header_bottom
            current: LineItem | None = None
            table: list[LineItem] = []
            while index < len(rows):
                row = sorted(rows[index], key=lambda c: c.x0)
                top = max(ln.y1 for ln in row)
                pitch = max(ln.height for ln in row)
                if last_y - top > 5 * pitch or _header_columns(row) is not None:
                    break
                item = _read_row(row, bounds)
                if _ends_table(row) and item.quantity is None and item.price is None:
                    break
                index += 1
                last_y = min(ln.y0 for ln in row)
                if _finish(item):
                    table.append(item)
                    current = item
                elif (
                    current is not None
                    and item.description
                    and not any((item.quantity, item.price, item.amount))
                ):
                    current.description.extend(item.description)
            items.extend(_fold_notes(table))
    return items


def _fold_notes(table: list[LineItem]) -> list[LineItem]:
    """In a table whose items state quantities, a row without quantity or price is a note to the
    item above it ("Bestellt wurden 5 kg ...  22,00"), not an item of its own."""
    with_qty = sum(1 for it in table if it.quantity is not None)
    if with_qty * 2 < len(table):
        return table
    out: list[LineItem] = []
    for item in table:
        if out and item.quantity is None and item.price is None:
            out[-1].description.extend(item.description)
        else:
            out.append(item)
    return out


def to_lines(items: list[LineItem]) -> tuple[list[Line], dict[str, FieldInfo]]:
    """Canonical lines and their per-field provenance (``/lines/N/...`` pointers)."""
    lines: list[Line] = []
    fields: dict[str, FieldInfo] = {}
    for n, item in enumerate(items):
        name = " ".join(item.description).strip() or None
        price = item.price.value if item.price else None
        line = Line(
            id=str(n + 1),
            quantity=item.quantity.value if item.quantity else None,
            unit_code=item.unit,
            net_amount=item.net_amount,
            price=Price(net=price) if price is not None and price >= 0 else None,
            vat=LineVat(rate=item.vat.value) if item.vat and item.vat.value is not None else None,
            item=Item(name=name) if name else None,
        )
        lines.append(line)
        for pointer, cell in (
            ("item/name", item.desc_cell),
            ("quantity", item.quantity),
            ("price/net", item.price if line.price else None),
            ("net_amount", item.amount),
            ("vat/rate", item.vat),
        ):
            if cell is not None:
                raw = cell.line.text[cell.start : cell.end].strip()
                bbox = cell.line.span_bbox(cell.start, cell.end)
                fields[f"/lines/{n}/{pointer}"] = FieldInfo(
                    confidence=item.confidence, page=cell.line.page, bbox=bbox, raw=raw
                )
    return lines, fields


def line_sum_message(
    lines: list[Line], net: Decimal | None, gross: Decimal | None
) -> ValidationMessage | None:
    """A warning when the lines' amounts do not add up to the net total printed on the invoice."""
    amounts = [ln.net_amount for ln in lines if ln.net_amount is not None]
    if not amounts:
        return None
    total = sum(amounts, Decimal(0))
    tolerance = Decimal("0.01") * len(amounts)
    if net is not None and abs(total - net) <= tolerance:
        return None
    if net is None and gross is not None and abs(total - gross) <= tolerance:
        return None  # no net printed and the lines are gross amounts that add up
    against = f"the net total {net}" if net is not None else "no net total printed"
    return ValidationMessage(
        rule=RULE_LINE_SUM,
        severity="warning",
        path="/lines",
        text=f"The {len(amounts)} line amounts read from the table add up to {total}, {against}.",
    )
