"""Plain PDFs with a text layer → invoices: positioned text from pdfminer.six, fields by label.

The e-invoice extractor runs first and takes PDFs with embedded XML; this one reads what is
printed. Reading untrusted PDFs is where things go wrong, so this module is the edge where
every parser failure becomes a mailingest error (``EncryptedDocument``, ``MalformedDocument``,
``DocumentTooLarge``, ``UnsupportedDocument``) and where the work is bounded: a byte limit, a
page limit and a time/character budget enforced from inside pdfminer's drawing callbacks,
because a hostile page (nested form XObjects, millions of glyphs) can stall a single page.

pdfminer is pure Python and forgiving; when it cannot parse a file at all, PDFium (a C parser
that recovers damaged files much like poppler) gets a second try before the file is declared
broken. The field rules live in ``pdf_fields`` and know nothing about either library.
"""

from __future__ import annotations

import io
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pypdfium2 as pdfium
import structlog
from pdfminer.converter import PDFPageAggregator
from pdfminer.layout import LAParams, LTChar, LTContainer, LTItem, LTPage, LTTextLine
from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
from pdfminer.pdfpage import PDFPage
from pdfminer.pdfparser import PDFParser

from mailingest.documents import Document
from mailingest.errors import DocumentTooLarge, EncryptedDocument, MalformedDocument, UnsupportedDocument
from mailingest.models import Invoice, Source, SourceFile
from mailingest.pdfium import LOCK as pdfium_lock
from mailingest.pipeline.detect import Kind
from mailingest.pipeline.extractors.pdf_fields import EXTRACTOR
from mailingest.pipeline.extractors.pdf_layout import TextLine
from mailingest.pipeline.extractors.pdf_split import extract_invoices

MAX_BYTES = 50 * 1024 * 1024
MAX_PAGES = 50
TIME_BUDGET_S = 20.0
MAX_CHARS = 1_000_000
MAX_PATHS = 2_000_000

_LAPARAMS = LAParams(boxes_flow=None, all_texts=True)
"""``boxes_flow=None`` skips box ordering we do not use (3x faster, same words); ``all_texts``
lays out text drawn inside form XObjects, which some generators put whole pages into."""
_CID = re.compile(r"\(cid:\d+\)")
log = structlog.get_logger(__name__)


class _BudgetExceeded(Exception):
    """Raised from inside pdfminer's callbacks to abandon a page; never leaves this module."""


class _Budget:
    """Wall-clock time and glyph/path counts one document may spend on text extraction."""

    def __init__(self, seconds: float, max_chars: int = MAX_CHARS, max_paths: int = MAX_PATHS) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.chars_left = max_chars
        self.paths_left = max_paths

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def check_time(self) -> None:
        if self.expired():
            raise _BudgetExceeded(f"took longer than {self.seconds:g} s")

    def spend_char(self) -> None:
        self.chars_left -= 1
        if self.chars_left < 0:
            raise _BudgetExceeded("has too many characters")
        if self.chars_left % 512 == 0:
            self.check_time()

    def spend_path(self) -> None:
        self.paths_left -= 1
        if self.paths_left < 0:
            raise _BudgetExceeded("has too many drawing operations")
        if self.paths_left % 512 == 0:
            self.check_time()


class _BudgetedAggregator(PDFPageAggregator):
    """pdfminer's page aggregator that charges every glyph, path and form to a ``_Budget``."""

    def __init__(self, rsrcmgr: PDFResourceManager, budget: _Budget) -> None:
        super().__init__(rsrcmgr, laparams=_LAPARAMS)
        self.budget = budget

    def render_char(self, *args: Any, **kwargs: Any) -> float:
        self.budget.spend_char()
        return float(super().render_char(*args, **kwargs))

    def paint_path(self, *args: Any, **kwargs: Any) -> None:
        self.budget.spend_path()
        super().paint_path(*args, **kwargs)

    def begin_figure(self, *args: Any, **kwargs: Any) -> None:
        self.budget.check_time()  # nested form XObjects are the classic way to make one page explode
        super().begin_figure(*args, **kwargs)


