"""``mailingest rules check``: beyond loading — unknown fields, unreachable and conflicting rules.

Every finding is a ``Problem`` (``file:line: level: message``). Pure: takes loaded rules.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

from mailingest.models import Invoice
from mailingest.models.invoice import Line
from mailingest.routing.loader import Problem
from mailingest.routing.model import LIST_OPERATORS, Rule

# Namespaces filled at routing time (facts from vendor profiles, duplicate detection, enrichment,
# validation hooks, lookups) and the derived ``valid``: their keys are not checked.
FACT_NAMESPACES = frozenset({"vendor", "duplicate", "enrichment", "hooks", "lookups", "facts"})
DERIVED_PATHS = frozenset({"valid", "validation.codes"})
LINE_SHORTHANDS = frozenset({"gl_account", "cost_center"})  # a line's coding.gl_account / cost_center
_ANY = object()  # dict[str, ...] and Any: every key is fine


def _unwrap(tp: Any) -> Any:
    """Optional[X] → X, list[X] → ("list", X), dict[str, X] → _ANY; models stay models."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else _ANY
    if origin is list:
        return ("list", _unwrap(typing.get_args(tp)[0]))
    if origin is dict or tp is Any:
        return _ANY
    return tp


def _field_type(model: type[BaseModel], name: str) -> Any:
    for field_name, info in model.model_fields.items():
        if name in (field_name, info.alias):
            return _unwrap(info.annotation)
    return None


def resolve(model: Any, parts: list[str]) -> Any:
    """The type at ``parts`` below ``model``; ``None`` when the path does not exist."""
    node = model
    for part in parts:
        if node is _ANY:
            return _ANY
        if isinstance(node, tuple):  # a list: an index, then the element
            if not part.isdigit():
                return None
            node = node[1]
            continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            found = _field_type(node, part)
            if found is None:
                return None
            node = found
            continue
        return None  # a scalar has no children
    return node


def unknown_paths(when: dict[str, Any], base: Any = Invoice, prefix: str = "") -> list[str]:
    """Paths in ``when`` that are neither in the canonical invoice nor in a fact namespace."""
    bad: list[str] = []
    for path, cond in when.items():
        full = prefix + path
        parts = path.split(".")
        if base is Invoice and (parts[0] in FACT_NAMESPACES or path in DERIVED_PATHS):
            continue
        if base is Line and path in LINE_SHORTHANDS:
            continue
        target = resolve(base, parts)
        if target is None:
            bad.append(full)
            continue
        if isinstance(cond, dict):
            for op in LIST_OPERATORS & set(cond):
                element = target[1] if isinstance(target, tuple) else _ANY
                if element is not _ANY:
                    bad.extend(unknown_paths(cond[op], element, f"{full}.{op}."))
    return bad


def _key(rule: Rule) -> str:
    return json.dumps([rule.when, rule.expr], sort_keys=True, default=str)


def lint(rules: list[Rule], *, first_match: bool = False) -> list[Problem]:
    """Unknown fields, unreachable rules, same-condition rules that set different statuses."""
    problems: list[Problem] = []
    for rule in rules:
        for path in unknown_paths(rule.when):
            problems.append(
                Problem(
                    str(rule.file),
                    rule.line or 1,
                    f"rule {rule.name}: unknown field {path!r} "
                    "(not in the canonical invoice or a fact namespace)",
                )
            )
    blocker: Rule | None = None
    for rule in rules:
        if not rule.enabled:
            continue
        if blocker is not None:
            why = "first-match mode" if first_match and not blocker.then.stop else "stop = true"
            problems.append(
                Problem(
                    str(rule.file),
                    rule.line or 1,
                    f"rule {rule.name} is unreachable: "
                    f"{blocker.name} ({blocker.where}) always matches first ({why})",
                    "warning",
                )
            )
            continue
        if rule.unconditional and (rule.then.stop or first_match):
            blocker = rule
    seen: dict[str, Rule] = {}
    for rule in rules:
        if not rule.enabled or rule.then.status is None:
            continue
        other = seen.setdefault(_key(rule), rule)
        if other is not rule and other.then.status != rule.then.status:
            problems.append(
                Problem(
                    str(rule.file),
                    rule.line or 1,
                    f"rule {rule.name} conflicts with {other.name} ({other.where}): "
                    f"same condition, status {rule.then.status!r} vs {other.then.status!r}",
                    "warning",
                )
            )
    return problems
