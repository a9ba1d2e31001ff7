"""Invoice fields from positioned text, anchored on the labels invoices print.

Every field gets scored candidates: label specificity x position (same line, next cell, cell
below) x validation (check digits, arithmetic). The best candidate wins and its score becomes
the field's confidence, so a reviewer sees which values sat under a clear label and which are
fallbacks. Totals (``pdf_totals``) and party names (``pdf_parties``) have modules of their own;
this one finds the rest and assembles the canonical ``Invoice``.

Labels cover English and German, and French, Spanish, Italian and Dutch where cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence

from mailingest.models import (
    CreditTransfer,
    Extraction,
    FieldInfo,
    Invoice,
    Party,
    Payment,
    Totals,
    Validation,
)
from mailingest.pipeline.extractors.pdf_layout import (
    SEPARATORS,
    TITLE_WORDS,
    Candidate,
    Finder,
    Layout,
    TextLine,
    best,
    labels,
)
from mailingest.pipeline.extractors.pdf_lines import find_line_items, line_sum_message, to_lines
from mailingest.pipeline.extractors.pdf_parties import find_parties
from mailingest.pipeline.extractors.pdf_totals import ChosenTotals, choose_totals, total_candidates
from mailingest.pipeline.extractors.pdf_values import (
    CURRENCY_RE,
    DateOrder,
    currency_code,
    find_amounts,
    find_bics,
    find_dates,
    find_ibans,
    find_vat_ids,
    slash_date_order,
)
from mailingest.pipeline.extractors.templates import apply_templates

EXTRACTOR = "pdf_text"
KEY_FIELDS = ("/number", "/issue_date", "/currency", "/totals/amount_due", "/seller/name")
"""Fields whose mean confidence is the invoice's confidence; a missing one counts as zero."""

_I = re.IGNORECASE


# ------------------------------------------------------------------------------- invoice number

_NUMBER_STRONG = labels(
    r"\binvoice\s*(?:no\b\.?|number|num\b\.?|nr\b\.?|#|n°|id\b)",
    r"\binv\.?\s*(?:no\b\.?|#)",
    r"\b(?:bill|credit\s*note)\s*(?:no\b\.?|number|#)",
    r"\b\w*rechnungs?[\s-]*(?:nummer|nr\b\.?|no\b\.?|#)",
    r"\b(?:beleg|gutschrifts?)[\s-]*(?:nummer|nr\b\.?)",
    r"\b(?:facture|avoir)\s*(?:n(?:\.?\s?[°º]|\.o\b)|no\b\.?|num[ée]ro|#)",
    r"\bn(?:\.?[°º]|o\b\.?|um[ée]ro)\s*(?:de\s+)?(?:la\s+)?(?:facture|factura|fattura|avoir)",
    r"\bfactuur\s*(?:nummer|nr\b\.?|no\b\.?)",
    r"\bn[úu]mero\s+de\s+factura",
    r"\bfactura\s*(?:n(?:\.?\s?[°º]|\.o\b)|no\b\.?|núm\b\.?|#)",
    r"\bfattura\s*(?:n(?:\.?\s?[°º]|\.o\b)|n\b\.?|nr\b\.?|numero)",
    r"\bnumero\s+(?:di\s+|della\s+)?fattura",
)
_TITLE = r"invoice|\w*rechnung|gutschrift|facture|avoir|factuur|factura|fattura|credit\s*note"
_NUMBER_TITLE = labels(rf"\b(?:{TITLE_WORDS})\b")
_NUMBER_BARE = re.compile(r"^\s*(?:nr\.?|no\.|n\.?[°º]|n\.o\b|#)(?=[\s\d:])", _I)
_CREDIT_NOTE = labels(
    r"\bcredit\s*note\b|\bgutschrift\b|\brechnungskorrektur\b|\bavoir\b|\bnota\s+de\s+cr[ée]dito\b",
    r"\bcreditnota\b|\bnota\s+di\s+credito\b|\bfactura\s+rectificativa\b",
)
_ID_GAP = re.compile(
    r"[\s:#=.\-–]*(?:(?:n(?:\.?\s?[°º]|\.o\b)|no\.|nr\.?|num(?:ber|[ée]ro)?\.?|nummer)\s*[:#]?\s*)?#?\s*", _I
)
_ID_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9/_.\-]*[A-Za-z0-9])?")


