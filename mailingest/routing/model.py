"""The rule model: what a ``[[rule]]`` table may say (validated when the files load).

Kept free of I/O. ``conditions`` evaluates ``when``/``expr``, ``engine`` applies ``then``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

OPERATORS = {
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "matches", "missing", "any", "all",
}  # fmt: skip
LIST_OPERATORS = {"any", "all"}  # their value is a nested ``when`` table applied to each list element

# Paths ``then.set`` and hook field operations may write (string values; everything else is data
# that came from the document and stays as extracted).
SETTABLE_PATHS = frozenset(
    {
        "buyer_reference",
        "buyer.reference",  # alias of buyer_reference (BT-10 is the buyer's reference)
        "purchase_order",
        "sales_order",
        "contract",
        "project",
        "due_date",
        "notes",
        "payment.terms",
        "payment.reference",
        "buyer.name",
        "buyer.vat_id",
        "buyer.contact",
        "buyer.email",
        "seller.name",
        "seller.vat_id",
    }
)
SET_ALIASES = {"buyer.reference": "buyer_reference"}


def check_when(when: dict[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` for unknown operators, bad regexes and malformed any/all tables."""
    for path, cond in when.items():
        if not isinstance(cond, dict):
            continue
        unknown = set(cond) - OPERATORS
        if unknown:
            raise ValueError(f"{where}{path}: unknown operator(s) {sorted(unknown)}; use {sorted(OPERATORS)}")
        if "matches" in cond:
            try:
                re.compile(str(cond["matches"]))
            except re.error as exc:
                raise ValueError(f"{where}{path}: bad regular expression: {exc}") from exc
        for op in ("in", "not_in"):
            if op in cond and not isinstance(cond[op], list):
                raise ValueError(f"{where}{path}: {op} takes a list")
        for op in LIST_OPERATORS & set(cond):
            if not isinstance(cond[op], dict):
                raise ValueError(f"{where}{path}: {op} takes a table of conditions on each element")
            check_when(cond[op], f"{where}{path}.{op}.")


class ApprovalStep(BaseModel):
    """One step of an approval chain: its approvers join when the amount lies in (above, up_to]."""

    model_config = ConfigDict(extra="forbid")

    above: Decimal | None = None
    up_to: Decimal | None = None
    approvers: list[str] = Field(min_length=1)

    def applies(self, amount: Decimal | None) -> bool:
        if amount is None:
            return self.above is None and self.up_to is None
        return (self.above is None or amount > self.above) and (self.up_to is None or amount <= self.up_to)


class GlCoding(BaseModel):
    """GL account for the lines whose text (item name, description, note) matches."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1)
    keyword: str | None = None  # case-insensitive substring
    regex: str | None = None  # Python regular expression (search)
    cost_center: str | None = None

    @model_validator(mode="after")
    def _one_matcher(self) -> GlCoding:
        if (self.keyword is None) == (self.regex is None):
            raise ValueError("a gl_lines entry has exactly one of keyword or regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from exc
        return self

    def matches(self, text: str) -> bool:
        if self.keyword is not None:
            return self.keyword.casefold() in text.casefold()
        return re.search(str(self.regex), text) is not None


class Actions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["needs_review", "approved", "rejected"] | None = None
    tags: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    approval_chain: list[ApprovalStep] = Field(default_factory=list)
    gl_account: str | None = None  # default for lines that have no GL account yet
    gl_lines: list[GlCoding] = Field(default_factory=list)
    set: dict[str, str] = Field(default_factory=dict)
    connectors: list[str] = Field(default_factory=list)
    stop: bool = False

    @field_validator("set")
    @classmethod
    def _allowed_paths(cls, values: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(values) - SETTABLE_PATHS)
        if bad:
            raise ValueError(f"cannot set {bad}; settable paths: {sorted(SETTABLE_PATHS)}")
        return values

    @model_validator(mode="after")
    def _approvers_or_chain(self) -> Actions:
        if self.approvers and self.approval_chain:
            raise ValueError("use approvers or approval_chain, not both")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    priority: int = 100
    enabled: bool = True
    when: dict[str, Any] = Field(default_factory=dict)
    expr: str | None = None  # CEL expression; must also hold
    then: Actions = Field(default_factory=Actions)
    origin: str | None = None  # "file.toml#3": third rule of the file
    file: str | None = None
    line: int | None = None
    _program: Any = PrivateAttr(default=None)  # compiled CEL program (routing.cel)

    @field_validator("when")
    @classmethod
    def _known_operators(cls, when: dict[str, Any]) -> dict[str, Any]:
        check_when(when)
        return when

    @property
    def where(self) -> str:
        return f"{self.file or '?'}:{self.line or 0}"

    @property
    def unconditional(self) -> bool:
        return not self.when and not self.expr
