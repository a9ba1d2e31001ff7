"""invoice2data YAML templates, for users migrating from invoice2data (``[extraction] templates_dir``).

The templates are loaded and matched by invoice2data itself (``read_templates``,
``matches_input``, ``prepare_input``, ``extract``), but on *our* text: the PDF text layer or the
OCR lines, laid out in reading order with columns kept apart by spaces the way
``pdftotext -layout`` prints them, so no poppler is needed. A matching template's values
override the label heuristics field by field (confidence ``CONFIDENCE``), and the invoice's
``extraction.extractor`` names the template (``template:<file>``); fields a template does not
yield keep what the heuristics found. No match: the heuristics' invoice, unchanged.

invoice2data is an optional dependency (the ``templates`` extra): it is imported only here and
only when a templates directory is configured.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from statistics import median
from typing import Any

import structlog

from mailingest.errors import ConfigError
from mailingest.models import (
    CreditTransfer,
    Extraction,
    FieldInfo,
    Invoice,
    Item,
    Line,
    LineVat,
    Party,
    Payment,
    Price,
    Validation,
)
from mailingest.pipeline.extractors.pdf_layout import TextLine
from mailingest.pipeline.extractors.pdf_lines import line_sum_message
from mailingest.pipeline.extractors.pdf_values import currency_code

CONFIDENCE = 0.95
"""A value a hand-written template captured: trusted above any label heuristic."""
SUFFIXES = (".yml", ".yaml", ".json")
_LINE_REGEX_KEYS = ("start", "end", "line", "first_line", "last_line", "skip_line", "line_separator")
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TemplateSet:
    """The templates of one directory, highest ``priority`` first (invoice2data's order)."""

    directory: Path
    templates: tuple[Any, ...]  # invoice2data.extract.invoice_template.InvoiceTemplate
    explicit: dict[str, frozenset[str]]
    """Per template file: which of ``issuer``/``currency`` it sets itself (invoice2data fills
    in defaults — the first keyword, EUR — that must not override what the PDF says)."""


TEMPLATES: ContextVar[TemplateSet | None] = ContextVar("templates", default=None)
"""The templates for the document being analysed, set by ``analyse`` from ``templates_dir``."""


# ----------------------------------------------------------------------------------- loading


def load_templates(directory: str | Path) -> TemplateSet:
    """Every template in ``directory`` (and below), checked: raises ``ConfigError`` naming the
    file and key of the first broken one (bad YAML, no keywords, a regex that does not compile,
    an unknown parser), where invoice2data itself would only log a warning and skip it."""
    try:
        from invoice2data.extract.loader import read_templates
    except ImportError:
        raise ConfigError(
            "extraction.templates_dir needs invoice2data: install mailingest with the "
            "'templates' extra (pip install 'mailingest[templates]')"
        ) from None
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"extraction.templates_dir {root} is not a directory")
    explicit = {path.name: _check_file(path) for path in _template_files(root)}
    try:
        loaded = read_templates(str(root))
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"invoice2data template in {root} cannot be loaded: {exc}") from None
    if len(loaded) != len(explicit):
        missing = len(explicit) - len(loaded)
        raise ConfigError(f"{root}: invoice2data did not load {missing} of the template files")
    ordered = sorted(loaded, key=lambda t: t.get("priority", 5), reverse=True)
    return TemplateSet(root.resolve(), tuple(ordered), explicit)


def _template_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.endswith(SUFFIXES):
            yield path


def _check_file(path: Path) -> frozenset[str]:
    import yaml  # a dependency of invoice2data

    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"template {path.name}: cannot be read ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"template {path.name}: not a mapping of template keys")
    keywords = raw.get("keywords")
    if not keywords or not all(isinstance(k, str) for k in _as_list(keywords)):
        raise ConfigError(f"template {path.name}: 'keywords' (one string or a list of strings) is required")
    fields = raw.get("fields", {})
    if not isinstance(fields, dict):
        raise ConfigError(f"template {path.name}: 'fields' must be a mapping")
    for name, spec in fields.items():
        _check_field(path.name, str(name), spec)
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"template {path.name}: 'options' must be a mapping")
    for pair in _as_list(options.get("replace", [])):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"template {path.name}: options.replace entries are [pattern, replacement]")
        _compile(path.name, "options.replace", pair[0])
    if isinstance(raw.get("lines"), dict):  # the deprecated top-level lines plugin
        _check_field(path.name, "lines", {"parser": "lines", **raw["lines"]})
    sets = {"issuer"} if raw.get("issuer") else set()
    if "currency" in options or "currency" in fields:
        sets.add("currency")
    return frozenset(sets)