def find_identifier(text: str, offset: int) -> list[tuple[str, int, int]]:
    """The document-number-like token at ``offset`` (after "No.", "#", ":"); it needs a digit."""
    prefix = _ID_GAP.match(text, offset)
    m = _ID_TOKEN.match(text, prefix.end() if prefix else offset)
    if not m or not any(ch.isdigit() for ch in m.group(0)) or len(m.group(0)) > 40:
        return []
    if find_dates(m.group(0)) or re.fullmatch(r"\d+[.,]\d\d", m.group(0)):
        return []
    return [(m.group(0), m.start(), m.end())]


def number_candidates(layout: Layout) -> Iterator[Candidate]:
    """Per line, the number under its most specific label: "Invoice No", "Rechnung", bare "Nr."."""
    passes = ((_NUMBER_STRONG, 0.9, True), (_NUMBER_TITLE, 0.7, False), (_NUMBER_BARE, 0.45, False))
    for line in layout.lines:
        weight = (1.0 if line.page == 1 else 0.9) * (1.0 if len(line.text) <= 60 else 0.8)
        for regex, strength, neighbours in passes:
            hits = (
                layout.lookup(line, m.end(), find_identifier, gap=_ID_GAP, neighbours=neighbours)
                for m in regex.finditer(line.text)
            )
            hit = next((h for h in hits if h is not None), None)
            if hit is None:
                continue
            if regex is _NUMBER_BARE and (left := layout.left_of(line)) and _NUMBER_TITLE.search(left.text):
                strength = 0.85  # "Handelsrechnung | Nr. 471113": the title sits in the cell to the left
            yield Candidate.of(hit, strength * weight)
            break


# -------------------------------------------------------------------------------------- dates

_ISSUE_STRONG = labels(
    r"\b(?:invoice|billing|bill|document|issue|tax\s*point)\s*date\b",
    r"\bdate\s+(?:of\s+)?(?:invoice|issue)\b|\bdate\s+issued\b",
    r"\b(?:rechnungs?|beleg|ausstellungs)[\s-]*datum\b",
    r"\bdate\s+(?:de\s+)?(?:la\s+)?(?:facture|facturation|d'?[ée]mission)\b",
    r"\bfecha\s+(?:de\s+)?(?:la\s+)?(?:factura|emisi[oó]n|expedici[oó]n)\b",
    r"\bdata\s+(?:della\s+)?(?:fattura|emissione)\b|\bfactuurdatum\b|\bdatum\s+factuur\b",
)
_ISSUE_WEAK = labels(r"\b(?:date|datum|data|fecha|dated|issued(?:\s+(?:at|on))?)\b")
_ISSUE_EXCLUDE = labels(
    r"liefer|leistung|deliver|ship|order|bestell|auftrag|vertrag|contract|livraison|commande|pedido",
    r"\bdue\b|f[äa]llig|[ée]ch[ée]ance|limite|vencim|scadenza|verval|zahlbar|payable|payment|paiement",
    r"zahlung|pago|period|zeitraum|birth|geburt|valid|g[üu]ltig|print|druck|\bfrom\b|\buntil\b|\bbis\b",
)
_DUE = labels(
    r"\bdue\s*(?:date|on|by)?\b|\bdate\s+due\b|\bpay(?:ment|able)?\s+(?:by|before|until)\b",
    r"\bremit\s+(?:by|until|before)\b|\bf[äa]llig(?:keit)?(?:s?datum)?(?:\s+am)?\b|\bzahlungsziel\b",
    r"\bzahlbar\b(?:(?!skonto|rabatt)[^.]){0,40}?\b(?:bis(?:\s+zum)?|sp[äa]testens(?:\s+am)?)",
    r"\b[üu]berweisen\s+sie\b[^.]{0,30}?\bbis(?:\s+zum)?",
    r"\b(?:date\s+d'?)?[ée]ch[ée]ance\b|\bdate\s+limite(?:\s+de\s+(?:paiement|r[èe]glement))?\b",
    r"\b[àa]\s+(?:payer|r[ée]gler)\s+avant(?:\s+le)?\b|\b(?:fecha\s+de\s+)?vencimiento\b",
    r"\b(?:data\s+(?:di\s+)?)?scadenza\b|\bvervaldatum\b|\buiterste\s+betaaldatum\b",
)
_DATE_GAP = re.compile(r"[\s:.,\-–]*(?:(?:le|du|am|on|the|den|zum|el|il|op)\s*:?\s+)?", _I)
_AFTER_NUMBER = re.compile(
    r"\s*[,;]?\s*(?:vom|von|du|of|dated|issued(?:\s+(?:at|on))?|from|del|van|le|datum|date)\b\s*:?\s*", _I
)


