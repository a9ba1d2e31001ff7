"""Routing rules written as TOML files in ``rules/`` (reviewed in git like code).

A file holds ``[[rule]]`` tables::

    [[rule]]
    name = "large-invoices-need-cfo"
    priority = 10                      # lower runs first; ties by file then position
    when = { "totals.amount_due" = { gte = "10000" }, currency = "EUR" }
    then = { status = "needs_review", approvers = ["cfo@example.com"], tags = ["large"] }

``when`` maps a dotted path in the canonical invoice (plus ``source.*``) to a value (equality)
or an operator table: ``eq ne gt gte lt lte in not_in contains matches missing``. All
conditions must hold. ``then`` may set ``status`` (needs_review | approved | rejected), add
``tags``, set ``approvers``, and ``stop = true`` ends evaluation. ``[rules] match`` decides
whether every matching rule fires ("all", default) or only the first ("first").

Evaluation is pure: ``apply(rules, invoice)`` returns a new invoice with the firings recorded in
``routing``; nothing here performs I/O.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mailingest.errors import ConfigError
from mailingest.models import Invoice

OPERATORS = {"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "matches", "missing"}
_MISSING = object()


class Actions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["needs_review", "approved", "rejected"] | None = None
    tags: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    stop: bool = False


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None
    priority: int = 100
    enabled: bool = True
    when: dict[str, Any] = Field(default_factory=dict)
    then: Actions = Field(default_factory=Actions)
    origin: str | None = None

    @field_validator("when")
    @classmethod
    def _known_operators(cls, when: dict[str, Any]) -> dict[str, Any]:
        for path, cond in when.items():
            if isinstance(cond, dict):
                unknown = set(cond) - OPERATORS
                if unknown:
                    raise ValueError(
                        f"{path}: unknown operator(s) {sorted(unknown)}; use {sorted(OPERATORS)}"
                    )
                if "matches" in cond:
                    try:
                        re.compile(str(cond["matches"]))
                    except re.error as exc:
                        raise ValueError(f"{path}: bad regular expression: {exc}") from exc
        return when


def load_rules(path: Path) -> list[Rule]:
    """Every ``*.toml`` under ``path`` (sorted), rules ordered by priority; errors name file and rule."""
    if not path.exists():
        return []
    rules: list[Rule] = []
    problems: list[str] = []
    for file in sorted(path.glob("*.toml")):
        try:
            tree = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: not valid TOML: {exc}")
            continue
        unknown = set(tree) - {"rule"}
        if unknown:
            problems.append(
                f"{file}: unknown top-level key(s) {sorted(unknown)}; rules go in [[rule]] tables"
            )
        for index, raw in enumerate(tree.get("rule", [])):
            try:
                rules.append(Rule.model_validate({**raw, "origin": f"{file.name}#{index + 1}"}))
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"{file}: rule {raw.get('name', index + 1)}: {loc}: {err['msg']}")
    names = [r.name for r in rules]
    for name in sorted({n for n in names if names.count(n) > 1}):
        where = ", ".join(str(r.origin) for r in rules if r.name == name)
        problems.append(f"rule name {name!r} is used more than once ({where})")
    if problems:
        raise ConfigError("invalid routing rules:\n  " + "\n  ".join(problems))
    return sorted(rules, key=lambda r: r.priority)  # stable: file order breaks ties


def _lookup(data: Any, path: str) -> Any:
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _num(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "missing":
        return (actual is _MISSING or actual in (None, "", [])) == bool(expected)
    if actual is _MISSING or actual is None:
        return op in ("ne", "not_in")
    if op in ("gt", "gte", "lt", "lte"):
        a, b = _num(actual), _num(expected)
        if a is None or b is None:
            a, b = str(actual), str(expected)  # type: ignore[assignment]
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]  # type: ignore[operator]
    if op in ("eq", "ne"):
        same = (
            (_num(actual) == _num(expected))
            if _num(actual) is not None and _num(expected) is not None
            else str(actual).casefold() == str(expected).casefold()
        )
        return same if op == "eq" else not same
    if op in ("in", "not_in"):
        inside = str(actual).casefold() in {str(v).casefold() for v in expected}
        return inside if op == "in" else not inside
    if op == "contains":
        if isinstance(actual, list):
            return any(str(expected).casefold() == str(v).casefold() for v in actual)
        return str(expected).casefold() in str(actual).casefold()
    if op == "matches":
        return re.search(str(expected), str(actual)) is not None
    raise ValueError(op)


def matches(rule: Rule, data: dict[str, Any]) -> bool:
    for path, cond in rule.when.items():
        actual = _lookup(data, path)
        ops = cond if isinstance(cond, dict) else {"eq": cond}
        if not all(_compare(actual, op, expected) for op, expected in ops.items()):
            return False
    return True


def apply(
    rules: list[Rule], invoice: Invoice, *, first_match: bool = False, context: dict[str, Any] | None = None
) -> Invoice:
    """Run the rules over ``invoice``; return a copy with actions applied and firings recorded."""
    data = invoice.to_json_dict()
    if context:
        data["source"] = {**context, **data.get("source", {})}
    result = invoice.model_copy(deep=True)
    for rule in rules:
        if not rule.enabled or not matches(rule, data):
            continue
        result.routing.append(rule.name)
        if rule.then.status:
            result.status = rule.then.status
        result.tags = list(dict.fromkeys([*result.tags, *rule.then.tags]))
        if rule.then.approvers:
            result.approvers = list(rule.then.approvers)
        if rule.then.stop or first_match:
            break
    return result
