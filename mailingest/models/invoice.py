"""The canonical invoice (DESIGN.md 3.1), aligned with EN 16931 business terms.

Money, rates and quantities are ``Decimal`` in Python and decimal *strings* in JSON, never
floats. Unknown values are ``None`` and dropped from JSON (``to_json_dict``), never guessed.
The API, the CLI, webhooks and exports all emit exactly this shape.
"""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema


def _to_decimal(value: Any) -> Any:
    if isinstance(value, float):
        # Floats would smuggle binary rounding into money; go through repr to keep what was meant.
        return Decimal(repr(value))
    if isinstance(value, int | str):
        try:
            number = Decimal(str(value).strip())
        except ArithmeticError:  # decimal.InvalidOperation: pydantic only reports ValueError
            raise ValueError(f"not a decimal number: {str(value)[:40]!r}") from None
        if not number.is_finite():
            raise ValueError("amounts must be finite numbers")
        return number
    return value


Amount = Annotated[
    Decimal,
    BeforeValidator(_to_decimal),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}),
]
"""A decimal number carried as a string in JSON: money, rates, quantities."""

InvoiceType = Literal["invoice", "credit_note"]
Status = Literal[
    "received", "extracted", "needs_review", "validated", "approved", "rejected", "exported", "failed"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Address(_Model):
    lines: list[str] = Field(default_factory=list)
    city: str | None = None
    postcode: str | None = None
    subdivision: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2


class Party(_Model):
    name: str | None = None  # BT-27 / BT-44
    trading_name: str | None = None
    vat_id: str | None = None  # BT-31 / BT-48
    tax_id: str | None = None  # BT-32
    legal_id: str | None = None  # BT-30 / BT-47
    endpoint_id: str | None = None  # BT-34 / BT-49 (electronic address)
    email: str | None = None
    phone: str | None = None
    contact: str | None = None
    address: Address | None = None


class CreditTransfer(_Model):
    iban: str | None = None  # BT-84 (account identifier; not always an IBAN)
    bic: str | None = None  # BT-86
    account_name: str | None = None  # BT-85


class Payment(_Model):
    terms: str | None = None  # BT-20
    means_code: str | None = None  # BT-81
    credit_transfers: list[CreditTransfer] = Field(default_factory=list)
    reference: str | None = None  # BT-83
    mandate_reference: str | None = None  # BT-89
    debited_account: str | None = None  # BT-91


class Totals(_Model):
    line_net_total: Amount | None = None  # BT-106
    allowances: Amount | None = None  # BT-107
    charges: Amount | None = None  # BT-108
    tax_exclusive: Amount | None = None  # BT-109
    tax_total: Amount | None = None  # BT-110
    tax_inclusive: Amount | None = None  # BT-112
    prepaid: Amount | None = None  # BT-113
    rounding: Amount | None = None  # BT-114
    amount_due: Amount | None = None  # BT-115


class VatBreakdown(_Model):
    category_code: str | None = None  # BT-118
    rate: Amount | None = None  # BT-119
    taxable_amount: Amount | None = None  # BT-116
    tax_amount: Amount | None = None  # BT-117
    exemption_reason: str | None = None  # BT-120
    exemption_reason_code: str | None = None  # BT-121


class AllowanceCharge(_Model):
    charge: bool = False  # False = allowance
    amount: Amount | None = None
    base_amount: Amount | None = None
    percent: Amount | None = None
    reason: str | None = None
    reason_code: str | None = None
    vat: LineVat | None = None


class Price(_Model):
    net: Amount | None = None  # BT-146
    gross: Amount | None = None  # BT-148
    base_quantity: Amount | None = None  # BT-149


class LineVat(_Model):
    category_code: str | None = None  # BT-151
    rate: Amount | None = None  # BT-152


class Item(_Model):
    name: str | None = None  # BT-153
    description: str | None = None  # BT-154
    seller_id: str | None = None  # BT-155
    buyer_id: str | None = None  # BT-156
    standard_id: str | None = None  # BT-157
    classification: list[str] = Field(default_factory=list)  # BT-158
    origin_country: str | None = None  # BT-159
    attributes: dict[str, str] = Field(default_factory=dict)  # BT-160/161


class Coding(_Model):
    gl_account: str | None = None
    cost_center: str | None = None
    source: str | None = None
    confidence: float | None = None


class Line(_Model):
    id: str | None = None  # BT-126
    note: str | None = None  # BT-127
    quantity: Amount | None = None  # BT-129
    unit_code: str | None = None  # BT-130
    net_amount: Amount | None = None  # BT-131
    price: Price | None = None
    vat: LineVat | None = None
    item: Item | None = None
    allowance_charges: list[AllowanceCharge] = Field(default_factory=list)
    order_line_reference: str | None = None  # BT-132
    period_start: str | None = None
    period_end: str | None = None
    coding: Coding | None = None


class SourceFile(_Model):
    name: str | None = None
    sha256: str | None = None
    content_type: str | None = None
    size: int | None = None


class Source(_Model):
    channel: str | None = None  # smtp | drop | imap | api | cli
    mailbox: str | None = None
    message_id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    subject: str | None = None
    received_at: str | None = None
    file: SourceFile | None = None
    format: str | None = None  # ubl | cii | facturx | zugferd | xrechnung | pdf_text | ocr

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class FieldInfo(_Model):
    confidence: float
    page: int | None = None
    bbox: list[float] | None = None
    raw: str | None = None
    xpath: str | None = None
    learned: str | None = None  # set when a vendor profile supplied ("supplied") or fixed ("fixed") it


class Extraction(_Model):
    extractor: str
    version: str = "1"
    confidence: float | None = None
    fields: dict[str, FieldInfo] = Field(default_factory=dict)
    pages: list[int] | None = None  # [first, last] page of the file this invoice was read from


class ValidationMessage(_Model):
    rule: str
    severity: Literal["error", "warning", "info"] = "error"
    text: str
    path: str | None = None
    source: str | None = None  # who found it when not mailingest's own rules: "schematron"


class Validation(_Model):
    valid: bool = True
    messages: list[ValidationMessage] = Field(default_factory=list)


class Duplicate(_Model):
    """Why this invoice looks like one stored before (never dropped; see docs/vendors.md)."""

    of: str  # id of the earlier invoice
    score: float | None = None  # 0-1 (absent on invoices stored by the first release)
    reasons: list[str] = Field(default_factory=list)
    reason: str | None = None  # the strongest reason, as in the first release


class RuleFiring(_Model):
    """One routing rule that fired, and where it is written."""

    rule: str
    file: str | None = None
    line: int | None = None


class Invoice(_Model):
    """One invoice as every part of mailingest sees it."""

    id: str | None = None
    type: InvoiceType = "invoice"
    type_code: str | None = None  # BT-3 as written (380, 381, 384, 389, 396 ...)
    number: str | None = None  # BT-1
    issue_date: str | None = None  # BT-2, YYYY-MM-DD
    due_date: str | None = None  # BT-9
    tax_point_date: str | None = None  # BT-7
    currency: str | None = None  # BT-5
    tax_currency: str | None = None  # BT-6
    notes: list[str] = Field(default_factory=list)  # BT-22
    buyer_reference: str | None = None  # BT-10
    purchase_order: str | None = None  # BT-13
    sales_order: str | None = None  # BT-14
    contract: str | None = None  # BT-12
    project: str | None = None  # BT-11
    preceding_invoice: str | None = None  # BT-25
    period_start: str | None = None  # BT-73
    period_end: str | None = None  # BT-74
    seller: Party | None = None
    buyer: Party | None = None
    payee: Party | None = None
    payment: Payment | None = None
    totals: Totals = Field(default_factory=Totals)
    vat_breakdown: list[VatBreakdown] = Field(default_factory=list)
    allowance_charges: list[AllowanceCharge] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)
    source: Source | None = None
    extraction: Extraction | None = None
    validation: Validation | None = None
    duplicate_of: str | None = None
    duplicate: Duplicate | None = None
    vendor_id: str | None = None  # the matched vendor (ven_...)
    enrichment: dict[str, Any] | None = None  # vendor performance, price anomalies (docs/vendors.md)
    status: Status = "extracted"
    tags: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    routing: list[str] = Field(default_factory=list)  # names of the routing rules that fired, in order
    firings: list[RuleFiring] = Field(default_factory=list)  # the same firings with file and line
    deliver_to: list[str] = Field(default_factory=list)  # connectors named by routing rules (see routed_only)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict: decimals as strings, unknowns dropped, ``from`` spelled as in mail."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def new_id(prefix: str) -> str:
    """A sortable, prefixed id such as ``inv_01JB...``: 48-bit ms time + 80 random bits, Crockford base32."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(alphabet[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


AllowanceCharge.model_rebuild()
