"""Seller and buyer names: party blocks under their headings, or a window envelope's sender line.

Names have no shape to validate, so this stays deliberately simple and says so in its scores:
a labelled block ("Verkäufer", "Bill to", "Client :") is trusted most, the return-address line
over a German/French window address next, the top line of page 1 least.
"""

from __future__ import annotations

import re
from email.utils import parseaddr

from mailingest.models import FieldInfo, Invoice, Party
from mailingest.pipeline.extractors.pdf_layout import TITLE_WORDS, Candidate, Layout, TextLine, best, labels

_I = re.IGNORECASE

_PARTY_TAIL = r"(?:\s*/\s*[\w\-]+)?\s*:?\s*"
_SELLER_LABEL = re.compile(
    r"^\s*(?:seller|supplier|vendor|sold\s+by|issuer|bill\s+from|verk[äa]ufer|lieferant|rechnungs(?:er)?steller"
    r"|leistungserbringer|auftragnehmer|absender|fournisseur|vendeur|[ée]metteur|prestataire|proveedor|emisor"
    r"|vendedor|fornitore|cedente|leverancier|verkoper|afzender)\b" + _PARTY_TAIL,
    _I,
)
_BUYER_LABEL = re.compile(
    r"^\s*(?:bill(?:ed)?\s+to|invoiced?\s+to|sold\s+to|buyer|customer|client|recipient|billing\s+address"
    r"|rechnungs(?:empf[äa]nger|adresse|anschrift)|k[äa]ufer|kunde|leistungsempf[äa]nger|auftraggeber"
    r"|factur(?:é|er)\s+[àa]|adresse\s+de\s+facturation|destinataire|acheteur|cliente|facturar\s+a"
    r"|comprador|destinatario|acquirente|committente|spett(?:\.le|abile)|klant|factuuradres|koper)(?!\w)"
    + _PARTY_TAIL,
    _I,
)
_SHIP_TO_LABEL = re.compile(
    r"^\s*(?:ship(?:ped)?\s+to|deliver(?:ed|y)?\s+(?:to|address)|lieferadresse|lieferanschrift|warenempf[äa]nger"
    r"|adresse\s+de\s+livraison|livr[ée]\s+[àa]|direcci[óo]n\s+de\s+(?:entrega|env[íi]o)|indirizzo\s+di\s+consegna"
    r"|afleveradres|leveringsadres)\b" + _PARTY_TAIL,
    _I,
)
_NAME_LABEL = re.compile(r"^\s*(?:name|firma|company|raison\s+sociale|nom|nombre|nome|naam)\s*:?\s*", _I)
_NOT_A_NAME = labels(
    r"@|www\.|https?:|\b(?:tel|fon|fax|phone|telefon|e-?mail|iban|bic|page|seite|gln|ust|vat|tva|mwst)\b",
    rf"\b(?:{TITLE_WORDS}|date|datum|total|summe|kunden-?nr|steuer|stylesheet)\b|nummer|number",
    r"^\d|\d{4,}|\b\d+[a-z]?$|^[\W_]+$",
)
_LEGAL_FORM = labels(
    r"\b(?:gmbh|ag|kg|ohg|ug|se|e\.\s?k|ltd|limited|llc|inc|corp|plc|llp|sarl|sas|sasu|eurl|sa|snc|b\.?v|n\.?v"
    r"|s\.?r\.?l|s\.?p\.?a|s\.?l|oy|ab|a/s|aps|pvt|pte|pty|bhd|sdn|gbr|e\.\s?v|s\.?a\.?s|s\.?c|kk)\b\.?",
    r"\bs/b\b|\bsp\.\s?z\s?o\.\s?o\b|\ba\.s\.",
)
_SENDER_SPLIT = re.compile(r"\s*(?:[•●·|]|\s[-–]\s)\s*")
_POSTCODE = re.compile(r"\b\d{4,5}\s+\w")


_WORD3 = re.compile(r"[^\W\d_]{3,}")


def _name_like(text: str) -> bool:
    """Could be a company or person name: letters mostly, one real word, no label or number.

    The letter share and the three-letter word keep OCR debris ("Ao <", "Js o e È") out.
    """
    t = text.strip(" ,;:-")
    dense = t.replace(" ", "")
    return (
        2 <= len(t) <= 80
        and sum(ch.isalpha() for ch in t) >= 2
        and sum(ch.isalpha() for ch in dense) >= 0.6 * len(dense)
        and _WORD3.search(t) is not None
        and ":" not in t
        and not _NOT_A_NAME.search(t)
    )


def _clean_name(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" ,;:-")