@dataclass
class TextLayer:
    """What a PDF's text layer yielded, from which reader, and whether it was cut short (and why)."""

    lines: list[TextLine]
    pages: int
    reader: str
    encrypted: bool = False
    truncated: str | None = None
    rotated: dict[int, int] = field(default_factory=dict)
    """Pages read turned back to upright: page number -> degrees the text was turned."""

    @property
    def has_text(self) -> bool:
        return any(line.text.strip() for line in self.lines)


def _text_lines(page: LTPage) -> Iterator[LTTextLine]:
    stack: list[LTItem] = [page]
    while stack:
        item = stack.pop()
        if isinstance(item, LTTextLine):
            yield item
        elif isinstance(item, LTContainer):
            stack.extend(reversed(list(item)))


def _text_direction(page: LTPage) -> int:
    """0, 90, 180 or 270: how far most glyphs on the page are turned from upright.

    A page shown sideways, through its /Rotate entry or because its content is drawn turned,
    yields one-letter "lines" unless it is read turned back; the glyphs' own matrices say how.
    """
    counts: Counter[int] = Counter()
    stack: list[LTItem] = [page]
    while stack:
        item = stack.pop()
        if isinstance(item, LTChar):
            a, b = item.matrix[0], item.matrix[1]
            counts[round(math.degrees(math.atan2(b, a)) / 90) % 4 * 90] += 1
        elif isinstance(item, LTContainer):
            stack.extend(item)
    if not counts:
        return 0
    turn, count = counts.most_common(1)[0]
    return turn if count * 2 > sum(counts.values()) else 0


def _segments(line: LTTextLine, page: int) -> Iterator[TextLine]:
    """Cut a pdfminer line into cells where two spaces or a gap wider than the font size sit.

    Word spaces come from the glyphs' own gaps (a sixth of the font size), not from pdfminer's
    guesses, which put spaces inside kerned words.
    """
    text: list[str] = []
    xs: list[float] = []
    box = [0.0, 0.0, 0.0, 0.0]
    prev: LTChar | None = None
    spaces = 0

    def flush() -> TextLine | None:
        if not text or prev is None:
            return None
        return TextLine(page, box[0], box[1], prev.x1, box[3], "".join(text), (*xs, prev.x1))

    for item in line:
        if not isinstance(item, LTChar):
            continue  # pdfminer's virtual spaces (LTAnno) split kerned words: "Br uttosumme"
        glyph = unicodedata.normalize("NFKC", _CID.sub("", item.get_text()))
        if not glyph.strip():
            spaces += 1 if glyph else 0
            continue
        if prev is not None and (spaces >= 2 or item.x0 - prev.x1 > max(item.size, prev.size)):
            if (done := flush()) is not None:
                yield done
            text, xs, prev = [], [], None
        if prev is None:
            box = [item.x0, item.y0, item.x1, item.y1]
        else:
            if spaces or item.x0 - prev.x1 > 0.17 * item.size:
                text.append(" ")
                xs.append(prev.x1)
            box = [box[0], min(box[1], item.y0), item.x1, max(box[3], item.y1)]
        step = (item.x1 - item.x0) / len(glyph)
        for i, ch in enumerate(glyph):
            text.append(ch)
            xs.append(item.x0 + i * step)
        prev, spaces = item, 0
    if (done := flush()) is not None:
        yield done