def _date_finder(order: DateOrder) -> Finder[str]:
    def find(text: str, offset: int) -> list[tuple[str, int, int]]:
        return [(d.iso, d.start, d.end) for d in find_dates(text, order) if d.start >= offset][:1]

    return find


def _date_after_number(layout: Layout, number: Candidate, order: DateOrder) -> Candidate | None:
    """The date in "Rechnung Nr. 471113 vom 13.06.2018", possibly in the next cell."""
    line = number.line
    lead = _AFTER_NUMBER.match(line.text, number.end)
    if lead is None:
        return None
    dates = [d for d in find_dates(line.text, order) if d.start == lead.end()]
    if dates:
        return Candidate(dates[0].iso, 0.85, line, dates[0].start, dates[0].end)
    if line.text[lead.end() :].strip():
        return None
    for other in layout.right_of(line)[:1]:
        dates = [d for d in find_dates(other.text, order) if not other.text[: d.start].strip()]
        if dates:
            return Candidate(dates[0].iso, 0.8, other, dates[0].start, dates[0].end, "right")
    return None


def _date_candidates(
    layout: Layout, order: DateOrder, number: Candidate | None
) -> tuple[list[Candidate], list[Candidate]]:
    find = _date_finder(order)
    issue: list[Candidate] = []
    due: list[Candidate] = []
    for line in layout.lines:
        weight = 1.0 if len(line.text) <= 60 else 0.8
        labelled: list[tuple[re.Pattern[str], list[Candidate], float]] = [
            (_DUE, due, 0.85),
            (_ISSUE_STRONG, issue, 0.9),
        ]
        if not _ISSUE_EXCLUDE.search(line.text) and not _ISSUE_STRONG.search(line.text):
            labelled.append((_ISSUE_WEAK, issue, 0.6))
        for regex, out, strength in labelled:
            hits = (layout.lookup(line, m.end(), find, gap=_DATE_GAP) for m in regex.finditer(line.text))
            hit = next((h for h in hits if h is not None), None)
            if hit is not None:
                out.append(Candidate.of(hit, strength * weight))
    if number is not None and (after := _date_after_number(layout, number, order)) is not None:
        issue.append(after)
    if not issue:
        # Many letterheads print the date alone near the top; take it, but only as a fallback.
        for line in layout.pages.get(1, [])[:15]:
            dates = find_dates(line.text, order)
            if dates and not _ISSUE_EXCLUDE.search(line.text):
                issue.append(Candidate(dates[0].iso, 0.3, line, dates[0].start, dates[0].end))
                break
    return issue, due


def _date_order(layout: Layout) -> DateOrder:
    """Slash dates are read day first unless the document shows otherwise or looks American."""
    texts = [ln.text for ln in layout.lines]
    if order := slash_date_order(texts):
        return order
    joined = " ".join(texts)
    dollars = "$" in joined or "USD" in joined
    return "MDY" if dollars and "€" not in joined and re.search(r"\binvoice\b", joined, _I) else "DMY"


# ------------------------------------------------------------------------- currency and ids

_CURRENCY_LABEL = labels(
    r"\b(?:\w*w[äa]hrung|currency|devise|moneda|valuta|divisa|munt)\b",
    r"\b(?:betr[äa]ge|amounts|montants|importes|importi|bedragen)\s+(?:in|en)\b",
)


def _find_currency(text: str, offset: int) -> list[tuple[str, int, int]]:
    m = CURRENCY_RE.search(text, offset)
    code = currency_code(m.group(0)) if m else None
    return [(code, m.start(), m.end())] if m and code else []


def _currency(layout: Layout, totals: ChosenTotals) -> Candidate | None:
    for line in layout.lines:
        for m in _CURRENCY_LABEL.finditer(line.text):
            if hit := layout.lookup(line, m.end(), _find_currency):
                return Candidate.of(hit, 0.95)
    for total in (totals.due, totals.gross, totals.net):
        if total is not None:
            for a in find_amounts(total.line.text):
                if a.start == total.start and a.currency:
                    return Candidate(a.currency, 0.85, total.line, a.start, a.end)
    counts: Counter[str] = Counter()
    first: dict[str, Candidate] = {}
    for line in layout.lines:
        for m in CURRENCY_RE.finditer(line.text):
            if code := currency_code(m.group(0)):
                counts[code] += 1
                first.setdefault(code, Candidate(code, 0.55, line, m.start(), m.end()))
    return first[counts.most_common(1)[0][0]] if counts else None


