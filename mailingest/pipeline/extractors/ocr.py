"""Scans and photos → invoices: render, deskew, OCR with Tesseract, then the PDF field rules.

Images attached directly (PNG, JPEG, TIFF including multi-page, GIF, BMP) and PDFs without a
text layer (``pdf_text.has_text_layer``) end up here. Tesseract's word boxes are grouped into
``TextLine``s in PDF points with the origin bottom left, exactly what ``pdf_text`` produces,
so ``pdf_fields.extract_invoice`` applies the same label heuristics to both; only the field
confidences are scaled down by how sure Tesseract was of the words they came from.

Tesseract runs as a subprocess (pytesseract), which gives a hard timeout per page and keeps a
crashing OCR engine out of the daemon. Untrusted images are bounded before they are decoded:
a byte limit, a pixel limit (decompression bombs declare huge sizes in a tiny file), a page
limit and a wall-clock budget per document.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import pillow_heif
import pypdfium2 as pdfium
import pytesseract
import structlog
from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageSequence, UnidentifiedImageError

from mailingest.documents import Document
from mailingest.errors import DocumentTooLarge, MalformedDocument, UnsupportedDocument
from mailingest.models import Invoice, Source, SourceFile
from mailingest.pdfium import LOCK as pdfium_lock
from mailingest.pipeline.detect import Kind
from mailingest.pipeline.extractors.pdf_fields import KEY_FIELDS
from mailingest.pipeline.extractors.pdf_layout import TextLine
from mailingest.pipeline.extractors.pdf_split import extract_invoices
from mailingest.pipeline.extractors.pdf_text import has_text_layer

EXTRACTOR = "ocr"
MAX_BYTES = 50 * 1024 * 1024
MAX_PAGES = 10
MAX_PIXELS = 50_000_000
TIME_BUDGET_S = 30.0
RENDER_DPI = 300
ASSUMED_DPI = 300
"""Images rarely state a true resolution (72 is a default, not a measurement); scans are ~300."""
UPSCALE_BELOW_PX = 1000
"""Narrower images (receipt photos, thumbnails) are enlarged 2x: Tesseract wants ~20 px letters."""
WANTED_LANGUAGES = ("eng", "deu", "fra", "spa", "ita", "nld")
RULE_MIN_IN = 0.8
"""Dark runs at least this long (inches) may be ruling lines (if also thin); words are never
solid over that length, and the stems of big letters are shorter."""
RULE_MAX_THICK_IN = 0.03
"""Ruling lines are thinner than this (inches); a dark run with dark further out is lettering."""
RULE_DARK = 90
"""Grey level under which a squeezed run is a line (0 black .. 255 white)."""
MAX_SKEW_DEG = 5.0
SKEW_STEP_DEG = 0.5

LOW_CONFIDENCE = 0.7
"""Below this mean word confidence a page is checked for being upside down or sideways (OSD).
Upright pages score 0.85-0.95 here (receipts too), sideways or upside-down ones about 0.55."""
OSD_MAX_PX = 1400
"""OSD reads a page reduced to this size: as reliable on A4 at 300 dpi, and faster."""

OCR_LANGUAGES: ContextVar[str | None] = ContextVar("ocr_languages", default=None)
"""Tesseract languages for the document being analysed (a mailbox's ``ocr_languages``), set by
``analyse``; ``None`` = the extractor's own or every installed wanted language."""

pillow_heif.register_heif_opener()  # HEIC/HEIF phone photos open like any other image
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, also for code that bypasses ours
# Debian's Tesseract uses OpenMP, whose spinning threads made one A4 page take 5.6 s instead of
# 1.3 s here (2 cores); documents are OCRed in parallel by the pipeline, not threads in one page.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")
log = structlog.get_logger(__name__)


@functools.cache
def installed_languages() -> frozenset[str]:
    """Languages ``tesseract --list-langs`` reports, asked once per process; empty if no Tesseract."""
    try:
        return frozenset(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractNotFoundError, pytesseract.TesseractError):
        return frozenset()


def usable_languages(languages: str | None) -> str:
    """``languages`` ("deu+eng") cut down to what is installed; the default when nothing is left."""
    if not languages:
        return default_languages()
    installed = installed_languages()
    found = [lang for lang in languages.split("+") if lang and (not installed or lang in installed)]
    if len(found) < len([lang for lang in languages.split("+") if lang]):
        log.warning("ocr languages not installed", wanted=languages, using="+".join(found) or "default")
    return "+".join(found) if found else default_languages()


def default_languages() -> str:
    """``eng+deu+...``: the wanted languages that are installed (``eng`` if none is known)."""
    found = [lang for lang in WANTED_LANGUAGES if lang in installed_languages()]
    return "+".join(found or ["eng"])


@dataclass(frozen=True)
class _Page:
    """One image to OCR and the resolution that turns its pixels into points."""

    number: int
    image: Image.Image
    dpi: float


@dataclass(frozen=True)
class _OcrLine:
    line: TextLine
    confidence: float  # Tesseract's mean word confidence, 0..1


class _Deadline:
    def __init__(self, seconds: float, label: str) -> None:
        self.seconds = seconds
        self.label = label
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def exceeded(self) -> DocumentTooLarge:
        return DocumentTooLarge(f"{self.label}: OCR took longer than {self.seconds:g} s")


def _check_pixels(width: int, height: int, label: str) -> None:
    if width * height > MAX_PIXELS:
        raise DocumentTooLarge(
            f"{label}: image of {width}x{height} pixels is over the {MAX_PIXELS // 1_000_000} MP limit"
        )


def _image_pages(data: bytes, label: str) -> Iterator[_Page]:
    """Decoded frames of an image file (every page of a TIFF, the first frame of anything else).

    The size is checked from the header, before any pixel is decoded.
    """
    try:
        image = Image.open(io.BytesIO(data))
        frames = ImageSequence.Iterator(image) if image.format == "TIFF" else iter([image])
        for number, frame in enumerate(frames, start=1):
            if number > MAX_PAGES:
                log.warning("ocr stopped early", document=label, reason=f"more than {MAX_PAGES} pages")
                return
            _check_pixels(frame.width, frame.height, label)
            dpi = frame.info.get("dpi", (0, 0))[0]
            upright = ImageOps.exif_transpose(frame) if number == 1 else frame  # phone photos: EXIF turn
            yield _Page(number, upright.convert("L"), float(dpi) if 150 <= dpi <= 1200 else ASSUMED_DPI)
    except Image.DecompressionBombError as exc:
        raise DocumentTooLarge(f"{label}: image refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise MalformedDocument(f"{label}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated data as OSError, bad PNG chunks as SyntaxError, bad headers as ValueError.
        raise MalformedDocument(f"{label}: broken image ({type(exc).__name__}: {exc})") from exc


def _pdf_pages(data: bytes, label: str, deadline: _Deadline) -> Iterator[_Page]:
    """Pages rendered by PDFium at 300 dpi (less for pages so big they would pass the pixel limit).

    PDFium is not thread-safe: every call into it holds ``pdf_text``'s lock, but the lock is let
    go between pages so that OCR, the slow part, does not block other PDF readers.
    """
    with pdfium_lock:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise MalformedDocument(f"{label}: PDF cannot be rendered ({exc})") from exc
        count = len(pdf)
    try:
        for index in range(min(count, MAX_PAGES)):
            if deadline.remaining() <= 0:
                raise deadline.exceeded()
            with pdfium_lock:
                page = pdf[index]
                width, height = page.get_size()
                scale = min(RENDER_DPI / 72, math.sqrt(MAX_PIXELS / max(width * height, 1.0)))
                image = page.render(scale=scale, grayscale=True).to_pil()
                page.close()
            yield _Page(index + 1, image.convert("L"), scale * 72)
        if count > MAX_PAGES:
            log.warning("ocr stopped early", document=label, reason=f"more than {MAX_PAGES} pages")
    finally:
        with pdfium_lock:
            pdf.close()


def _row_profile_score(ink: Image.Image) -> float:
    """Variance of the row sums: text lines aligned with the rows give sharp peaks and gaps."""
    rows = ink.resize((1, ink.height), Image.Resampling.BOX).tobytes()  # one grey byte per row
    mean = sum(rows) / len(rows)
    return sum((r - mean) ** 2 for r in rows)


def _deskew(image: Image.Image) -> Image.Image:
    """Straighten a scan tilted by up to 5° (projection-profile search on a thumbnail, ~50 ms).

    Tesseract copes with a degree or so, but a tilted page makes its lines break apart and the
    word boxes slant across rows; quarter turns are not handled.
    """
    small = image.copy()
    small.thumbnail((800, 800))
    ink = small.point(lambda v: 255 if v < 128 else 0)
    best_angle, best_score = 0.0, _row_profile_score(ink)
    steps = int(MAX_SKEW_DEG / SKEW_STEP_DEG)
    for step in range(-steps, steps + 1):
        angle = step * SKEW_STEP_DEG
        if angle == 0:
            continue
        score = _row_profile_score(ink.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0))
        if score > best_score * 1.02:  # a clear win only; noise should not rotate a straight page
            best_angle, best_score = angle, score
    if best_angle == 0:
        return image
    return image.rotate(best_angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)


def _remove_rules(image: Image.Image, dpi: float) -> Image.Image:
    """White out long ruling lines (table grids, boxes round a field), which can make Tesseract
    skip the text inside them. Only used for a second pass: on pages where the first reading was
    fine, remnants of slanted rules read as stray letters ("x Au bon moulin").

    Squeezing the page along a direction averages runs of ``RULE_MIN_IN`` inches: a ruling line
    stays dark, text (letters with gaps) turns light. Stretched back, the dark parts are the
    mask painted white. Pillow resizes only, ~30 ms a page.
    """
    run = max(int(RULE_MIN_IN * dpi), 8)
    thin = max(int(RULE_MAX_THICK_IN * dpi), 2)
    w, h = image.size
    if w < run * 2 or h < run * 2:
        return image
    mask = Image.new("L", image.size, 0)
    for size, dx, dy in (((max(w // run, 1), h), 0, thin), ((w, max(h // run, 1)), thin, 0)):
        squeezed = image.resize(size, Image.Resampling.BOX)
        dark = squeezed.point(lambda v: 255 if v < RULE_DARK else 0)
        # A rule is thin: light again ``thin`` pixels to either side. Bold letters are not.
        beside = ImageChops.lighter(ImageChops.offset(dark, dx, dy), ImageChops.offset(dark, -dx, -dy))
        line = ImageChops.subtract(dark, beside)
        mask = ImageChops.lighter(mask, line.resize(image.size, Image.Resampling.NEAREST))
    if not mask.getbbox():
        return image
    return ImageChops.lighter(image, mask.filter(ImageFilter.MaxFilter(3)))


def _prepare(page: _Page, rules: bool = False) -> _Page:
    image, dpi = page.image, page.dpi
    if image.width < UPSCALE_BELOW_PX:
        image = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
        dpi *= 2
    image = _deskew(image)
    return _Page(page.number, _remove_rules(image, dpi) if rules else image, dpi)


def _ocr_words(page: _Page, languages: str, deadline: _Deadline, label: str) -> dict[str, list[str]]:
    remaining = deadline.remaining()
    if remaining <= 0:
        raise deadline.exceeded()
    try:
        data: dict[str, list[str]] = pytesseract.image_to_data(
            page.image, lang=languages, output_type=pytesseract.Output.DICT, timeout=remaining
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise UnsupportedDocument(f"{label}: OCR needs Tesseract, which is not installed") from exc
    except pytesseract.TesseractError as exc:
        raise MalformedDocument(f"{label}: Tesseract failed on page {page.number}: {exc}") from exc
    except RuntimeError as exc:  # pytesseract's only signal for its timeout
        if "timeout" in str(exc).lower():
            raise deadline.exceeded() from exc
        raise
    return data


_OSD_ROTATE = re.compile(r"Rotate:\s*(\d+)")


def _osd_rotation(page: _Page, deadline: _Deadline) -> int:
    """Degrees to turn ``page`` clockwise to make it upright, by Tesseract's OSD (0 if unsure)."""
    remaining = deadline.remaining()
    if remaining <= 0 or "osd" not in installed_languages():
        return 0
    small = page.image.copy()
    small.thumbnail((OSD_MAX_PX, OSD_MAX_PX))
    try:
        osd = pytesseract.image_to_osd(small, config="--psm 0", timeout=min(remaining, 10))
    except (pytesseract.TesseractError, RuntimeError):
        return 0  # too little text to tell, or out of time: keep the page as it is
    m = _OSD_ROTATE.search(str(osd))
    return int(m.group(1)) % 360 if m else 0


def _mean_confidence(words: dict[str, list[str]]) -> float:
    confs = [float(c) for c, t in zip(words["conf"], words["text"], strict=False) if str(t).strip()]
    confs = [c for c in confs if c >= 0]
    return sum(confs) / len(confs) / 100 if confs else 0.0


def _read_page(
    page: _Page, languages: str, deadline: _Deadline, label: str, rules: bool = False
) -> list[_OcrLine]:
    """OCR one page; a page read with low confidence is asked for its orientation and, when it is
    turned (a sideways or upside-down scan), read again the right way up."""
    prepared = _prepare(page, rules)
    words = _ocr_words(prepared, languages, deadline, label)
    if _mean_confidence(words) < LOW_CONFIDENCE and (turn := _osd_rotation(prepared, deadline)):
        upright = _Page(page.number, page.image.rotate(-turn, expand=True), page.dpi)
        again = _prepare(upright, rules)
        words_again = _ocr_words(again, languages, deadline, label)
        if _mean_confidence(words_again) > _mean_confidence(words):
            log.info("ocr page turned upright", document=label, page=page.number, degrees=turn)
            prepared, words = again, words_again
    return _lines(prepared, words)


def _lines(page: _Page, words: dict[str, list[str]]) -> list[_OcrLine]:
    """Tesseract's lines, cut where words sit further apart than the line is high (table cells).

    Pixels become points with y flipped, so the layout code sees what a text PDF would give.
    """
    k = 72 / page.dpi
    page_top = page.image.height * k
    grouped: dict[tuple[int, int, int], list[tuple[float, float, float, float, str, float]]] = {}
    for i, text in enumerate(words["text"]):
        conf = float(words["conf"][i])
        if conf < 0 or not str(text).strip():
            continue
        left, top = float(words["left"][i]) * k, float(words["top"][i]) * k
        right, bottom = left + float(words["width"][i]) * k, top + float(words["height"][i]) * k
        key = (int(words["block_num"][i]), int(words["par_num"][i]), int(words["line_num"][i]))
        grouped.setdefault(key, []).append((left, page_top - bottom, right, page_top - top, str(text), conf))
    out: list[_OcrLine] = []
    for row in grouped.values():
        row.sort(key=lambda w: w[0])
        height = max(w[3] - w[1] for w in row)
        cell = [row[0]]
        for word in row[1:]:
            if word[0] - cell[-1][2] > height:
                out.append(_to_line(page.number, cell))
                cell = []
            cell.append(word)
        out.append(_to_line(page.number, cell))
    return out


def _to_line(page: int, cell: Sequence[tuple[float, float, float, float, str, float]]) -> _OcrLine:
    """One ``TextLine`` from words left to right; letters spread evenly over their word's box."""
    text: list[str] = []
    xs: list[float] = []
    for index, (x0, _, x1, _, word, _) in enumerate(cell):
        if index:
            text.append(" ")
            xs.append(cell[index - 1][2])  # the space starts where the previous word ended
        step = (x1 - x0) / len(word)
        xs.extend(x0 + i * step for i in range(len(word)))
        text.extend(word)
    xs.append(cell[-1][2])
    line = TextLine(
        page,
        cell[0][0],
        min(w[1] for w in cell),
        cell[-1][2],
        max(w[3] for w in cell),
        "".join(text),
        tuple(xs),
    )
    weight = sum(len(w[4]) for w in cell)
    return _OcrLine(line, sum(w[5] * len(w[4]) for w in cell) / weight / 100)


class OcrExtractor:
    """Invoices from images and from PDFs without text, read by Tesseract.

    ``languages`` is a Tesseract language string (``"deu+eng"``) for mailboxes whose language
    is known; the default is every wanted language that is installed, which costs some speed.
    """

    name = EXTRACTOR

    def __init__(
        self,
        *,
        languages: str | None = None,
        max_bytes: int = MAX_BYTES,
        time_budget: float = TIME_BUDGET_S,
    ) -> None:
        self.languages = languages
        self.max_bytes = max_bytes
        self.time_budget = time_budget

    def accepts(self, doc: Document, kind: Kind) -> bool:
        return kind == "image" or (kind == "pdf" and not has_text_layer(doc.data))

    def read_lines(self, doc: Document, *, remove_rules: bool = False) -> list[_OcrLine]:
        """OCR lines of every page of ``doc`` (an image or a PDF), within the time budget."""
        if len(doc.data) > self.max_bytes:
            raise DocumentTooLarge(f"{doc.label}: {len(doc.data)} bytes is over the {self.max_bytes} limit")
        deadline = _Deadline(self.time_budget, doc.label)
        languages = usable_languages(OCR_LANGUAGES.get() or self.languages)
        is_pdf = b"%PDF-" in doc.data[:1024]
        pages = _pdf_pages(doc.data, doc.label, deadline) if is_pdf else _image_pages(doc.data, doc.label)
        lines: list[_OcrLine] = []
        for page in pages:
            lines.extend(_read_page(page, languages, deadline, doc.label, remove_rules))
        return lines

    def extract(self, doc: Document) -> list[Invoice]:
        """The invoice read from ``doc``; ``[]`` when the OCR text does not look like one."""
        lines = self.read_lines(doc)
        invoices = [inv for inv in extract_invoices([ocr.line for ocr in lines]) if inv.extraction]
        if not any(_complete(inv) for inv in invoices):
            # Number or total missing: boxes and table grids may have hidden them from Tesseract.
            # Read again with the ruling lines whited out, and keep the reading that found more.
            ruled = self.read_lines(doc, remove_rules=True)
            again = [inv for inv in extract_invoices([ocr.line for ocr in ruled]) if inv.extraction]
            if sum(map(_found, again)) > sum(map(_found, invoices)):
                lines, invoices = ruled, again
        mean = sum(ocr.confidence for ocr in lines) / len(lines) if lines else 0.0
        for invoice in invoices:
            assert invoice.extraction is not None
            for info in invoice.extraction.fields.values():
                info.confidence = round(
                    info.confidence * _confidence_at(lines, info.page, info.bbox, mean), 3
                )
            if invoice.extraction.confidence is not None:
                invoice.extraction.confidence = round(invoice.extraction.confidence * mean, 2)
            invoice.extraction.extractor = EXTRACTOR
            invoice.source = Source(
                file=SourceFile(
                    name=doc.filename, sha256=doc.sha256, content_type=doc.content_type, size=doc.size
                ),
                format=EXTRACTOR,
            )
        return invoices


def _found(invoice: Invoice) -> int:
    """How many key fields a reading found (to compare two OCR passes of one document)."""
    assert invoice.extraction is not None
    return sum(1 for key in KEY_FIELDS if key in invoice.extraction.fields)


def _complete(invoice: Invoice) -> bool:
    return invoice.number is not None and invoice.totals.amount_due is not None


def _confidence_at(
    lines: Sequence[_OcrLine], page: int | None, bbox: list[float] | None, default: float
) -> float:
    """Tesseract's confidence in the line a field's value was read from (``default`` if unknown)."""
    if page is None or bbox is None:
        return default
    for ocr in lines:
        line = ocr.line
        if (
            line.page == page
            and abs(round(line.y0, 2) - bbox[1]) < 0.01
            and line.x0 - 0.01 <= bbox[0]
            and bbox[2] <= line.x1 + 0.01
        ):
            return ocr.confidence
    return default
