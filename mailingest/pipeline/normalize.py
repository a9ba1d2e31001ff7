"""Make extracted invoices uniform without guessing: trim text, upper-case codes, compact ids.

Pure: takes an Invoice, returns a new one. Nothing is invented here — a value the document did
not state stays unknown (DESIGN.md 3.1).
"""

from __future__ import annotations

import re
from typing import Any

from mailingest.models import Invoice

_SPACE = re.compile(r"\s+")
_COMPACT = re.compile(r"[\s.\-]")
_CODE_KEYS = {"currency", "tax_currency", "country", "category_code", "unit_code", "bic"}
_COMPACT_KEYS = {"iban", "vat_id"}


def _clean(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _clean(v, k) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", {})}
    if isinstance(value, list):
        items = [_clean(v, None) for v in value]
        return [v for v in items if v not in (None, "", {})]
    if isinstance(value, str):
        text = (
            value.strip()
            if key in ("name", "description", "terms", "note")
            else _SPACE.sub(" ", value).strip()
        )
        if key in _CODE_KEYS:
            return text.upper() or None
        if key in _COMPACT_KEYS:
            return _COMPACT.sub("", text).upper() or None
        return text or None
    return value


def normalize(invoice: Invoice) -> Invoice:
    """Return a cleaned copy of ``invoice`` (same shape, same meaning)."""
    data = invoice.model_dump(mode="json", by_alias=True, exclude_none=True)
    cleaned = _clean(data)
    cleaned.setdefault("totals", {})
    return Invoice.model_validate(cleaned)
