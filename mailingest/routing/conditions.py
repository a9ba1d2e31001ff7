"""Condition evaluation: ``when`` tables (path → value or operator table) and CEL ``expr``.

Pure functions. CEL goes through cel-python (``celpy``, see ``routing.cel``): compiled once when
the rules load, so a bad expression is a load error; an evaluation error means the rule does not
match (logged).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from mailingest.routing.cel import CelInput, cel_input, compile_expr
from mailingest.routing.model import Rule

log = structlog.get_logger("mailingest.routing")
MISSING: Any = object()
_SPLIT: dict[str, tuple[str, ...]] = {}


def lookup(data: Any, path: str) -> Any:
    """``a.b.0.c`` into dicts and lists; dict keys that contain dots (``extraction.fields`` uses
    ``totals.amount_due`` as a key) are found by joining the following parts."""
    parts = _SPLIT.get(path) or _SPLIT.setdefault(path, tuple(path.split(".")))
    node = data
    i, n = 0, len(parts)
    while i < n:
        part = parts[i]
        if isinstance(node, dict):
            if part in node:
                node, i = node[part], i + 1
                continue
            for j in range(n, i + 1, -1):
                key = ".".join(parts[i:j])
                if key in node:
                    node, i = node[key], j
                    break
            else:
                return MISSING
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node, i = node[int(part)], i + 1
        else:
            return MISSING
    return node


def _num(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return str(actual).casefold() == str(expected).casefold()
    a, b = _num(actual), _num(expected)
    if a is not None and b is not None:
        return a == b
    return str(actual).casefold() == str(expected).casefold()


def compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "missing":
        return (actual is MISSING or actual in (None, "", [], {})) == bool(expected)
    if actual is MISSING or actual is None:
        return op in ("ne", "not_in")
    if op in ("gt", "gte", "lt", "lte"):
        a, b = _num(actual), _num(expected)
        if a is None or b is None:
            a, b = str(actual), str(expected)  # type: ignore[assignment]
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]  # type: ignore[operator]
    if op in ("eq", "ne"):
        same = _equal(actual, expected)
        return same if op == "eq" else not same
    if op in ("in", "not_in"):
        inside = any(_equal(actual, v) for v in expected)
        return inside if op == "in" else not inside
    if op == "contains":
        if isinstance(actual, list):
            return any(_equal(v, expected) for v in actual)
        return str(expected).casefold() in str(actual).casefold()
    if op == "matches":
        return re.search(str(expected), str(actual)) is not None
    if op in ("any", "all"):
        if not isinstance(actual, list):
            return False
        hits = (when_holds(expected, item) for item in actual)
        return any(hits) if op == "any" else bool(actual) and all(hits)
    raise ValueError(op)


def when_holds(when: dict[str, Any], data: Any) -> bool:
    for path, cond in when.items():
        actual = lookup(data, path)
        ops = cond if isinstance(cond, dict) else {"eq": cond}
        if not all(compare(actual, op, expected) for op, expected in ops.items()):
            return False
    return True


cel_activation = cel_input  # the name before routing.cel


__all__ = [
    "MISSING",
    "cel_activation",
    "cel_input",
    "compare",
    "compile_expr",
    "expr_holds",
    "lookup",
    "when_holds",
]


def expr_holds(rule: Rule, activation: CelInput) -> bool:
    if rule._program is None:
        return True
    try:
        result = rule._program.evaluate(activation)
    except Exception as exc:  # noqa: BLE001 - any CEL evaluation error means "does not match"
        log.warning(
            "rule expression failed; rule does not match", rule=rule.name, where=rule.where, error=str(exc)
        )
        return False
    if isinstance(result, Exception):
        log.warning(
            "rule expression failed; rule does not match", rule=rule.name, where=rule.where, error=str(result)
        )
        return False
    return bool(result)
