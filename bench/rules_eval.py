"""Routing rules evaluation speed: R rules over N generated invoices, invoices/s.

    python bench/rules_eval.py [--rules 100] [--invoices 10000] [--seed 1]

Three runs over the same invoices (each with vendor and duplicate facts, 1-8 lines):
``when`` tables only; the same with a quarter of the rules carrying a CEL ``expr`` as well;
and first-match mode. Then the CEL expressions alone over 1,000 invoices: microseconds per
evaluation with mailingest's transpiled programs (``routing.cel``) next to celpy's
InterpretedRunner and CompiledRunner, and the cost of turning one invoice into CEL values. The rules are written as TOML files and loaded through
``mailingest.routing.rules.load_rules``, so parsing and CEL compilation are what the daemon does.
Figures go to stdout and to ``bench/results/rules_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from mailingest.models import Invoice
from mailingest.routing.rules import apply, load_rules

SELLERS = ["ACME GmbH", "Hetzner Online GmbH", "Papier Meier KG", "Globex Ltd", "Initech SARL", "Umbrella BV"]
ITEMS = [
    "Paper A4",
    "Toner black",
    "Managed hosting",
    "Software licence",
    "Train Berlin-Hamburg",
    "Consulting",
]
CURRENCIES = ["EUR", "EUR", "EUR", "USD", "CHF", "GBP"]


def rule_toml(i: int, rng: random.Random, *, cel: bool) -> str:
    kind = i % 6
    amount = rng.choice([100, 500, 1000, 5000, 10000])
    when = {
        0: f'"totals.amount_due" = {{ gte = "{amount}" }}, currency = "{rng.choice(CURRENCIES)}"',
        1: f'"seller.name" = {{ matches = "(?i){rng.choice(SELLERS).split()[0]}" }}',
        2: f'lines = {{ any = {{ "item.name" = {{ contains = "{rng.choice(ITEMS).split()[0].lower()}" }} }} }}',
        3: f'"vendor.trusted" = true, "vendor.amount_deviation_pct" = {{ lte = {rng.choice([10, 20, 30])} }}',
        4: f'purchase_order = {{ missing = true }}, "totals.amount_due" = {{ gt = "{amount}" }}',
        5: f'"duplicate.score" = {{ gte = 0.8 }}, type = "{rng.choice(["invoice", "credit_note"])}"',
    }[kind]
    then = rng.choice(
        [
            f'tags = ["t{i}"]',
            f'status = "needs_review", tags = ["r{i}"]',
            f'approvers = ["a{i}@example.com"]',
            f'gl_lines = [{{ keyword = "{rng.choice(ITEMS).split()[0]}", account = "6{i:03d}" }}]',
            f'approval_chain = [{{ approvers = ["lead@x"] }}, {{ above = "{amount}", approvers = ["cfo@x"] }}]',
        ]
    )
    text = f'[[rule]]\nname = "r{i:03d}"\npriority = {i}\nwhen = {{ {when} }}\nthen = {{ {then} }}\n'
    if cel and i % 4 == 0:
        text += (
            f"expr = 'has(invoice.totals.amount_due) && invoice.totals.amount_due > {amount / 10}"
            f" && size(invoice.lines) < {rng.randint(3, 9)}'\n"
        )
    return text


def invoices(n: int, rng: random.Random) -> list[tuple[Invoice, dict[str, Any]]]:
    out = []
    for k in range(n):
        nets = [round(rng.uniform(5, 3000), 2) for _ in range(rng.randint(1, 8))]
        lines = [{"item": {"name": rng.choice(ITEMS)}, "net_amount": f"{net:.2f}"} for net in nets]
        total = sum(nets)
        invoice = Invoice.model_validate(
            {
                "number": f"INV-{k}",
                "type": "credit_note" if rng.random() < 0.05 else "invoice",
                "currency": rng.choice(CURRENCIES),
                "purchase_order": f"PO-{k}" if rng.random() < 0.6 else None,
                "seller": {"name": rng.choice(SELLERS)},
                "totals": {"amount_due": f"{total:.2f}"},
                "lines": lines,
                "status": "validated",
            }
        )
        facts = {
            "vendor": {
                "trusted": rng.random() < 0.5,
                "invoice_count": rng.randint(0, 40),
                "amount_deviation_pct": round(rng.uniform(0, 60), 2),
            },
            "duplicate": {"score": rng.choice([0.0, 0.0, 0.0, 0.9])},
        }
        out.append((invoice, facts))
    return out


def run(rules_dir: Path, data: list[tuple[Invoice, dict[str, Any]]], *, first_match: bool) -> dict[str, Any]:
    started = time.perf_counter()
    rules = load_rules(rules_dir)
    load_s = time.perf_counter() - started
    fired = 0
    started = time.perf_counter()
    for invoice, facts in data:
        fired += len(apply(rules, invoice, facts=facts, first_match=first_match).routing)
    seconds = time.perf_counter() - started
    return {
        "rules": len(rules),
        "invoices": len(data),
        "load_s": round(load_s, 3),
        "seconds": round(seconds, 3),
        "invoices_per_s": round(len(data) / seconds, 1),
        "firings_per_invoice": round(fired / len(data), 2),
    }


def cel_micro(rules_dir: Path, data: list[tuple[Invoice, dict[str, Any]]]) -> dict[str, Any]:
    """Per-evaluation cost of the CEL expressions alone: mailingest's transpiled programs with one
    activation per invoice, against celpy's own InterpretedRunner and CompiledRunner (what the
    first release used and the obvious alternative: both rebuild the activation every time)."""
    import celpy

    from mailingest.routing.cel import cel_input
    from mailingest.routing.engine import condition_data

    exprs = [r.expr for r in load_rules(rules_dir) if r.expr]
    inputs = [cel_input(condition_data(inv, None, facts), inv) for inv, facts in data]
    started = time.perf_counter()
    for inv, facts in data:
        cel_input(condition_data(inv, None, facts), inv)
    convert_ms = (time.perf_counter() - started) / len(data) * 1000
    out: dict[str, Any] = {
        "expressions": len(exprs),
        "invoices": len(data),
        "convert_ms_per_invoice": round(convert_ms, 3),
    }
    env = celpy.Environment()
    runners = {
        "mailingest": [r._program for r in load_rules(rules_dir) if r.expr],
        "celpy_interpreted": [celpy.InterpretedRunner(env, env.compile(e)) for e in exprs],
        "celpy_compiled": [celpy.CompiledRunner(env, env.compile(e)) for e in exprs],  # type: ignore[arg-type]
    }
    for label, programs in runners.items():
        errors = 0
        started = time.perf_counter()
        for data_in in inputs:
            for program in programs:
                try:
                    value = program.evaluate(data_in if label == "mailingest" else data_in.context)
                except Exception:  # noqa: BLE001 - counted: celpy's CompiledRunner fails on has() && ...
                    errors += 1
                    continue
                errors += isinstance(value, Exception)
        seconds = time.perf_counter() - started
        out[f"{label}_us_per_eval"] = round(seconds / (len(inputs) * len(programs)) * 1e6, 1)
        out[f"{label}_errors"] = errors
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    data = invoices(args.invoices, random.Random(args.seed))
    results: dict[str, Any] = {}
    for label, cel, first in (
        ("when", False, False),
        ("when+cel", True, False),
        ("first-match", False, True),
    ):
        rng = random.Random(args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bench.toml").write_text(
                "\n".join(rule_toml(i, rng, cel=cel) for i in range(args.rules))
            )
            results[label] = run(Path(tmp), data, first_match=first)
        r = results[label]
        print(
            f"{label:12} {r['rules']} rules x {r['invoices']} invoices: {r['invoices_per_s']:>8} invoices/s "
            f"({r['seconds']} s, load {r['load_s']} s, {r['firings_per_invoice']} firings/invoice)"
        )
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.toml").write_text(
            "\n".join(rule_toml(i, rng, cel=True) for i in range(args.rules))
        )
        micro = results["cel-per-evaluation"] = cel_micro(Path(tmp), data[:1000])
    print(
        f"cel          {micro['expressions']} expressions x {micro['invoices']} invoices: "
        f"{micro['mailingest_us_per_eval']} us/evaluation (celpy interpreted "
        f"{micro['celpy_interpreted_us_per_eval']}, celpy CompiledRunner {micro['celpy_compiled_us_per_eval']} "
        f"with {micro['celpy_compiled_errors']} of {micro['expressions'] * micro['invoices']} failing), "
        f"invoice to CEL {micro['convert_ms_per_invoice']} ms"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "rules_eval.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