def _read_pdfminer(data: bytes, max_pages: int, budget: _Budget) -> TextLayer:
    """Text lines of up to ``max_pages`` pages; raises pdfminer's own errors for the caller to map."""
    document = PDFDocument(PDFParser(io.BytesIO(data)), password="")
    resources = PDFResourceManager(caching=True)
    device = _BudgetedAggregator(resources, budget)
    interpreter = PDFPageInterpreter(resources, device)
    layer = TextLayer(lines=[], pages=0, reader="pdfminer", encrypted=document.encryption is not None)
    for number, page in enumerate(PDFPage.create_pages(document), start=1):
        if number > max_pages:
            layer.truncated = f"stopped after {max_pages} pages"
            break
        try:
            interpreter.process_page(page)
            if turn := _text_direction(device.get_result()):
                page.rotate = (page.rotate + turn) % 360  # read the page the way its text runs
                interpreter.process_page(page)
                layer.rotated[number] = turn
        except _BudgetExceeded as exc:
            if not layer.lines:
                raise
            layer.truncated = f"page {number} {exc}; read pages 1-{number - 1}"
            break
        layer.pages = number
        for line in _text_lines(device.get_result()):
            layer.lines.extend(_segments(line, number))
    return layer


def _read_pdfium(data: bytes, max_pages: int, budget: _Budget) -> TextLayer:
    """Text runs as PDFium sees them: coarser boxes than pdfminer, but it opens damaged files.

    PDFium keeps global state and is not thread-safe, hence the lock.
    """
    with pdfium_lock:
        return _read_pdfium_locked(data, max_pages, budget)


def _read_pdfium_locked(data: bytes, max_pages: int, budget: _Budget) -> TextLayer:
    pdf = pdfium.PdfDocument(data)
    try:
        layer = TextLayer(lines=[], pages=0, reader="pdfium")
        for index in range(min(len(pdf), max_pages)):
            if budget.expired():
                layer.truncated = f"took longer than {budget.seconds:g} s; read pages 1-{index}"
                break
            page = pdf[index]
            textpage = page.get_textpage()
            for i in range(textpage.count_rects()):
                left, bottom, right, top = textpage.get_rect(i)
                text = unicodedata.normalize("NFKC", textpage.get_text_bounded(left, bottom, right, top))
                if text.strip():
                    layer.lines.append(TextLine(index + 1, left, bottom, right, top, " ".join(text.split())))
            textpage.close()
            page.close()
            layer.pages = index + 1
        return layer
    finally:
        pdf.close()


def read_text_layer(
    data: bytes,
    label: str = "document",
    *,
    max_bytes: int = MAX_BYTES,
    max_pages: int = MAX_PAGES,
    time_budget: float = TIME_BUDGET_S,
    max_chars: int = MAX_CHARS,
) -> TextLayer:
    """The positioned text of a PDF, or the mailingest error that says why there is none."""
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"{label}: {len(data)} bytes is over the {max_bytes} byte PDF limit")
    if not data.strip():
        raise MalformedDocument(f"{label}: empty file, not a PDF")
    budget = _Budget(time_budget, max_chars)
    try:
        layer = _read_pdfminer(data, max_pages, budget)
    except (PDFPasswordIncorrect, PDFEncryptionError) as exc:
        raise EncryptedDocument(f"{label}: PDF is encrypted and needs a password") from exc
    except _BudgetExceeded as exc:
        raise DocumentTooLarge(f"{label}: the first page {exc} (text extraction budget)") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: pdfminer raises anything from KeyError to RecursionError
        layer = _fallback(data, label, max_pages, budget, exc)
    if not layer.has_text:
        if layer.encrypted:
            raise EncryptedDocument(f"{label}: PDF is encrypted and its text could not be decrypted")
        if layer.reader == "pdfminer":
            try:  # glyphs pdfminer cannot map to text are sometimes mapped by PDFium
                layer = _read_pdfium(data, max_pages, budget)
            except pdfium.PdfiumError as exc:
                if layer.pages == 0:
                    raise MalformedDocument(f"{label}: not a readable PDF (no pages found)") from exc
        if not layer.has_text:
            raise UnsupportedDocument(f"{label}: no text layer; OCR not available yet")
    if layer.truncated:
        log.warning("pdf text layer cut short", document=label, reader=layer.reader, reason=layer.truncated)
    return layer


