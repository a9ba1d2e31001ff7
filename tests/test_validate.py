"""Normalization and the EN 16931 business rules of ``validate`` (pure functions)."""

from __future__ import annotations

import copy
from decimal import Decimal

from mailingest.models import Invoice, ValidationMessage
from mailingest.pipeline.normalize import normalize
from mailingest.pipeline.validate import validate


def line(amount: str, category: str | None = None, rate: str | None = None) -> dict:  # type: ignore[type-arg]
    """A complete invoice line (BR-22..BR-26) of one unit at ``amount``."""
    data: dict = {"quantity": "1", "net_amount": amount, "item": {"name": "Widget"}, "price": {"net": amount}}  # type: ignore[type-arg]
    if category:
        data["vat"] = {"category_code": category, **({"rate": rate} if rate is not None else {})}
    return data


GOOD = {
    "number": "INV-1",
    "type_code": "380",
    "issue_date": "2026-03-01",
    "due_date": "2026-03-31",
    "currency": "EUR",
    "seller": {"name": "Seller", "vat_id": "DE811907980", "address": {"city": "Berlin", "country": "DE"}},
    "buyer": {"name": "Buyer", "address": {"city": "Paris", "country": "FR"}},
    "payment": {"credit_transfers": [{"iban": "DE89370400440532013000"}]},
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
    "lines": [line("60.00", "S", "19"), line("40.00", "S", "19")],
}


def rules_of(data: dict) -> list[str]:  # type: ignore[type-arg]
    return [m.rule for m in validate(Invoice.model_validate(data)).messages]


def test_consistent_invoice_is_valid() -> None:
    result = validate(Invoice.model_validate(GOOD))
    assert result.valid and result.messages == []


def test_arithmetic_rules_name_their_ids() -> None:
    bad = {**GOOD, "totals": {**GOOD["totals"], "tax_inclusive": "120.00"}}
    assert rules_of(bad) == ["BR-CO-15", "BR-CO-16"]
    lines = {**GOOD, "lines": [line("60.00"), line("41.00")]}
    assert rules_of(lines) == ["BR-CO-10"]
    vat = {**GOOD, "lines": [line("60.00"), line("40.00")], "vat_breakdown": [{"tax_amount": "18.00"}]}
    assert rules_of(vat) == ["BR-CO-14"]
    prepaid = {**GOOD, "totals": {**GOOD["totals"], "prepaid": "19.00", "amount_due": "100.00"}}
    assert rules_of(prepaid) == []


def test_rounding_within_a_cent_per_term_is_accepted() -> None:
    near = {**GOOD, "lines": [line("33.34", "S", "19"), line("33.33", "S", "19"), line("33.34", "S", "19")]}
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


def changed(**parts: object) -> dict:  # type: ignore[type-arg]
    """GOOD with some top-level parts replaced (deep-copied so tests cannot leak into each other)."""
    return {**copy.deepcopy(GOOD), **parts}


def messages_of(data: dict) -> dict[str, ValidationMessage]:  # type: ignore[type-arg]
    return {m.rule: m for m in validate(Invoice.model_validate(data)).messages}


def test_new_mandatory_fields_br_04_to_br_16() -> None:
    data = changed(
        type_code=None,
        seller={"name": "Seller", "vat_id": "DE811907980"},
        buyer={"name": "Buyer", "address": {"city": "Paris"}},
        totals={**GOOD["totals"], "line_net_total": None, "tax_exclusive": None},
        lines=[],
        vat_breakdown=[],
    )
    assert set(rules_of(data)) == {"BR-04", "BR-08", "BR-11", "BR-12", "BR-13", "BR-16"}
    no_country = changed(seller={"name": "S", "vat_id": "DE811907980", "address": {"city": "Berlin"}})
    assert rules_of(no_country) == ["BR-09"]
    assert rules_of(changed(buyer={"name": "Buyer"})) == ["BR-10"]