def _check_field(file: str, name: str, spec: Any) -> None:
    if name.startswith("static_"):
        return
    if not isinstance(spec, dict):  # legacy syntax: the field is a regex or a list of them
        for pattern in _as_list(spec):
            _compile(file, f"fields.{name}", pattern)
        return
    parser = spec.get("parser")
    if parser == "regex":
        if "regex" not in spec:
            raise ConfigError(f"template {file}: fields.{name} uses parser regex but has no 'regex'")
        for pattern in _as_list(spec["regex"]):
            _compile(file, f"fields.{name}.regex", pattern)
    elif parser == "lines":
        for key in _LINE_REGEX_KEYS:
            for pattern in _as_list(spec.get(key, [])):
                _compile(file, f"fields.{name}.{key}", pattern)
        if "line" not in spec:
            raise ConfigError(f"template {file}: fields.{name} uses parser lines but has no 'line'")
    elif parser != "static":
        raise ConfigError(f"template {file}: fields.{name} has unknown parser {parser!r}")


def _compile(file: str, key: str, pattern: Any) -> None:
    if not isinstance(pattern, str):
        raise ConfigError(f"template {file}: {key} must be a regular expression string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"template {file}: {key} is not a valid regular expression ({exc})") from None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@lru_cache(maxsize=4)
def _cached(directory: str, stamp: tuple[tuple[str, int], ...]) -> TemplateSet:
    return load_templates(directory)


def templates_for(directory: str | Path) -> TemplateSet:
    """``load_templates``, loaded again only when a file in the directory changed."""
    root = Path(directory)
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in _template_files(root)) if root.is_dir() else ()
    return _cached(str(root), stamp)


# -------------------------------------------------------------------------------------- text


def layout_text(lines: Sequence[TextLine]) -> str:
    """The page text in reading order, one printed row per line, cells apart by at least two
    spaces and roughly in their columns (as ``pdftotext -layout``); pages end with a form feed."""
    pages: dict[int, list[TextLine]] = {}
    for line in lines:
        if line.text.strip():
            pages.setdefault(line.page, []).append(line)
    widths = [(ln.x1 - ln.x0) / len(ln.text) for ln in lines if len(ln.text.strip()) >= 3]
    char_width = max(median(widths), 1.0) if widths else 5.0
    out: list[str] = []
    for page in sorted(pages):
        left = min(ln.x0 for ln in pages[page])
        for row in _rows(pages[page]):
            text = ""
            for cell in sorted(row, key=lambda ln: ln.x0):
                column = round((cell.x0 - left) / char_width)
                gap = max(column - len(text), 2) if text else column
                text += " " * gap + cell.text
            out.append(text.rstrip())
        out.append("\f")
    return "\n".join(out)


def _rows(lines: list[TextLine]) -> list[list[TextLine]]:
    """Lines sharing a baseline (their vertical centres within half a line), top row first."""
    rows: list[list[TextLine]] = []
    centre = 0.0
    for line in sorted(lines, key=lambda ln: -(ln.y0 + ln.y1) / 2):
        middle = (line.y0 + line.y1) / 2
        if rows and abs(centre - middle) < 0.5 * min(line.height, rows[-1][0].height):
            rows[-1].append(line)
        else:
            rows.append([line])
            centre = middle
    return rows


# ---------------------------------------------------------------------------------- matching


def apply_templates(
    invoice: Invoice | None, lines: Sequence[TextLine], key_fields: Sequence[str]
) -> Invoice | None:
    """``invoice`` with the values of the first matching template (see the module docstring)."""
    templates = TEMPLATES.get()
    if templates is None or not templates.templates or not lines:
        return invoice
    text = layout_text(lines)
    template = next((t for t in templates.templates if t.matches_input(text)), None)
    if template is None:
        return invoice
    name = str(template["template_name"])
    try:
        output = template.extract(template.prepare_input(text), "", None)
    except ValueError as exc:  # invoice2data's RequiredFieldsMissingError, TemplateSyntaxError
        log.warning("template matched but yielded nothing", template=name, reason=str(exc)[:300])
        return invoice
    except Exception as exc:  # noqa: BLE001 - third-party template code must not fail the document
        log.warning("template crashed", template=name, error=f"{type(exc).__name__}: {exc}"[:300])
        return invoice
    merged = _merge(invoice, output, templates.explicit.get(name, frozenset()))
    assert merged.extraction is not None
    merged.extraction.extractor = f"template:{name}"
    found = merged.extraction.fields
    merged.extraction.confidence = round(
        sum(found[k].confidence if k in found else 0.0 for k in key_fields) / len(key_fields), 2
    )
    return merged


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _text(value: Any) -> str | None:
    value = _first(value)
    if value is None:
        return None
    return " ".join(str(value).split()) or None


def _day(value: Any) -> str | None:
    value = _first(value)
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m-%d")
    return None


