"""Routing rules: loading (errors name file and rule) and pure evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest

from mailingest.errors import ConfigError
from mailingest.models import Invoice
from mailingest.routing.cel import cel_input, compile_expr
from mailingest.routing.engine import condition_data
from mailingest.routing.model import Rule
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
    assert [r.priority for r in rules] == sorted(r.priority for r in rules)
    big = apply(rules, invoice(totals={"amount_due": "25000"}, purchase_order="PO-1"))
    assert big.status == "needs_review" and "large" in big.tags
    assert big.approvers == ["team-lead@example.com", "head-of-finance@example.com", "cfo@example.com"]
    mid = apply(rules, invoice(purchase_order="PO-7"))
    assert mid.status == "validated" and mid.approvers == [
        "team-lead@example.com",
        "head-of-finance@example.com",
    ]
    assert mid.lines[0].coding is not None and mid.lines[0].coding.gl_account == "6815"  # "Paper" keyword
    no_po = apply(rules, invoice())
    assert (
        "missing-purchase-order" in no_po.routing and no_po.status == "needs_review" and "no-po" in no_po.tags
    )
    credit = apply(rules, invoice(type="credit_note", totals={"amount_due": "10"}))
    assert credit.deliver_to == ["erp"] and credit.approvers == ["accounting@example.com"]
    assert "approval-chain" not in credit.routing
    facts = {
        "vendor": {"trusted": True, "invoice_count": 12, "amount_deviation_pct": 8.5},
        "duplicate": {"score": 0.0},
    }
    auto = apply(rules, invoice(validation={"valid": True}), facts=facts)
    assert auto.status == "approved" and auto.tags == ["auto-approved"] and auto.approvers == []
    assert auto.lines[0].coding is not None  # GL rules run before the stop
    for changed in (
        {**facts, "vendor": {**facts["vendor"], "amount_deviation_pct": 35.0}},
        {**facts, "vendor": {**facts["vendor"], "trusted": False}},
        {**facts, "vendor": {**facts["vendor"], "invoice_count": 1}},
        {**facts, "duplicate": {"score": 0.9}},
    ):
        assert apply(rules, invoice(validation={"valid": True}), facts=changed).status == "needs_review"
    invalid = invoice(validation={"valid": False, "messages": [{"rule": "BR-CO-10", "text": "sum"}]})
    assert apply(rules, invalid, facts=facts).status != "approved"
    fx = apply(rules, invoice(currency="USD", purchase_order="PO-1"))
    assert "fx" in fx.tags and "foreign-currency-above-1k" in fx.routing


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
        ('[[rule]]\nname = "a"\nline = 7\n', "line: extra inputs are not permitted"),
    ],
)
def test_broken_rule_files_are_reported_by_file_and_rule(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "broken.toml", text)
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path)
    assert message in err.value.detail and "broken.toml" in err.value.detail


def test_facts_sources_validation_and_confidence(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "trusted"
when = { "vendor.trusted" = true, "vendor.lists" = { contains = "approved-suppliers" } }
then = { tags = ["trusted"] }

[[rule]]
name = "dup"
when = { "duplicate.score" = { gte = 0.8 } }
then = { tags = ["dup"] }

[[rule]]
name = "unsure"
when = { "extraction.fields.totals.amount_due.confidence" = { lt = 0.6 } }
then = { tags = ["unsure"] }

[[rule]]
name = "bad-sum"
when = { valid = false, "validation.codes" = { contains = "BR-CO-10" } }
then = { tags = ["bad-sum"] }

[[rule]]
name = "from-mailbox"
when = { "source.mailbox" = "ap@buyer.example", "source.subject" = { matches = "(?i)urgent" } }
then = { tags = ["urgent"] }
""",
    )
    rules = load_rules(tmp_path)
    facts = {"vendor": {"trusted": True, "lists": ["approved-suppliers"]}, "duplicate": {"score": 0.85}}
    got = apply(
        rules, invoice(), facts=facts, context={"mailbox": "ap@buyer.example", "subject": "URGENT pay"}
    )
    assert got.tags == ["trusted", "dup", "urgent"]
    assert apply(rules, invoice(), facts={"vendor": {"trusted": True, "lists": ["other"]}}).tags == []
    assert apply(rules, invoice(duplicate_of="inv_1")).tags == ["dup"]  # no facts: derived from duplicate_of
    unsure = invoice(extraction={"extractor": "ocr", "fields": {"totals.amount_due": {"confidence": 0.4}}})
    assert apply(rules, unsure).tags == ["unsure"]
    bad = invoice(validation={"valid": False, "messages": [{"rule": "BR-CO-10", "text": "sums differ"}]})
    assert apply(rules, bad).tags == ["bad-sum"]
    assert [f.model_dump() for f in apply(rules, bad).firings] == [
        {"rule": "bad-sum", "file": str(tmp_path / "r.toml"), "line": 17}
    ]


