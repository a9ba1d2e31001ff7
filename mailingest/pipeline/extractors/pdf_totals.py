"""Totals (net, tax, gross, amount due) from their labels, chosen so that they add up.

A page prints many amounts under total-ish labels: line totals under a "Total" column, one tax
line per VAT rate, "Gesamtbetrag der Zuschläge". Each label is classified once (what it names,
how specifically), its amounts are scored by position, and the net/tax/gross triple that adds
up wins over any single strong label, because a document rarely adds up by accident.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Literal

from mailingest.pipeline.extractors.pdf_layout import Candidate, Layout, TextLine, labels
from mailingest.pipeline.extractors.pdf_values import AmountMatch, find_amounts

TotalKind = Literal["net", "tax", "gross", "due"]
_TOTAL_EXCLUDE = labels(
    r"preis|price|prix|precio|prezzo|prijs|\bunit|einzel|rabatt|discount|remise|skonto|escompte",
    r"zuschl|abschl|allowance|\bcharges?\b|anzahlung|acompte|prepaid|\bpaid\b|bezahlt|erhalten|menge",
    r"\bqty\b|quantit|capital|kapital|\bpage\b|seite|\brate\b|satz\b",
)
_DUE_AMOUNT = labels(
    r"\b(?:amount|balance|total)\s+(?:due|payable)\b|\bdue\s+payable\b|\bto\s+pay\b|\bpayable\s+amount\b",
    r"zahlbetrag|zu\s+zahlen|offener\s+betrag|restbetrag|f[äa]lliger\s+betrag|zahlungsbetrag",
    r"\b(?:montant|net|solde|somme|reste|total)\s+[àa]\s+payer\b|\b(?:importe|total)\s+a\s+pagar\b",
    r"\bda\s+pagare\b|\bte\s+betalen\b",
)
_GROSS_STRONG = labels(
    r"\bttc\b|\bbrutto|\bgross\b|\b(?:inkl|incl|inclusive|inklusive|including)\b|\bgrand\s+total\b",
    r"\b(?:invoice|document)\s+total\b|\btotal\s+(?:invoice|amount)\b|\bamount\s+total\b",
    r"gesamtbetrag|gesamtsumme|rechnungsbetrag|rechnungssumme(?!\s*(?:ohne|netto|excl|exkl))|endbetrag",
    r"endsumme|\bmontant\s+total\b|\btotal\s+factur[ea]\b|\bimporte\s+total\b|\btotale\s+(?:fattura|documento)\b",
    r"\bimporto\s+totale\b|\btotaalbedrag\b|\bte\s+voldoen\b",
)
_NET = labels(
    r"\bnet(?:to)?\b|netto(?:betrag|summe|wert)|\bht\b|hors\s+tax|sub-?\s?tota(?:l|al)|zwischensumme",
    r"\b(?:excl|exkl|exclusive|exklusive|excluding)\b|\bohne\s+(?:ust|mwst|umsatzsteuer)|\bsans\s+tva\b",
    r"\bbase\b|basis|taxable|imponible|imponibile|bemessung",
)
_TAX = labels(  # "(?=\d)": OCR glues the rate on ("BTW9%")
    r"\bvat(?:\b|(?=\d))|\btax(?:es)?\b|\bmwst(?:\b|(?=\d))|\bust\b|umsatzsteuer|mehrwertsteuer",
    r"steuer(?:betrag|summe)?\b|\b(?:tva|iva|btw|gst|hst|igic)(?:\b|(?=\d))",
)
_GROSS_WEAK = labels(r"\btotal\b|\bsumme\b|\bgesamt\b|\btotale\b|\btotaal\b|\bimporte\b")
_PERCENT = re.compile(r"\d\s?%")


def classify_total_label(text: str) -> tuple[TotalKind, float, re.Match[str]] | None:
    """Which total a label names, how specifically (0.6..1.0), and where the label is.

    Order matters: "Total TTC" and "inkl. USt." name the gross although they contain a tax
    word; "Steuerbasisbetrag USt. 19 %" is a VAT breakdown row whose last amount is the tax.
    Sentences and price/discount/prepayment labels are not totals at all.
    """
    if len(text) > 70 or _TOTAL_EXCLUDE.search(text):
        return None
    if m := _DUE_AMOUNT.search(text):
        return "due", 1.0, m
    if m := _GROSS_STRONG.search(text):
        return "gross", 1.0, m
    tax = _TAX.search(text)
    if tax and _PERCENT.search(text):
        return "tax", 0.8, tax
    if m := _NET.search(text):
        return "net", 1.0, m
    if tax:
        return "tax", 1.0, tax
    if m := _GROSS_WEAK.search(text):
        return "gross", 0.6, m
    return None


def _money(text: str) -> list[AmountMatch]:
    return [a for a in find_amounts(text) if a.money_like]


def _overlaps(label: TextLine, other: TextLine, amount: AmountMatch) -> bool:
    left, _, right, _ = other.span_bbox(amount.start, amount.end)
    return min(label.x1, right) - max(label.x0, left) > 0


def _amounts_for_label(layout: Layout, line: TextLine, label_end: int) -> list[Candidate]:
    """Amounts a total label points at, rightmost first, with position weights applied."""
    found = [Candidate(a.value, 1.0, line, a.start, a.end) for a in _money(line.text) if a.start >= label_end]
    if not found:
        for other in layout.right_of(line):
            if classify_total_label(other.text):
                break  # the next cell is another label: its amounts are not ours
            found += [Candidate(a.value, 0.9, other, a.start, a.end, "right") for a in _money(other.text)]
        if not found:
            for other in layout.below(line, rows=2)[:2]:
                under = [a for a in _money(other.text) if _overlaps(line, other, a)]
                if under:
                    found = [Candidate(under[0].value, 0.75, other, under[0].start, under[0].end, "below")]
                    break
    return found[::-1]


def total_candidates(layout: Layout) -> dict[TotalKind, list[Candidate]]:
    """Every amount some total label points at, by the kind of total the label names."""
    cands: dict[TotalKind, list[Candidate]] = {"net": [], "tax": [], "gross": [], "due": []}
    for line in layout.lines:
        label = classify_total_label(line.text)
        if label is None:
            continue
        kind, strength, m = label
        for rank, c in enumerate(_amounts_for_label(layout, line, m.end())):
            # The rightmost amount of a row is the row's total ("Total facture 24,99 5,00 29,99").
            score = c.score * strength * (1.0 if rank == 0 else 0.5)
            cands[kind].append(Candidate(c.value, score, c.line, c.start, c.end, c.where))
    return cands


@dataclass(frozen=True)
class ChosenTotals:
    net: Candidate | None
    tax: Candidate | None
    gross: Candidate | None
    due: Candidate | None
    consistent: bool


def choose_totals(cands: dict[TotalKind, list[Candidate]]) -> ChosenTotals:
    """The net/tax/gross combination with the best evidence, where adding up counts most."""
    top = {k: sorted(v, key=lambda c: -c.score)[:6] for k, v in cands.items()}
    # An amount due can stand in for a gross that is not printed ("Due payable: 571,04").
    gross_pool = top["gross"] + [replace(c, score=c.score * 0.7) for c in top["due"]]
    best: tuple[Candidate | None, Candidate | None, Candidate | None] = (None, None, None)
    best_score, best_consistent = -1.0, False
    for combo in itertools.product([*top["net"], None], [*top["tax"], None], [*gross_pool, None]):
        net, tax, gross = combo
        consistent = (
            net is not None
            and tax is not None
            and gross is not None
            and abs(net.value + tax.value - gross.value) <= Decimal("0.01")
        )
        score = sum(c.score for c in combo if c is not None) + (1.5 if consistent else 0.0)
        if score > best_score:
            best_score, best, best_consistent = score, combo, consistent
    net, tax, gross = best
    due = max(
        top["due"],
        key=lambda c: c.score + (0.5 if gross is not None and c.value == gross.value else 0.0),
        default=None,
    )
    return ChosenTotals(net, tax, gross, due, best_consistent)