def _party_under_label(layout: Layout, line: TextLine, label_end: int, score: float) -> Candidate | None:
    """The name in a party block: after "Label:", beside it, on a "Name:" line, or first below.

    A label without a colon only heads a block; otherwise "Lieferant GmbH" would be read as
    the label "Lieferant" with the value "GmbH".
    """
    rest = line.text[label_end:]
    colon = ":" in line.text[:label_end]
    if rest.strip():
        if colon and _name_like(rest):
            return Candidate(
                _clean_name(rest), score, line, label_end + len(rest) - len(rest.lstrip()), len(line.text)
            )
        return None
    for other in layout.right_of(line)[:1] if colon else []:
        if _name_like(other.text) and not _is_party_label(other.text):
            return Candidate(_clean_name(other.text), score * 0.9, other, 0, len(other.text), "right")
    for other in layout.below(line, rows=8, aligned=True)[:10]:
        if _is_party_label(other.text):
            break  # the next block starts
        if m := _NAME_LABEL.match(other.text):
            target, start = other, m.end()
            if not other.text[start:].strip() and (right := layout.right_of(other)):
                target, start = right[0], 0
            if _name_like(target.text[start:]):
                return Candidate(
                    _clean_name(target.text[start:]), score, target, start, len(target.text), "below"
                )
            continue
        beside = layout.right_of(other)
        if other.text.rstrip().endswith(":") or (beside and beside[0].text.lstrip().startswith(":")):
            continue  # "Nummer: 549910" is a labelled detail of the block, not its name
        if _name_like(other.text):
            return Candidate(_clean_name(other.text), score * 0.9, other, 0, len(other.text), "below")
    return None


def _is_party_label(text: str) -> bool:
    """A block heading such as "Käufer/Leistungsempfänger:", not a name that starts like one."""
    m = _SELLER_LABEL.match(text) or _BUYER_LABEL.match(text) or _SHIP_TO_LABEL.match(text)
    return m is not None and not text[m.end() :].strip()


def _sender_line(layout: Layout) -> tuple[Candidate | None, Candidate | None]:
    """The return-address line of a window envelope layout ("ACME GmbH · Str. 1 · 12345 Town").

    Its first part names the seller; the first name under it is the addressee, the buyer.
    """
    for line in layout.pages.get(1, [])[:40]:
        row = layout.row(line)
        if row[0] is not line:
            continue
        parts = [p for p in _SENDER_SPLIT.split("  ".join(o.text for o in row)) if p.strip()]
        if len(parts) < 3 or not any(_POSTCODE.search(p) for p in parts[1:]) or not _name_like(parts[0]):
            continue
        name = _clean_name(parts[0])
        start = line.text.find(name)
        start = max(start, 0)  # the name may run on into the next cell of the row: clamp to this one
        seller = Candidate(name, 0.6, line, start, min(start + len(name), len(line.text)))
        buyer = None
        for other in layout.below(line, rows=3)[:3]:
            if _name_like(other.text):
                buyer = Candidate(_clean_name(other.text), 0.5, other, 0, len(other.text), "below")
                break
        return seller, buyer
    return None, None


def find_parties(layout: Layout) -> tuple[Candidate | None, Candidate | None]:
    """(seller, buyer) name candidates; the top-of-page fallback never offers the buyer as seller."""
    seller: list[Candidate] = []
    buyer: list[Candidate] = []
    for line in layout.lines:
        # Whoever goods are delivered to is usually the buyer too: a fallback when no billing block.
        for regex, out, score in (
            (_SELLER_LABEL, seller, 0.75),
            (_BUYER_LABEL, buyer, 0.75),
            (_SHIP_TO_LABEL, buyer, 0.4),
        ):
            if (m := regex.match(line.text)) and (c := _party_under_label(layout, line, m.end(), score)):
                out.append(c)
    sender, addressee = _sender_line(layout)
    seller += [sender] if sender else []
    buyer += [addressee] if addressee else []
    buyer_name = b.value if (b := best(buyer)) else None
    if not seller:
        top = [
            ln for ln in layout.pages.get(1, [])[:12] if _name_like(ln.text) and ln.text.strip() != buyer_name
        ]
        legal = [ln for ln in top if _LEGAL_FORM.search(ln.text)]
        # Letterheads print the company biggest; a clear size lead over the body text counts.
        body = sorted(ln.height for ln in layout.pages.get(1, []))
        median = body[len(body) // 2] if body else 0.0
        big = sorted((ln for ln in top if ln.height >= 1.3 * median), key=lambda ln: -ln.height)
        for pick, score in ((legal[:1], 0.45), (big[:1], 0.4), (top[:1], 0.3)):
            if pick:
                seller.append(Candidate(_clean_name(pick[0].text), score, pick[0], 0, len(pick[0].text)))
                break
    return best(seller), best(buyer)


def apply_sender_name(invoice: Invoice, from_header: str | None) -> None:
    """The mail's sender display name as weak evidence for the seller of a layout-read invoice.

    A printed name that the display name repeats is believed more. Without a printed name, a
    display name carrying a legal form ("ACME GmbH <billing@acme.example>") is taken, with a low
    confidence so that review sees it; a person's name or "Accounts" never is.
    """
    extraction = invoice.extraction
    display = parseaddr(from_header or "")[0].strip().strip('"')
    if extraction is None or not display or extraction.extractor not in ("pdf_text", "ocr"):
        return
    name = invoice.seller.name if invoice.seller else None
    info = extraction.fields.get("/seller/name")
    if name and info is not None:
        if name.casefold() in display.casefold() or display.casefold() in name.casefold():
            info.confidence = round(min(info.confidence + 0.15, 0.99), 2)
        return
    if name is None and _name_like(display) and _LEGAL_FORM.search(display):
        invoice.seller = (invoice.seller or Party()).model_copy(update={"name": _clean_name(display)})
        extraction.fields["/seller/name"] = FieldInfo(confidence=0.35, raw=from_header)