_VAT_LABEL = labels(
    r"\bvat\b|\bust\b|mwst|umsatzsteuer|\btva\b|\biva\b|\bbtw\b|\buid\b|\btax\b|steuer|\bnif\b|\bcif\b|p\.?\s?iva"
)
_BUYER_WORDS = labels(
    r"client|customer|kunde|buyer|k[äa]ufer|acheteur|cliente|klant|destinataire|bill\s+to|acquirente|afnemer"
)
_IBAN_LABEL = labels(r"iban|konto|account|compte|\brib\b|cuenta|conto|rekening")
_BIC_LABEL = labels(r"\bbic\b|swift")


def _context(layout: Layout, line: TextLine, start: int) -> str:
    """Text a value sits after: its own line up to it, or the cell to its left ("IBAN | : DE..")."""
    before = line.text[:start]
    if not before.strip(SEPARATORS) and (left := layout.left_of(line)) is not None:
        before = left.text + before
    return before[-40:]


def _vat_ids(layout: Layout) -> tuple[Candidate | None, Candidate | None]:
    """Seller and buyer VAT ids: buyer ones are those printed after a customer label."""
    seller: list[Candidate] = []
    buyer: list[Candidate] = []
    for line in layout.lines:
        ibans = find_ibans(line.text)
        for m in find_vat_ids(line.text):
            if any(i.start <= m.start < i.end for i in ibans):
                continue  # "DE89 3704 ..." starts like a German VAT id and sometimes even validates
            context = _context(layout, line, m.start)
            labelled = bool(_VAT_LABEL.search(context))
            if not (m.valid or labelled):
                continue
            score = 0.5 + (0.35 if m.valid else 0.0) + (0.1 if labelled else 0.0)
            target = buyer if _BUYER_WORDS.search(context) else seller
            target.append(Candidate(m.value, score, line, m.start, m.end))
    return best(seller), best(buyer)


def _iban(layout: Layout) -> Candidate | None:
    cands = []
    for line in layout.lines:
        for m in find_ibans(line.text):
            labelled = bool(_IBAN_LABEL.search(_context(layout, line, m.start)))
            if m.valid or labelled:
                score = 0.55 + (0.35 if m.valid else 0.0) + (0.05 if labelled else 0.0)
                cands.append(Candidate(m.value, score, line, m.start, m.end))
    return best(cands)


def _bic(layout: Layout) -> Candidate | None:
    for line in layout.lines:
        for m in find_bics(line.text):
            if _BIC_LABEL.search(_context(layout, line, m.start)[-25:]):
                return Candidate(m.value, 0.85, line, m.start, m.end)
    return None


_PO_LABEL = labels(
    r"\bpurchase\s+order(?:\s+(?:no\b\.?|number|#))?|\bp\.?\s?o\.?\s*(?:no\b\.?|number|#)|^\s*po\b",
    r"\byour\s+order(?:\s+(?:no\b\.?|number|#))?|\border\s+reference\b",
    r"\bbestell(?:nummer|ung|-nr\.?|nr\.?)\b|\bihre\s+bestellung\b|\bauftragsnummer\b",
    r"\b(?:bon|n°|num[ée]ro)\s+de\s+commande\b|\bvotre\s+commande\b",
    r"\b(?:n[úu]mero\s+de\s+)?pedido\b|\b(?:numero\s+)?ordine\b|\bbestelnummer\b|\binkoopordernummer\b",
)


def _purchase_order(layout: Layout) -> Candidate | None:
    for line in layout.lines:
        for m in _PO_LABEL.finditer(line.text):
            if hit := layout.lookup(line, m.end(), find_identifier, gap=_ID_GAP):
                return Candidate.of(hit, 0.8)
    return None


# ------------------------------------------------------------------------------------ assembly


def _info(c: Candidate, confidence: float | None = None) -> FieldInfo:
    score = c.score if confidence is None else confidence
    return FieldInfo(confidence=round(min(score, 0.99), 2), page=c.line.page, bbox=c.bbox, raw=c.raw)