def test_line_rules_name_every_offending_line_once() -> None:
    bare = {"net_amount": "40.00", "vat": {"category_code": "S", "rate": "19"}}
    negative = {**line("60.00", "S", "19"), "price": {"net": "-1", "gross": "-1"}}
    found = messages_of(changed(lines=[negative, bare]))
    assert set(found) == {"BR-22", "BR-25", "BR-26", "BR-27", "BR-28"}
    assert found["BR-22"].path == "/lines/1/quantity" and "line 2" in found["BR-22"].text
    assert found["BR-27"].path == "/lines/0/price/net"
    missing_net = changed(lines=[line("60.00"), {**line("40.00"), "net_amount": None}])
    assert "BR-24" in rules_of(missing_net)


def test_document_allowances_and_charges_add_up() -> None:
    acs = [
        {"charge": False, "amount": "10.00", "vat": {"category_code": "S", "rate": "19"}},
        {"charge": True, "amount": "10.00", "vat": {"category_code": "S", "rate": "19"}},
    ]
    totals = {**GOOD["totals"], "allowances": "10.00", "charges": "10.00"}
    assert rules_of(changed(allowance_charges=acs, totals=totals)) == []
    wrong = {**totals, "allowances": "12.00", "charges": "9.00", "tax_exclusive": "97.00"}
    assert rules_of(changed(allowance_charges=acs, totals=wrong))[:2] == ["BR-CO-11", "BR-CO-12"]


def test_br_co_17_rounds_half_up_and_allows_a_cent() -> None:
    # 33.33 × 19 % = 6.3327 → 6.33; one cent off is rounding, three cents is not.
    def breakdown(tax: str) -> dict:  # type: ignore[type-arg]
        entry = {"category_code": "S", "rate": "19", "taxable_amount": "33.33", "tax_amount": tax}
        totals = {"line_net_total": "33.33", "tax_exclusive": "33.33", "tax_total": tax}
        gross = str(Decimal("33.33") + Decimal(tax))
        return changed(
            lines=[line("33.33", "S", "19")],
            vat_breakdown=[entry],
            totals={**totals, "tax_inclusive": gross, "amount_due": gross},
        )

    assert rules_of(breakdown("6.33")) == [] and rules_of(breakdown("6.34")) == []
    found = messages_of(breakdown("6.36"))
    assert list(found) == ["BR-CO-17"] and "6.33" in found["BR-CO-17"].text


def test_standard_rated_rules() -> None:
    seller = {"name": "Seller", "address": {"country": "DE"}}
    assert rules_of(changed(seller=seller)) == ["BR-S-02"]
    with_tax_number = {**seller, "tax_id": "201/113/40209"}
    assert rules_of(changed(seller=with_tax_number)) == []
    zero = changed(lines=[line("60.00", "S", "0"), line("40.00", "S", "19")])
    assert "BR-S-05" in rules_of(zero)
    uneven = changed(lines=[line("60.00", "S", "19"), line("40.00", "S", "7")])
    assert "BR-S-08" in rules_of(uneven) and "BR-S-01" not in rules_of(uneven)
    reason = changed(vat_breakdown=[{**GOOD["vat_breakdown"][0], "exemption_reason": "why"}])
    assert rules_of(reason) == ["BR-S-10"]
    no_breakdown = changed(vat_breakdown=[{**GOOD["vat_breakdown"][0], "category_code": "Z"}])
    assert {"BR-S-01", "BR-Z", "BR-Z-09"} <= set(rules_of(no_breakdown))


def zero_rated(code: str, reason: str | None = None, **parts: object) -> dict:  # type: ignore[type-arg]
    entry = {"category_code": code, "rate": "0", "taxable_amount": "100.00", "tax_amount": "0.00"}
    if reason:
        entry["exemption_reason"] = reason
    totals = {**GOOD["totals"], "tax_total": "0.00", "tax_inclusive": "100.00", "amount_due": "100.00"}
    lines = [line("60.00", code, "0"), line("40.00", code, "0")]
    return changed(vat_breakdown=[entry], totals=totals, lines=lines, **parts)


def test_zero_rated_and_exempt_rules() -> None:
    assert rules_of(zero_rated("Z")) == []
    assert rules_of(zero_rated("Z", "no reason allowed")) == ["BR-Z-10"]
    assert rules_of(zero_rated("E", "Art. 132 VAT directive")) == []
    assert rules_of(zero_rated("E")) == ["BR-E-10"]
    taxed = zero_rated("E", "exempt")
    taxed["vat_breakdown"][0]["tax_amount"] = "5.00"
    assert "BR-E-09" in rules_of(taxed)
    assert rules_of(zero_rated("G", "Export")) == [] and rules_of(zero_rated("G")) == ["BR-G-10"]


