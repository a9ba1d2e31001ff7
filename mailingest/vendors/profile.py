"""A vendor's learned profile and how it improves the next extraction (pure functions).

The profile is a JSON dict on the vendor row::

    {
      "fields": {"/seller/name": {"value": "ACME GmbH", "wrong": ["ACME GmbH Rechnung"], "count": 1}},
      "gl_accounts": {"6300": 3},          # GL accounts people coded or confirmed, with counts
      "date_order": "DMY" | "MDY",         # learnt from a correction that swapped day and month
      "date_swap": true,                   # same, when the raw text was not known
      "decimal_style": "comma" | "dot",    # learnt from a corrected amount and its raw text
      "corrections": 4, "confirmed": 2
    }

``learn_*`` return a new profile; ``apply_profile`` returns a new invoice with every field the
profile supplied or fixed marked in ``extraction.fields[...].learned``.
"""

from __future__ import annotations

import copy
import itertools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from mailingest.models import Extraction, FieldInfo, Invoice

# Fields whose corrected value is remembered and reused for the same vendor.
PREFERRED_FIELDS = (
    "/seller/name",
    "/seller/vat_id",
    "/currency",
    "/payment/credit_transfers/0/iban",
    "/payment/credit_transfers/0/bic",
)
DATE_FIELDS = ("/issue_date", "/due_date", "/tax_point_date")
AMOUNT_FIELDS = ("/totals/tax_exclusive", "/totals/tax_total", "/totals/tax_inclusive", "/totals/amount_due")
PROFILE_CONFIDENCE = 0.9
_GL_PATH = re.compile(r"^/lines/\d+/coding/gl_account$")
_NUMERIC_DATE = re.compile(r"\b(\d{1,2})[./-](\d{1,2})[./-](\d{2,4})\b")
_NUMBER_TOKEN = re.compile(r"\d[\d.,' \u00a0]*\d|\d")


# ----------------------------------------------------------------------------------- pointers