def _is_credit_note(layout: Layout, number: Candidate | None) -> bool:
    """Titled as a credit note: next to its number ("Avoir AV-12") or as a short heading."""
    if number is not None and _CREDIT_NOTE.search(number.line.text[: number.start]):
        return True
    return any(
        len(ln.text.strip()) <= 30 and _CREDIT_NOTE.match(ln.text.strip())
        for ln in layout.pages.get(1, [])[:20]
    )


def extract_invoice(lines: Sequence[TextLine]) -> Invoice | None:
    """The invoice printed in ``lines``, or ``None`` when nothing looks like one.

    "Looks like one" means an invoice number or a total was found: terms and conditions or a
    delivery note yield ``None`` rather than an empty invoice. A matching invoice2data template
    (``[extraction] templates_dir``) then overrides the fields it yields (``templates``).
    """
    return apply_templates(_read_invoice(lines), lines, KEY_FIELDS)


def _read_invoice(lines: Sequence[TextLine]) -> Invoice | None:
    """``extract_invoice`` by the label heuristics alone."""
    layout = Layout(lines)
    order = _date_order(layout)
    number = best(list(number_candidates(layout)))
    totals = choose_totals(total_candidates(layout))
    if number is None and totals.gross is None and totals.due is None:
        return None
    fields: dict[str, FieldInfo] = {}
    bonus = 0.1 if totals.consistent else 0.0
    for pointer, cand in (
        ("/totals/tax_exclusive", totals.net),
        ("/totals/tax_total", totals.tax),
        ("/totals/tax_inclusive", totals.gross),
    ):
        if cand is not None:
            fields[pointer] = _info(cand, 0.5 + 0.35 * cand.score + bonus)
    due = totals.due
    if due is not None:
        fields["/totals/amount_due"] = _info(due, 0.5 + 0.35 * due.score + bonus)
    elif totals.gross is not None:
        # Without a prepayment line the amount due is the gross; say so with a lower confidence.
        due = totals.gross
        fields["/totals/amount_due"] = _info(due, (0.5 + 0.35 * due.score + bonus) * 0.8)

    issue_cands, due_cands = _date_candidates(layout, order, number)
    issue = best(issue_cands)
    due_date = best([c for c in due_cands if issue is None or c.value >= issue.value])
    currency = _currency(layout, totals)
    seller_vat, buyer_vat = _vat_ids(layout)
    iban, bic = _iban(layout), _bic(layout)
    seller, buyer = find_parties(layout)
    po = _purchase_order(layout)
    simple = {
        "/number": number,
        "/issue_date": issue,
        "/due_date": due_date,
        "/currency": currency,
        "/purchase_order": po,
        "/seller/name": seller,
        "/seller/vat_id": seller_vat,
        "/buyer/name": buyer,
        "/buyer/vat_id": buyer_vat,
        "/payment/credit_transfers/0/iban": iban,
        "/payment/credit_transfers/0/bic": bic,
    }
    fields.update({pointer: _info(c) for pointer, c in simple.items() if c is not None})

    def value(c: Candidate | None) -> str | None:
        return None if c is None else str(c.value)

    invoice = Invoice(
        type="credit_note" if _is_credit_note(layout, number) else "invoice",
        number=value(number),
        issue_date=value(issue),
        due_date=value(due_date),
        currency=value(currency),
        purchase_order=value(po),
        seller=Party(name=value(seller), vat_id=value(seller_vat)) if seller or seller_vat else None,
        buyer=Party(name=value(buyer), vat_id=value(buyer_vat)) if buyer or buyer_vat else None,
        payment=Payment(credit_transfers=[CreditTransfer(iban=value(iban), bic=value(bic))])
        if iban or bic
        else None,
        totals=Totals(
            tax_exclusive=totals.net.value if totals.net else None,
            tax_total=totals.tax.value if totals.tax else None,
            tax_inclusive=totals.gross.value if totals.gross else None,
            amount_due=due.value if due else None,
        ),
    )
    items, line_fields = to_lines(find_line_items(layout))
    if items:
        invoice.lines = items
        fields.update(line_fields)
        if (
            message := line_sum_message(items, invoice.totals.tax_exclusive, invoice.totals.tax_inclusive)
        ) is not None:
            invoice.validation = Validation(messages=[message])
    confidence = sum(fields[k].confidence if k in fields else 0.0 for k in KEY_FIELDS) / len(KEY_FIELDS)
    invoice.extraction = Extraction(extractor=EXTRACTOR, confidence=round(confidence, 2), fields=fields)
    return invoice