def unlock_pdf(data: bytes, passwords: Iterable[str], label: str = "document") -> bytes:
    """``data`` when it opens without a password (also owner-password-only PDFs, and files
    PDFium cannot open at all, which the extractors report); else a decrypted copy made with the
    first of ``passwords`` that opens it, so the text, OCR and embedded-XML readers all work on
    it. Raises ``EncryptedDocument`` when none fits; no password is ever logged or put in an error.
    """
    if b"/Encrypt" not in data:  # the trailer of every encrypted PDF names its /Encrypt dictionary
        return data
    with pdfium_lock:
        try:
            pdfium.PdfDocument(data).close()
            return data
        except pdfium.PdfiumError as exc:
            if exc.err_code != pdfium.raw.FPDF_ERR_PASSWORD:
                return data
        tried = 0
        for password in passwords:
            tried += 1
            try:
                pdf = pdfium.PdfDocument(data, password=password)
            except pdfium.PdfiumError as exc:
                if exc.err_code == pdfium.raw.FPDF_ERR_PASSWORD:
                    continue
                return data
            try:
                plain = io.BytesIO()
                pdf.save(plain, flags=pdfium.raw.FPDF_REMOVE_SECURITY)
            finally:
                pdf.close()
            log.info("encrypted pdf opened with a configured password", document=label, password_number=tried)
            return plain.getvalue()
    if tried:
        raise EncryptedDocument(
            f"{label}: PDF is password-protected and none of the {tried} configured PDF passwords opened it"
        )
    raise EncryptedDocument(
        f"{label}: PDF is password-protected and needs a password; none is configured for its "
        "source (pdf_passwords)"
    )


def has_text_layer(data: bytes, max_pages: int = 10) -> bool:
    """Whether any of the first pages carries text, by PDFium's quick text dump (~2 ms a page).

    ``False`` only for a PDF PDFium opens and finds no text in (a scan): a PDF it cannot open
    counts as text so that ``read_text_layer`` reports why (encrypted, malformed).
    """
    with pdfium_lock:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            return True
        try:
            for index in range(min(len(pdf), max_pages)):
                page = pdf[index]
                textpage = page.get_textpage()
                found = bool(textpage.get_text_range().strip())
                textpage.close()
                page.close()
                if found:
                    return True
            return False
        finally:
            pdf.close()


def _fallback(data: bytes, label: str, max_pages: int, budget: _Budget, cause: Exception) -> TextLayer:
    """Second opinion from PDFium on a file pdfminer cannot parse; maps failure to our errors."""
    try:
        return _read_pdfium(data, max_pages, budget)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium.raw.FPDF_ERR_PASSWORD:
            raise EncryptedDocument(f"{label}: PDF is encrypted and needs a password") from exc
        reason = f"{type(cause).__name__}: {cause}".strip(": ")
        raise MalformedDocument(f"{label}: not a readable PDF ({reason[:200]})") from cause


class PdfTextExtractor:
    """Invoices from PDFs with a text layer (no embedded XML, no OCR)."""

    name = EXTRACTOR

    def __init__(
        self,
        *,
        max_bytes: int = MAX_BYTES,
        max_pages: int = MAX_PAGES,
        time_budget: float = TIME_BUDGET_S,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.time_budget = time_budget

    def accepts(self, doc: Document, kind: Kind) -> bool:
        """PDFs, except readable ones without any text, which are left to the OCR extractor."""
        return kind == "pdf" and has_text_layer(doc.data)

    def extract(self, doc: Document) -> list[Invoice]:
        """The invoices printed in ``doc`` (several when its pages carry different invoice numbers);
        ``[]`` for a readable PDF that is not an invoice."""
        layer = read_text_layer(
            doc.data,
            doc.label,
            max_bytes=self.max_bytes,
            max_pages=self.max_pages,
            time_budget=self.time_budget,
        )
        invoices = extract_invoices(layer.lines)
        for invoice in invoices:
            invoice.source = Source(
                file=SourceFile(
                    name=doc.filename, sha256=doc.sha256, content_type=doc.content_type, size=doc.size
                ),
                format=EXTRACTOR,
            )
        return invoices