def _amount(value: Any) -> Decimal | None:
    value = _first(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        amount = Decimal(str(value).replace(" ", "")) if str(value).strip() else None
    except InvalidOperation:
        return None
    if amount is not None and amount.is_finite() and amount == amount.to_integral_value():
        return amount.quantize(Decimal(1))  # 4.0 → 4
    return amount if amount is not None and amount.is_finite() else None


def _money(value: Any) -> Decimal | None:
    """An amount with at least two decimals (invoice2data's floats print ``756.0``)."""
    amount = _amount(value)
    if amount is None or not amount.is_finite():
        return None
    exponent = amount.as_tuple().exponent
    return amount.quantize(Decimal("0.01")) if isinstance(exponent, int) and exponent > -2 else amount


def _merge(invoice: Invoice | None, out: dict[str, Any], explicit: frozenset[str]) -> Invoice:
    inv = invoice.model_copy(deep=True) if invoice is not None else Invoice()
    fields = dict(inv.extraction.fields) if inv.extraction is not None else {}

    def put(pointer: str, raw: Any) -> None:
        fields[pointer] = FieldInfo(confidence=CONFIDENCE, raw=_text(raw))

    if (number := _text(out.get("invoice_number"))) is not None:
        inv.number = number
        put("/number", out["invoice_number"])
    for key, attr, pointer in (("date", "issue_date", "/issue_date"), ("date_due", "due_date", "/due_date")):
        if (day := _day(out.get(key))) is not None:
            setattr(inv, attr, day)
            put(pointer, day)
    if "currency" in explicit and (code := currency_code(str(_first(out.get("currency")) or ""))):
        inv.currency = code
        put("/currency", out["currency"])
    totals = (("amount", "amount_due"), ("amount_untaxed", "tax_exclusive"), ("amount_tax", "tax_total"))
    for key, attr in totals:
        if (amount := _money(out.get(key))) is not None:
            setattr(inv.totals, attr, amount)
            put(f"/totals/{attr}", out[key])
    issuer = _text(out.get("issuer")) if "issuer" in explicit else None
    seller_name = _text(out.get("partner_name")) or issuer
    for party, key, value in (
        ("seller", "name", seller_name),
        ("seller", "vat_id", _text(out.get("vat"))),
        ("buyer", "vat_id", _text(out.get("company_vat"))),
    ):
        if value is not None:
            target = getattr(inv, party) or Party()
            setattr(target, key, value.replace(" ", "") if key == "vat_id" else value)
            setattr(inv, party, target)
            put(f"/{party}/{key}", value)
    iban, bic = _text(out.get("iban")), _text(out.get("bic"))
    if iban or bic:
        payment = inv.payment or Payment()
        transfer = payment.credit_transfers[0] if payment.credit_transfers else CreditTransfer()
        for key, value in (("iban", iban), ("bic", bic)):
            if value is not None:
                setattr(transfer, key, value.replace(" ", "").upper())
                put(f"/payment/credit_transfers/0/{key}", value)
        payment.credit_transfers = [transfer, *payment.credit_transfers[1:]]
        inv.payment = payment
    rows = out.get("lines")
    if isinstance(rows, list) and rows:
        fields = {k: v for k, v in fields.items() if not k.startswith("/lines/")}
        inv.lines = [_line(i, row) for i, row in enumerate(rows, start=1) if isinstance(row, dict)]
        for i, row in enumerate(row for row in rows if isinstance(row, dict)):
            for key, pointer in _LINE_POINTERS.items():
                if row.get(key) not in (None, ""):
                    put(f"/lines/{i}/{pointer}", row[key])
        message = line_sum_message(inv.lines, inv.totals.tax_exclusive, inv.totals.tax_inclusive)
        inv.validation = None if message is None else Validation(messages=[message])
    extractor = inv.extraction.extractor if inv.extraction is not None else "template"
    inv.extraction = Extraction(extractor=extractor, fields=fields)
    return inv


_LINE_POINTERS = {
    "name": "item/name",
    "qty": "quantity",
    "price_unit": "price/net",
    "price_subtotal": "net_amount",
    "line_tax_percent": "vat/rate",
}
"""invoice2data's line fields (after its own alias normalisation) → canonical line pointers."""


def _line(index: int, row: dict[str, Any]) -> Line:
    name = _text(row.get("name") or row.get("product"))
    price, rate = _money(row.get("price_unit")), _amount(row.get("line_tax_percent"))
    return Line(
        id=str(index),
        quantity=_amount(row.get("qty")),
        net_amount=_money(row.get("price_subtotal")),
        price=Price(net=price) if price is not None else None,
        vat=LineVat(rate=rate) if rate is not None else None,
        item=Item(name=name) if name else None,
    )
