"""Applying rules: pure, ``apply(rules, invoice, ...)`` returns a routed copy of the invoice.

Conditions see the invoice as it came in (plus source and facts), not as earlier rules changed
it, so the order of rules only matters for ``stop``, first-match and which action wins.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from mailingest.models import Invoice
from mailingest.models.invoice import Coding, Party, Payment, RuleFiring
from mailingest.routing.cel import CelInput
from mailingest.routing.conditions import cel_input, expr_holds, when_holds
from mailingest.routing.model import SET_ALIASES, Actions, Rule


def condition_data(
    invoice: Invoice, context: dict[str, Any] | None = None, facts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What conditions see: the invoice JSON, ``source`` completed from ``context``, each fact
    namespace (``vendor``, ``duplicate``, ``enrichment``, ``hooks`` ...) merged at the top level,
    ``valid`` and ``validation.codes`` (the rule ids of the validation messages)."""
    data = invoice.to_json_dict()
    if context:
        data["source"] = {**{k: v for k, v in context.items() if v is not None}, **data.get("source", {})}
    for namespace, values in (facts or {}).items():
        current = data.get(namespace)
        if isinstance(current, dict) and isinstance(values, dict):
            data[namespace] = {**values, **current}
        elif current is None:
            data[namespace] = values
    for line in data.get("lines", []):
        coding = line.get("coding") or {}
        for key in ("gl_account", "cost_center"):  # shorthand: lines = { any = { gl_account = "6000" } }
            if key in coding:
                line.setdefault(key, coding[key])
    validation = data.setdefault("validation", {"valid": True, "messages": []})
    validation["codes"] = [m.get("rule") for m in validation.get("messages", [])]
    data.setdefault("valid", validation.get("valid", True))
    data.setdefault("duplicate", {"score": 1.0 if invoice.duplicate_of else 0.0})
    return data


def approval_amount(invoice: Invoice) -> Decimal | None:
    totals = invoice.totals
    return totals.amount_due if totals.amount_due is not None else totals.tax_inclusive


def _set(invoice: Invoice, path: str, value: str) -> None:
    path = SET_ALIASES.get(path, path)
    if path == "notes":
        invoice.notes = [*invoice.notes, value]
        return
    head, _, leaf = path.rpartition(".")
    target: Any = invoice
    if head:
        child = getattr(invoice, head)
        if child is None:
            child = Payment() if head == "payment" else Party()
            setattr(invoice, head, child)
        target = child
    setattr(target, leaf, value)


def set_field(invoice: Invoice, path: str, value: str) -> None:
    """Write ``value`` to an allowed path (model validation still applies)."""
    _set(invoice, path, value)


def _code_lines(invoice: Invoice, actions: Actions, rule: str) -> None:
    for line in invoice.lines:
        item = line.item
        text = " ".join(t for t in (item and item.name, item and item.description, line.note) if t)
        chosen = next((g for g in actions.gl_lines if g.matches(text)), None)
        if chosen is not None:
            line.coding = Coding(
                gl_account=chosen.account, cost_center=chosen.cost_center, source=f"rule:{rule}"
            )
        elif actions.gl_account and (line.coding is None or not line.coding.gl_account):
            cost_center = line.coding.cost_center if line.coding else None
            line.coding = Coding(
                gl_account=actions.gl_account, cost_center=cost_center, source=f"rule:{rule}"
            )


def fire(rule: Rule, invoice: Invoice) -> None:
    """Apply ``rule.then`` to ``invoice`` in place and record the firing."""
    fire_all([rule], invoice)


def fire_all(rules: list[Rule], invoice: Invoice) -> None:
    """Apply the fired rules in order; list fields are assigned once (each assignment validates)."""
    routing, firings = list(invoice.routing), list(invoice.firings)
    tags, deliver_to = dict.fromkeys(invoice.tags), dict.fromkeys(invoice.deliver_to)
    approvers: list[str] | None = None
    for rule in rules:
        then = rule.then
        routing.append(rule.name)
        firings.append(RuleFiring(rule=rule.name, file=rule.file, line=rule.line))
        if then.status:
            invoice.status = then.status
        tags.update(dict.fromkeys(then.tags))
        if then.approvers:
            approvers = list(then.approvers)
        if then.approval_chain:
            amount = approval_amount(invoice)
            chain = [a for step in then.approval_chain if step.applies(amount) for a in step.approvers]
            approvers = list(dict.fromkeys(chain))
        if then.gl_account or then.gl_lines:
            _code_lines(invoice, then, rule.name)
        for path, value in then.set.items():
            _set(invoice, path, value)
        deliver_to.update(dict.fromkeys(then.connectors))
    invoice.routing, invoice.firings = routing, firings
    if len(tags) != len(invoice.tags):
        invoice.tags = list(tags)
    if len(deliver_to) != len(invoice.deliver_to):
        invoice.deliver_to = list(deliver_to)
    if approvers is not None:
        invoice.approvers = approvers


def select(
    rules: list[Rule], data: dict[str, Any], invoice: Invoice, *, first_match: bool = False
) -> list[Rule]:
    """The rules that fire, in order (conditions only; nothing is changed)."""
    activation: CelInput | None = None
    fired: list[Rule] = []
    for rule in rules:
        if not rule.enabled or not when_holds(rule.when, data):
            continue
        if rule._program is not None:
            if activation is None:
                activation = cel_input(data, invoice)
            if not expr_holds(rule, activation):
                continue
        fired.append(rule)
        if rule.then.stop or first_match:
            break
    return fired


def apply(
    rules: list[Rule],
    invoice: Invoice,
    *,
    first_match: bool = False,
    context: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
) -> Invoice:
    """Run the rules over ``invoice``; return a copy with actions applied and firings recorded."""
    fired = select(rules, condition_data(invoice, context, facts), invoice, first_match=first_match)
    result = invoice.model_copy(deep=True)
    if fired:
        fire_all(fired, result)
    return result
