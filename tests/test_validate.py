"""Normalization and EN 16931 arithmetic/mandatory-field checks (pure functions)."""

from __future__ import annotations

from mailingest.models import Invoice
from mailingest.pipeline.normalize import normalize
from mailingest.pipeline.validate import validate

GOOD = {
    "number": "INV-1",
    "issue_date": "2026-03-01",
    "due_date": "2026-03-31",
    "currency": "EUR",
    "seller": {"name": "Seller"},
    "buyer": {"name": "Buyer"},
    "totals": {
        "line_net_total": "100.00",
        "tax_exclusive": "100.00",
        "tax_total": "19.00",
        "tax_inclusive": "119.00",
        "amount_due": "119.00",
    },
    "vat_breakdown": [
        {"category_code": "S", "rate": "19", "taxable_amount": "100.00", "tax_amount": "19.00"}
    ],
    "lines": [{"net_amount": "60.00"}, {"net_amount": "40.00"}],
}


def rules_of(data: dict) -> list[str]:  # type: ignore[type-arg]
    return [m.rule for m in validate(Invoice.model_validate(data)).messages]


def test_consistent_invoice_is_valid() -> None:
    result = validate(Invoice.model_validate(GOOD))
    assert result.valid and result.messages == []


def test_arithmetic_rules_name_their_ids() -> None:
    bad = {**GOOD, "totals": {**GOOD["totals"], "tax_inclusive": "120.00"}}
    assert rules_of(bad) == ["BR-CO-15", "BR-CO-16"]
    lines = {**GOOD, "lines": [{"net_amount": "60.00"}, {"net_amount": "41.00"}]}
    assert rules_of(lines) == ["BR-CO-10"]
    vat = {**GOOD, "vat_breakdown": [{"tax_amount": "18.00"}]}
    assert rules_of(vat) == ["BR-CO-14"]
    prepaid = {**GOOD, "totals": {**GOOD["totals"], "prepaid": "19.00", "amount_due": "100.00"}}
    assert rules_of(prepaid) == []


def test_rounding_within_a_cent_per_term_is_accepted() -> None:
    near = {**GOOD, "lines": [{"net_amount": "33.34"}, {"net_amount": "33.33"}, {"net_amount": "33.34"}]}
    assert rules_of(near) == []


def test_missing_mandatory_fields_are_errors_and_dates_warn() -> None:
    result = validate(Invoice.model_validate({"due_date": "2026-01-01", "issue_date": "2026-02-01"}))
    rules = {m.rule: m.severity for m in result.messages}
    assert not result.valid
    assert {"BR-02", "BR-05", "BR-06", "BR-07", "BR-14", "BR-15"} <= set(rules)
    assert rules["MI-DATE-01"] == "warning"


def test_normalize_trims_uppercases_and_compacts_without_inventing() -> None:
    raw = Invoice.model_validate(
        {
            "number": "  INV-1 ",
            "currency": "eur",
            "seller": {
                "name": " ACME  GmbH ",
                "vat_id": "de 811 907 980",
                "address": {"country": "de", "lines": []},
            },
            "payment": {"credit_transfers": [{"iban": "de89 3704 0044 0532 0130 00", "bic": "cobadeffxxx"}]},
            "buyer": {"name": ""},
        }
    )
    out = normalize(raw).to_json_dict()
    assert out["number"] == "INV-1" and out["currency"] == "EUR"
    assert out["seller"]["vat_id"] == "DE811907980" and out["seller"]["address"]["country"] == "DE"
    assert out["payment"]["credit_transfers"][0] == {"iban": "DE89370400440532013000", "bic": "COBADEFFXXX"}
    assert "buyer" not in out and "due_date" not in out
