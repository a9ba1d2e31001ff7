"""Routing rules: loading (errors name file and rule) and pure evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailingest.errors import ConfigError
from mailingest.models import Invoice
from mailingest.routing.rules import apply, load_rules

ROOT = Path(__file__).resolve().parent.parent


def invoice(**kw: object) -> Invoice:
    base: dict[str, object] = {
        "number": "INV-1",
        "currency": "EUR",
        "status": "validated",
        "seller": {"name": "ACME GmbH", "vat_id": "DE811907980"},
        "totals": {"amount_due": "1500.00"},
        "lines": [{"item": {"name": "Paper"}, "net_amount": "1500"}],
    }
    base.update(kw)
    return Invoice.model_validate(base)


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_shipped_example_rules_load_and_route() -> None:
    rules = load_rules(ROOT / "rules")
    assert [r.name for r in rules] == sorted(
        (r.name for r in rules), key=lambda n: [x.name for x in rules].index(n)
    )
    big = apply(rules, invoice(totals={"amount_due": "25000"}))
    assert big.status == "needs_review" and big.approvers == ["cfo@example.com"] and "large" in big.tags
    assert "team-lead-above-1k" not in big.routing  # cfo rule stops evaluation
    mid = apply(rules, invoice(purchase_order="PO-7"))
    assert mid.routing == ["team-lead-above-1k"] and mid.status == "validated"
    no_po = apply(rules, invoice())
    assert no_po.routing[0] == "missing-purchase-order" and no_po.status == "needs_review"
    credit = apply(rules, invoice(type="credit_note", totals={"amount_due": "10"}))
    assert credit.routing == ["credit-notes-to-accounting"]


def test_operators(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "all-ops"
then = { tags = ["hit"] }
[rule.when]
"seller.name" = { matches = "(?i)^acme" }
currency = { in = ["EUR", "CHF"] }
"totals.amount_due" = { gte = 1500, lt = "1500.01" }
"seller.vat_id" = "de811907980"
purchase_order = { missing = true }
"lines.0.item.name" = { contains = "pap" }
buyer = { missing = true }
number = { ne = "INV-2" }
""",
    )
    rules = load_rules(tmp_path)
    assert apply(rules, invoice()).tags == ["hit"]
    assert apply(rules, invoice(currency="USD")).tags == []
    assert apply(rules, invoice(totals={"amount_due": "1500.01"})).tags == []


def test_context_from_the_source_is_visible(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        '[[rule]]\nname = "from-acme"\nwhen = { "source.from" = { matches = "@acme\\\\.example" } }\n'
        'then = { status = "approved" }\n',
    )
    rules = load_rules(tmp_path)
    routed = apply(rules, invoice(), context={"from": "Billing <billing@acme.example>"})
    assert routed.status == "approved" and routed.routing == ["from-acme"]


def test_priority_first_match_and_disabled(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "late"
priority = 200
then = { tags = ["late"] }

[[rule]]
name = "early"
priority = 1
then = { tags = ["early"] }

[[rule]]
name = "off"
enabled = false
then = { tags = ["off"] }
""",
    )
    rules = load_rules(tmp_path)
    assert apply(rules, invoice()).tags == ["early", "late"]
    assert apply(rules, invoice(), first_match=True).routing == ["early"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rule]]\nname = "a"\nwhen = { x = { approx = 1 } }\n', "unknown operator"),
        ('[[rule]]\nname = "a"\nthen = { status = "paid" }\n', "then.status"),
        ('[[rule]]\nname = "a"\nthen = { colour = "red" }\n', "then.colour"),
        ('[[rule]]\nname = "a"\n[[rule]]\nname = "a"\n', "more than once"),
        ('[[rule]]\nname = "a"\nwhen = { x = { matches = "(" } }\n', "bad regular expression"),
        ("[rule\n", "not valid TOML"),
        ('[[rules]]\nname = "a"\n', "unknown top-level"),
    ],
)
def test_broken_rule_files_are_reported_by_file_and_rule(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "broken.toml", text)
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path)
    assert message in err.value.detail and "broken.toml" in err.value.detail