def test_line_level_any_and_all(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "any-6000"
when = { lines = { any = { gl_account = "6000" } } }
then = { tags = ["any"] }

[[rule]]
name = "all-paper"
when = { lines = { all = { "item.name" = { matches = "(?i)paper" }, net_amount = { lt = 1000 } } } }
then = { tags = ["all"] }
""",
    )
    rules = load_rules(tmp_path)
    lines = [
        {"item": {"name": "Paper A4"}, "net_amount": "10", "coding": {"gl_account": "6000"}},
        {"item": {"name": "Paper A3"}, "net_amount": "20"},
    ]
    assert apply(rules, invoice(lines=lines)).tags == ["any", "all"]
    lines[1]["item"] = {"name": "Toner"}
    assert apply(rules, invoice(lines=lines)).tags == ["any"]
    assert apply(rules, invoice(lines=[])).tags == []  # all over no lines is not a match


def test_cel_expressions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "cel-amount"
when = { currency = "EUR" }
expr = 'invoice.totals.amount_due >= 1000.0 && vendor.invoice_count > 2 && seller.name.startsWith("ACME")'
then = { tags = ["cel"] }

[[rule]]
name = "cel-broken-at-runtime"
expr = 'vendor.no_such_key > 1'
then = { tags = ["never"] }
""",
    )
    rules = load_rules(tmp_path)
    assert apply(rules, invoice(), facts={"vendor": {"invoice_count": 3}}).tags == ["cel"]
    assert (
        apply(rules, invoice(totals={"amount_due": "999.99"}), facts={"vendor": {"invoice_count": 3}}).tags
        == []
    )
    assert apply(rules, invoice(), facts={"vendor": {"invoice_count": 1}}).tags == []
    assert "rule expression failed" in capsys.readouterr().out  # logged, the rule just does not match


def test_bad_cel_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "cel.toml", '# comment\n\n[[rule]]\nname = "x"\nexpr = "totals.amount_due >>> 3"\n')
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path)
    assert f"{tmp_path / 'cel.toml'}:3:" in err.value.detail and "bad CEL expression" in err.value.detail


