"""Synthetic invoices for the extraction benchmark: N invoices in 5 layouts x 6 languages.

    python bench/gen_invoices.py OUT_DIR [--count 60] [--seed 1] [--scans]

Every invoice gets random vendor, buyer, dates (in the language's format), amounts (in its
notation), VAT rate and 1-15 lines, is drawn with reportlab as a text PDF and, with ``--scans``,
rasterised (pypdfium2 at 200 dpi) with noise, blur and a slight skew as a PNG "scan". Each file
has a ``<file>.truth.json`` in the corpus truth shape, so ``mailingest eval OUT_DIR`` scores it.

Layout ``E`` (``ledger``) is the held-out family: report it apart (bench/extraction.py does),
and never tune heuristics by looking at it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, ImageChops, ImageFilter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

W, H = A4
LANGS = ("en", "de", "fr", "es", "it", "nl")
LAYOUTS = ("A", "B", "C", "D", "E")
HELD_OUT = "E"
CUR = {"en": "GBP", "de": "EUR", "fr": "EUR", "es": "EUR", "it": "EUR", "nl": "EUR"}
# label sets: title, number, date, due, description, qty, price, vat, amount, net, tax, total, bill to
L = {
    "en": ("INVOICE", "Invoice No.", "Invoice Date", "Due Date", "Description", "Qty", "Unit Price", "VAT",
           "Amount", "Subtotal", "VAT", "Total", "Bill To"),
    "de": ("RECHNUNG", "Rechnungsnummer", "Rechnungsdatum", "Fällig am", "Bezeichnung", "Menge", "Einzelpreis",
           "MwSt.", "Betrag", "Nettobetrag", "MwSt.", "Gesamtbetrag", "Rechnungsempfänger"),
    "fr": ("FACTURE", "Facture N°", "Date de facture", "Échéance", "Désignation", "Qté", "Prix unitaire", "TVA",
           "Montant HT", "Total HT", "TVA", "Total TTC", "Client"),
    "es": ("FACTURA", "Factura N.º", "Fecha de factura", "Vencimiento", "Descripción", "Cantidad",
           "Precio unitario", "IVA", "Importe", "Base imponible", "IVA", "Total factura", "Cliente"),
    "it": ("FATTURA", "Fattura n.", "Data fattura", "Scadenza", "Descrizione", "Quantità", "Prezzo unitario",
           "IVA", "Importo", "Imponibile", "IVA", "Totale fattura", "Cliente"),
    "nl": ("FACTUUR", "Factuurnummer", "Factuurdatum", "Vervaldatum", "Omschrijving", "Aantal", "Prijs", "BTW",
           "Bedrag", "Subtotaal", "BTW", "Totaalbedrag", "Klant"),
}  # fmt: skip
VAT_RATES = {"en": [20, 5], "de": [19, 7], "fr": [20, 10], "es": [21, 10], "it": [22, 10], "nl": [21, 9]}
FORMS = {"en": "Ltd", "de": "GmbH", "fr": "SARL", "es": "S.L.", "it": "S.r.l.", "nl": "B.V."}
WORDS = [
    "Nord",
    "Alpha",
    "Delta",
    "Vega",
    "Orion",
    "Atlas",
    "Nova",
    "Terra",
    "Prime",
    "Solis",
    "Luma",
    "Pico",
    "Rhein",
    "Loire",
    "Ebro",
    "Po",
    "Maas",
]
TRADES = [
    "Consulting",
    "Logistics",
    "Supplies",
    "Software",
    "Print",
    "Energy",
    "Catering",
    "Metal",
    "Design",
    "Tech",
    "Bau",
    "Services",
]
ITEMS = [
    "Cable",
    "Monitor",
    "Licence",
    "Support",
    "Paper",
    "Toner",
    "Chair",
    "Desk",
    "Hours",
    "Transport",
    "Install",
    "Training",
    "Audit",
]
COUNTRY = {"en": "GB", "de": "DE", "fr": "FR", "es": "ES", "it": "IT", "nl": "NL"}


@dataclass
class Inv:
    lang: str
    layout: str
    seller: str
    buyer: str
    number: str
    issued: date
    due: date
    vat: int
    lines: list[tuple[str, int, Decimal]]

    @property
    def net(self) -> Decimal:
        return sum((q * p for _, q, p in self.lines), Decimal("0.00"))

    @property
    def tax(self) -> Decimal:
        return (self.net * self.vat / 100).quantize(Decimal("0.01"))

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax


def money(v: Decimal, lang: str) -> str:
    whole, frac = f"{abs(v):.2f}".split(".")
    groups: list[str] = []
    while whole:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    grp, dec = {"en": (",", "."), "fr": (" ", ","), "de": (".", ","), "es": (".", ","), "it": (".", ",")}.get(
        lang, (".", ",")
    )
    return ("-" if v < 0 else "") + grp.join(groups) + dec + frac


def fmt_date(d: date, lang: str, rnd: random.Random) -> str:
    if lang == "en":
        return rnd.choice([d.strftime("%d/%m/%Y"), f"{d.day} {d.strftime('%B %Y')}"])
    if lang == "de":
        return d.strftime("%d.%m.%Y")
    if lang == "nl":
        return d.strftime("%d-%m-%Y")
    return d.strftime("%d/%m/%Y")


def random_invoice(rnd: random.Random, lang: str, layout: str) -> Inv:
    seller = f"{rnd.choice(WORDS)} {rnd.choice(TRADES)} {FORMS[lang]}"
    buyer = f"{rnd.choice(WORDS)} {rnd.choice(WORDS)} {FORMS[rnd.choice(LANGS)]}"
    issued = date(2024, 1, 1) + timedelta(days=rnd.randrange(700))
    lines = [
        (
            f"{rnd.choice(ITEMS)} {rnd.choice(WORDS)}",
            rnd.randint(1, 40),
            Decimal(rnd.randrange(100, 90000)) / 100,
        )
        for _ in range(rnd.randint(1, 15))
    ]
    number = rnd.choice(["{}-{:05d}", "INV{}{:04d}", "{}/{:03d}"]).format(issued.year, rnd.randrange(1, 9999))
    return Inv(
        lang,
        layout,
        seller,
        buyer,
        number,
        issued,
        issued + timedelta(days=30),
        rnd.choice(VAT_RATES[lang]),
        lines,
    )


def draw(inv: Inv, rnd: random.Random) -> bytes:
    t = L[inv.lang]
    buf = io.BytesIO()
    c = Canvas(buf, pagesize=A4, invariant=1)
    cur = " €" if CUR[inv.lang] == "EUR" else ""
    pre = "£" if CUR[inv.lang] == "GBP" else ""
    m = lambda v: f"{pre}{money(v, inv.lang)}{cur}"  # noqa: E731
    d1, d2 = fmt_date(inv.issued, inv.lang, rnd), fmt_date(inv.due, inv.lang, rnd)
    head = [(t[1], inv.number), (t[2], d1), (t[3], d2)]
    # header block per layout
    if inv.layout == "A":  # seller top left, meta right, bill-to under seller
        c.setFont("Helvetica-Bold", 16), c.drawString(50, 790, inv.seller)
        c.setFont("Helvetica-Bold", 20), c.drawRightString(545, 790, t[0])
        c.setFont("Helvetica", 10)
        for i, (k, v) in enumerate(head):
            c.drawString(350, 750 - 14 * i, f"{k}:"), c.drawRightString(545, 750 - 14 * i, v)
        c.drawString(50, 700, f"{t[12]}:"), c.drawString(50, 686, inv.buyer)
        y = 620
    elif inv.layout == "B":  # centered title, seller in footer, meta in a row under title
        c.setFont("Helvetica-Bold", 22), c.drawCentredString(W / 2, 800, t[0])
        c.setFont("Helvetica", 9)
        for i, (k, v) in enumerate(head):
            c.drawString(50 + 170 * i, 770, k), c.drawString(50 + 170 * i, 758, v)
        c.setFont("Helvetica", 10), c.drawString(50, 720, t[12]), c.drawString(50, 706, inv.buyer)
        (
            c.setFont("Helvetica", 8),
            c.drawCentredString(W / 2, 40, f"{inv.seller} · Hauptstraße 1 · 10115 City"),
        )
        c.setFont("Helvetica-Bold", 12), c.drawString(350, 720, inv.seller)
        y = 650
    elif inv.layout == "C":  # window envelope: sender line, address, meta right
        c.setFont("Helvetica", 7), c.drawString(50, 740, f"{inv.seller} · Street 5 · 12345 Town")
        c.setFont("Helvetica", 10), c.drawString(50, 725, inv.buyer), c.drawString(50, 712, "Road 9")
        c.setFont("Helvetica-Bold", 14), c.drawString(50, 800, inv.seller)
        c.setFont("Helvetica", 10)
        for i, (k, v) in enumerate(head):
            c.drawString(360, 730 - 14 * i, f"{k}: {v}")
        c.setFont("Helvetica-Bold", 14), c.drawString(50, 650, f"{t[0]} {inv.number}")
        y = 610
    elif inv.layout == "D":  # meta in a boxed grid at top right, seller right-aligned
        c.setFont("Helvetica-Bold", 15), c.drawRightString(545, 800, inv.seller)
        c.setFont("Helvetica-Bold", 18), c.drawString(50, 800, t[0])
        c.setFont("Helvetica", 9)
        for i, (k, v) in enumerate(head):
            c.rect(300, 740 - 22 * i, 245, 22)
            c.drawString(305, 747 - 22 * i, k), c.drawRightString(540, 747 - 22 * i, v)
        c.drawString(50, 740, f"{t[12]}:"), c.drawString(50, 727, inv.buyer)
        y = 640
    else:  # E, held out: everything in one left column, table with VAT column, totals left
        c.setFont("Helvetica-Bold", 13), c.drawString(60, 805, inv.seller)
        c.setFont("Helvetica", 10), c.drawString(60, 790, t[0])
        for i, (k, v) in enumerate(head):
            c.drawString(60, 770 - 13 * i, f"{k} {v}")
        c.drawString(60, 720, f"{t[12]}: {inv.buyer}")
        y = 680
    vat_id = f"{COUNTRY[inv.lang]}{rnd.randrange(10**8, 10**9)}"
    c.setFont("Helvetica", 8), c.drawString(50, 60, f"VAT ID / USt-IdNr.: {vat_id}")
    # table
    vat_col = inv.layout in ("D", "E")
    cols = [50, 300, 380, 460, 545] if vat_col else [50, 330, 430, 545]
    heads = [t[4], t[5], t[6], t[7], t[8]] if vat_col else [t[4], t[5], t[6], t[8]]
    c.setFont("Helvetica-Bold", 9)
    for i, (x, h) in enumerate(zip(cols, heads, strict=True)):
        c.drawString(x, y, h) if i == 0 else c.drawRightString(x, y, h)
    if inv.layout in ("A", "D"):
        c.line(50, y - 4, 545, y - 4)
    c.setFont("Helvetica", 9)
    for desc, q, p in inv.lines:
        y -= 14
        vals = (
            [desc, str(q), money(p, inv.lang)]
            + ([f"{inv.vat} %"] if vat_col else [])
            + [money(q * p, inv.lang)]
        )
        for i, (x, v) in enumerate(zip(cols, vals, strict=True)):
            c.drawString(x, y, v) if i == 0 else c.drawRightString(x, y, v)
    y -= 30
    lx = 60 if inv.layout == "E" else 360
    c.setFont("Helvetica", 10)
    for label, total in ((t[9], inv.net), (f"{t[10]} {inv.vat} %", inv.tax), (t[11], inv.gross)):
        c.drawString(lx, y, label), c.drawRightString(545, y, m(total))
        y -= 15
    c.save()
    return buf.getvalue()


def scan(pdf_bytes: bytes, rnd: random.Random) -> bytes:
    pdf = pdfium.PdfDocument(pdf_bytes)
    img = pdf[0].render(scale=200 / 72, grayscale=True).to_pil().convert("L")
    pdf.close()
    img = img.rotate(rnd.uniform(-1.5, 1.5), expand=True, fillcolor=255, resample=Image.Resampling.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(rnd.uniform(0.3, 0.8)))
    img = ImageChops.add(img, Image.effect_noise(img.size, rnd.uniform(8, 16)), 1.0, -128)  # sensor grain
    out = io.BytesIO()
    img.save(out, "PNG", dpi=(200, 200))
    return out.getvalue()


def truth(inv: Inv) -> dict[str, object]:
    return {
        "number": inv.number,
        "issue_date": inv.issued.isoformat(),
        "due_date": inv.due.isoformat(),
        "currency": CUR[inv.lang],
        "seller": {"name": inv.seller},
        "buyer": {"name": inv.buyer},
        "totals": {
            "tax_exclusive": f"{inv.net:.2f}",
            "tax_total": f"{inv.tax:.2f}",
            "tax_inclusive": f"{inv.gross:.2f}",
            "amount_due": f"{inv.gross:.2f}",
        },
        "line_count": len(inv.lines),
        "source": "mailingest bench/gen_invoices.py",
        "notes": f"layout {inv.layout}{' (held out)' if inv.layout == HELD_OUT else ''}, {inv.lang}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scans", action="store_true", help="also write rasterised scans (PNG)")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    for i in range(args.count):
        lang, layout = LANGS[i % len(LANGS)], LAYOUTS[(i // len(LANGS)) % len(LAYOUTS)]
        inv = random_invoice(rnd, lang, layout)
        pdf = draw(inv, rnd)
        for sub, name, data in [("text", f"{i:04d}-{layout}-{lang}.pdf", pdf)] + (
            [("scan", f"{i:04d}-{layout}-{lang}.png", scan(pdf, rnd))] if args.scans else []
        ):
            folder = args.out / sub / ("heldout" if layout == HELD_OUT else "tuned")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            (folder / f"{name}.truth.json").write_text(json.dumps(truth(inv), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