def get_path(data: dict[str, Any], pointer: str) -> Any:
    node: Any = data
    for part in pointer.strip("/").split("/"):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def set_path(data: dict[str, Any], pointer: str, value: Any) -> None:
    """Set a value at a JSON pointer, creating objects (and list slot 0) on the way."""
    parts = pointer.strip("/").split("/")
    node: Any = data
    for part, nxt in itertools.pairwise(parts):
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append(None)
        node[idx] = value
    else:
        node[last] = value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """JSON pointer → scalar (or list of scalars, taken whole) for every leaf."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}/{key}"))
    elif isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}/{i}"))
    else:
        out[prefix] = data
    return out


# ------------------------------------------------------------------------------------ learning


def _swapped(old: str, new: str) -> bool:
    """True when ``new`` is ``old`` with day and month exchanged (YYYY-MM-DD strings)."""
    if len(old) != 10 or len(new) != 10 or old == new:
        return False
    return old[:4] == new[:4] and old[5:7] == new[8:10] and old[8:10] == new[5:7]


def _style_value(token: str, style: str) -> Decimal | None:
    """Read a number token with the given decimal mark (``comma``: 1.234,56; ``dot``: 1,234.56)."""
    decimal_mark, group = (",", ".") if style == "comma" else (".", ",")
    cleaned = re.sub(r"[ '\u00a0]", "", token).replace(group, "")
    if cleaned.count(decimal_mark) > 1:
        return None
    try:
        return Decimal(cleaned.replace(decimal_mark, "."))
    except InvalidOperation:
        return None


def _raw_of(invoice: dict[str, Any], pointer: str) -> str | None:
    info = get_path(invoice, "/extraction/fields") or {}
    field = info.get(pointer) if isinstance(info, dict) else None
    raw = field.get("raw") if isinstance(field, dict) else None
    return raw if isinstance(raw, str) else None


def learn_correction(
    profile: dict[str, Any], pointer: str, old: Any, new: Any, before: dict[str, Any]
) -> dict[str, Any]:
    """What one corrected field teaches about its vendor; ``before`` is the invoice as extracted."""
    prof = copy.deepcopy(profile)
    prof["corrections"] = int(prof.get("corrections", 0)) + 1
    if pointer in PREFERRED_FIELDS and new not in (None, ""):
        entry = prof.setdefault("fields", {}).setdefault(pointer, {"value": new, "wrong": [], "count": 0})
        entry["value"] = new
        entry["count"] = int(entry.get("count", 0)) + 1
        if old not in (None, "") and old != new and old not in entry["wrong"]:
            entry["wrong"] = [*entry["wrong"], old][-10:]
    if _GL_PATH.match(pointer) and new:
        gl = prof.setdefault("gl_accounts", {})
        gl[str(new)] = int(gl.get(str(new), 0)) + 1
    if pointer in DATE_FIELDS and isinstance(old, str) and isinstance(new, str) and _swapped(old, new):
        raw = _raw_of(before, pointer)
        m = _NUMERIC_DATE.search(raw or "")
        if m and int(m[1]) <= 12 and int(m[2]) <= 12:
            prof["date_order"] = "DMY" if int(m[1]) == int(new[8:10]) else "MDY"
            prof.pop("date_swap", None)
        else:
            prof["date_swap"] = True
    if pointer in AMOUNT_FIELDS and new is not None:
        raw = _raw_of(before, pointer)
        token = _NUMBER_TOKEN.search(raw or "")
        try:
            target = Decimal(str(new))
        except InvalidOperation:
            target = None
        if token and target is not None:
            for style in ("comma", "dot"):
                value = _style_value(token.group(), style)
                if value is not None and abs(value) == abs(target):
                    prof["decimal_style"] = style
                    break
    return prof


def learn_confirmed(profile: dict[str, Any], invoice: Invoice) -> dict[str, Any]:
    """An approved invoice confirms its GL coding and its currency for the vendor."""
    prof = copy.deepcopy(profile)
    prof["confirmed"] = int(prof.get("confirmed", 0)) + 1
    gl = prof.setdefault("gl_accounts", {})
    for line in invoice.lines:
        if line.coding and line.coding.gl_account:
            gl[line.coding.gl_account] = int(gl.get(line.coding.gl_account, 0)) + 1
    if invoice.currency:
        fields = prof.setdefault("fields", {})
        fields.setdefault("/currency", {"value": invoice.currency, "wrong": [], "count": 1})
    return prof


def learned_gl_account(profile: dict[str, Any]) -> str | None:
    counts: dict[str, int] = profile.get("gl_accounts") or {}
    return max(counts, key=lambda k: counts[k]) if counts else None


# ------------------------------------------------------------------------------------ applying


def _date_fix(iso: str, raw: str | None, profile: dict[str, Any]) -> str | None:
    if len(iso) != 10 or iso[5:7] == iso[8:10]:
        return None
    m = _NUMERIC_DATE.search(raw or "")
    order = profile.get("date_order")
    if m and order in ("DMY", "MDY"):
        a, b = int(m[1]), int(m[2])
        if a > 12 or b > 12:
            return None  # the text settles the order on its own
        day, month = (a, b) if order == "DMY" else (b, a)
        fixed = f"{iso[:4]}-{month:02d}-{day:02d}"
        return fixed if fixed != iso else None
    if profile.get("date_swap") and not m and int(iso[8:10]) <= 12:
        return f"{iso[:4]}-{iso[8:10]}-{iso[5:7]}"
    return None


def apply_profile(invoice: Invoice, profile: dict[str, Any], default_gl: str | None = None) -> Invoice:
    """The invoice with what the vendor's profile knows filled in or fixed (for PDF/OCR sources).

    Preferred values replace a missing value or one people corrected before; dates are re-read
    in the vendor's day/month order; amounts in its decimal style; lines without a GL account get
    the vendor's default (``default_gl`` set by people wins over the learnt one).
    """
    data = invoice.to_json_dict()
    marks: dict[str, str] = {}
    for pointer, entry in (profile.get("fields") or {}).items():
        current = get_path(data, pointer)
        value = entry.get("value")
        if value in (None, "") or current == value:
            continue
        if current in (None, ""):
            set_path(data, pointer, value)
            marks[pointer] = "supplied"
        elif current in entry.get("wrong", []):
            set_path(data, pointer, value)
            marks[pointer] = "fixed"
    for pointer in DATE_FIELDS:
        current = get_path(data, pointer)
        if isinstance(current, str) and (fixed := _date_fix(current, _raw_of(data, pointer), profile)):
            set_path(data, pointer, fixed)
            marks[pointer] = "fixed"
    style = profile.get("decimal_style")
    if style in ("comma", "dot"):
        for pointer in AMOUNT_FIELDS:
            token = _NUMBER_TOKEN.search(_raw_of(data, pointer) or "")
            current = get_path(data, pointer)
            if token is None or current is None:
                continue
            value = _style_value(token.group(), style)
            if value is not None and abs(value) != abs(Decimal(str(current))):
                signed = -value if str(current).startswith("-") else value
                set_path(data, pointer, format(signed, "f"))
                marks[pointer] = "fixed"
    gl = default_gl or learned_gl_account(profile)
    if gl:
        for i, line in enumerate(data.get("lines") or []):
            coding = line.get("coding") or {}
            if not coding.get("gl_account"):
                line["coding"] = {**coding, "gl_account": gl, "source": "vendor", "confidence": 0.8}
                marks[f"/lines/{i}/coding/gl_account"] = "supplied"
    if not marks:
        return invoice
    result = Invoice.model_validate(data)
    extraction = result.extraction or Extraction(extractor="vendor_profile")
    fields = dict(extraction.fields)
    for pointer, how in marks.items():
        old = fields.get(pointer)
        raw = old.raw if old else None
        fields[pointer] = FieldInfo(
            confidence=max(PROFILE_CONFIDENCE, old.confidence if old else 0.0),
            page=old.page if old else None,
            bbox=old.bbox if old else None,
            raw=raw,
            learned=how,
        )
    result.extraction = extraction.model_copy(update={"fields": fields})
    return result