def test_actions_chain_gl_set_connectors(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "everything"
[rule.then]
approval_chain = [
  { up_to = "1000", approvers = ["clerk@x"] },
  { above = "1000", approvers = ["lead@x"] },
  { above = "5000", approvers = ["cfo@x"] },
]
gl_account = "6000"
gl_lines = [{ keyword = "hosting", account = "6810", cost_center = "IT" }]
set = { "buyer.reference" = "DEPT-7", "payment.terms" = "30 days" }
connectors = ["erp", "archive"]
tags = ["a"]
""",
    )
    rules = load_rules(tmp_path)
    lines = [
        {"item": {"name": "Web hosting"}, "net_amount": "10"},
        {"item": {"name": "Setup"}, "net_amount": "5"},
        {"item": {"name": "Other"}, "net_amount": "5", "coding": {"gl_account": "4711"}},
    ]
    got = apply(rules, invoice(lines=lines, totals={"amount_due": "6000"}))
    assert got.approvers == ["lead@x", "cfo@x"]
    assert [(c.gl_account, c.cost_center) for c in (line.coding for line in got.lines) if c] == [
        ("6810", "IT"),
        ("6000", None),
        ("4711", None),
    ]
    assert got.buyer_reference == "DEPT-7" and got.payment is not None and got.payment.terms == "30 days"
    assert got.deliver_to == ["erp", "archive"] and got.routing == ["everything"]
    assert apply(rules, invoice(totals={"amount_due": "1000"})).approvers == ["clerk@x"]
    assert apply(rules, invoice(totals={"amount_due": "1000.01"})).approvers == ["lead@x"]


@pytest.mark.parametrize(
    ("then", "message"),
    [
        ('set = { "totals.amount_due" = "1" }', "cannot set"),
        ('approvers = ["a"]\napproval_chain = [{ approvers = ["b"] }]', "not both"),
        ('gl_lines = [{ account = "1" }]', "exactly one of keyword or regex"),
        ("approval_chain = [{ above = 1 }]", "approval_chain.0.approvers"),
    ],
)
def test_bad_actions_are_load_errors(tmp_path: Path, then: str, message: str) -> None:
    write(tmp_path, "bad.toml", f'[[rule]]\nname = "a"\n[rule.then]\n{then}\n')
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path)
    assert message in err.value.detail and f"{tmp_path / 'bad.toml'}:1:" in err.value.detail


CEL_CASES = [
    "has(invoice.totals.amount_due) && invoice.totals.amount_due > 100.0",
    'has(invoice.purchase_order) || invoice.currency == "USD"',
    "!has(invoice.purchase_order)",
    "invoice.lines.exists(l, l.net_amount > 500.0)",
    "invoice.lines.all(l, has(l.item.name))",
    'invoice.lines.exists_one(l, l.item.name == "Paper")',
    "size(invoice.lines.filter(l, l.net_amount > 100.0)) > 1",
    "invoice.lines.map(l, l.net_amount)[0] > 10.0",
    'size(invoice.lines) >= 2 ? seller.name.startsWith("ACME") : vendor.trusted',
    'currency in ["USD", "CHF"] || "urgent" in tags',
    'duplicate.score >= 0.8 && type == "invoice"',
    "vendor.no_such > 1 || true",
    "vendor.no_such > 1 && false",
    "vendor.invoice_count / 0 > 1",
    "vendor.invoice_count + 1 > 3 && vendor.trusted",
    'seller.name.matches("^(?i)acme")',
    "enrichment.budget.remaining - invoice.totals.amount_due > 0.0",
    'has(enrichment.budget) && enrichment.budget.owner == "ops"',
    "double(vendor.invoice_count) > invoice.totals.amount_due",  # no int vs double in CEL
    "vendor.invoice_count > invoice.totals.amount_due",  # an overload error in both
]


@pytest.mark.parametrize("expr", CEL_CASES)
def test_compiled_cel_agrees_with_celpy_interpreter(expr: str) -> None:
    """routing.cel transpiles expressions and shares one activation per invoice; every answer
    (and every error, which means "no match") must be what celpy's reference interpreter says."""
    program = compile_expr(expr)
    assert program.compiled, f"celpy could not transpile {expr!r}"
    rule = Rule.model_validate({"name": "r", "expr": expr, "then": {"tags": ["hit"]}})
    rule._program = program
    env = celpy.Environment()
    reference = celpy.InterpretedRunner(env, env.compile(expr))
    samples: list[tuple[Invoice, dict[str, Any]]] = [
        (invoice(), {"vendor": {"trusted": True, "invoice_count": 4}}),
        (
            invoice(
                purchase_order="PO-1",
                currency="USD",
                tags=["urgent"],
                lines=[
                    {"item": {"name": "Paper"}, "net_amount": "700"},
                    {"item": {"name": "Toner"}, "net_amount": "150"},
                    {"net_amount": "5"},
                ],
            ),
            {"vendor": {"trusted": False, "invoice_count": 1}, "duplicate": {"score": 0.9}},
        ),
        (
            invoice(
                seller={"name": "Globex"}, totals={}, lines=[], enrichment={"budget": {"remaining": 2000.0}}
            ),
            {"vendor": {"trusted": True, "invoice_count": 0}},
        ),
        (invoice(enrichment={"budget": {"remaining": 10.5, "owner": "ops"}}), {}),
    ]
    for inv, facts in samples:
        data = cel_input(condition_data(inv, None, facts), inv)
        try:
            value = reference.evaluate(data.context)
            expected = not isinstance(value, Exception) and bool(value)
        except Exception:  # noqa: BLE001 - an evaluation error: the rule does not match
            expected = False
        routed = apply([rule], inv, facts=facts)
        assert routed.routing == (["r"] if expected else []), (expr, inv.model_dump(), facts)
        assert ("hit" in routed.tags) == expected
