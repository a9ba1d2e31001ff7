"""Canonical data shapes shared by every part of mailingest."""

from mailingest.models.invoice import (
    Address,
    AllowanceCharge,
    Amount,
    Coding,
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
    Source,
    SourceFile,
    Totals,
    Validation,
    ValidationMessage,
    VatBreakdown,
    new_id,
)

__all__ = [
    "Address", "AllowanceCharge", "Amount", "Coding", "CreditTransfer", "Extraction", "FieldInfo",
    "Invoice", "Item", "Line", "LineVat", "Party", "Payment", "Price", "Source", "SourceFile",
    "Totals", "Validation", "ValidationMessage", "VatBreakdown", "new_id",
]