def test_reverse_charge_and_intra_community_need_both_vat_ids() -> None:
    buyer = {"name": "Buyer", "vat_id": "FR40303265045", "address": {"country": "FR"}}
    assert rules_of(zero_rated("AE", "Reverse charge", buyer=buyer)) == []
    assert rules_of(zero_rated("AE", "Reverse charge")) == ["BR-AE-02"]
    assert rules_of(zero_rated("AE", buyer=buyer)) == ["BR-AE-10"]
    rated = zero_rated("AE", "Reverse charge", buyer=buyer)
    rated["lines"][0]["vat"]["rate"] = "19"
    assert rules_of(rated) == ["BR-AE-05"]
    assert rules_of(zero_rated("K", "Intra-community supply", buyer=buyer)) == []
    assert rules_of(zero_rated("K", "Intra-community supply")) == ["BR-IC-02"]


def test_not_subject_to_vat_excludes_vat_ids_rates_and_other_categories() -> None:
    seller = {"name": "Seller", "address": {"country": "DE"}}
    clean = zero_rated("O", "Not subject to VAT", seller=seller)
    for entry in [*clean["lines"], *clean["vat_breakdown"]]:
        entry.get("vat", entry).pop("rate")
    assert rules_of(clean) == []
    assert rules_of({**clean, "seller": GOOD["seller"]}) == ["BR-O-02"]
    clean["lines"][0]["vat"]["rate"] = "0"
    assert rules_of(clean) == ["BR-O-05"]
    clean["lines"][0]["vat"] = {"category_code": "S", "rate": "19"}
    assert {"BR-O-12", "BR-S-01"} <= set(rules_of(clean))
    clean["vat_breakdown"].append(
        {"category_code": "S", "rate": "19", "taxable_amount": "0", "tax_amount": "0"}
    )
    assert "BR-O-11" in rules_of(clean)


def test_vat_id_check_digits_warn_and_unknown_formats_pass() -> None:
    assert rules_of(GOOD) == []  # DE811907980 is valid
    bad = changed(seller={**GOOD["seller"], "vat_id": "DE811907981"})
    result = validate(Invoice.model_validate(bad))
    assert result.valid and [(m.rule, m.severity, m.path) for m in result.messages] == [
        ("MI-VAT-01", "warning", "/seller/vat_id")
    ]
    foreign = changed(buyer={**GOOD["buyer"], "vat_id": "CHE123456789"})  # not an EU VAT id
    assert rules_of(foreign) == []


def test_iban_check_digits_warn_but_other_account_ids_pass() -> None:
    def account(value: str) -> dict:  # type: ignore[type-arg]
        return changed(payment={"credit_transfers": [{"iban": value}]})

    result = validate(Invoice.model_validate(account("DE88370400440532013000")))
    assert result.valid and [(m.rule, m.severity) for m in result.messages] == [("MI-IBAN-01", "warning")]
    assert rules_of(account("0532013000")) == []  # a national account number (BT-84 allows it)
    assert rules_of(account("ACCT-12345")) == []
    assert rules_of(account("QQ12ABCDEFGHIJKL")) == []  # IBAN-shaped, but no such IBAN country


def test_layout_rules_are_warnings_for_invoices_read_from_pdf_text() -> None:
    from mailingest.models import Source

    sparse = Invoice.model_validate({**GOOD, "seller": {"name": "Seller"}, "buyer": {"name": "Buyer"}})
    from_xml = validate(sparse.model_copy(update={"source": Source(format="ubl")}))
    from_pdf = validate(sparse.model_copy(update={"source": Source(format="pdf_text")}))
    xml_errors = {m.rule for m in from_xml.messages if m.severity == "error"}
    pdf_errors = {m.rule for m in from_pdf.messages if m.severity == "error"}
    assert "BR-08" in xml_errors and "BR-08" not in pdf_errors
    assert {m.rule for m in from_pdf.messages} == {m.rule for m in from_xml.messages}
