"""Routing rules written as TOML files in ``rules/`` (reviewed in git like code).

A file holds ``[[rule]]`` tables::

    [[rule]]
    name = "large-invoices-need-cfo"
    priority = 10                      # lower runs first; ties by file then position
    when = { "totals.amount_due" = { gte = "10000" }, currency = "EUR" }
    expr = 'vendor.invoice_count > 3'  # optional CEL condition (cel-python), must hold too
    then = { status = "needs_review", approvers = ["cfo@example.com"], tags = ["large"] }

The full language (operators, facts, actions) is in docs/routing.md and rules/README.md. This
module is the public face: ``load_rules`` (raises ``ConfigError`` listing ``file:line``
problems) and ``apply`` (pure). ``model``, ``conditions``, ``engine``, ``loader``, ``check``,
``hooks`` and ``live`` hold the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailingest.errors import ConfigError
from mailingest.routing.conditions import MISSING, compare, lookup, when_holds
from mailingest.routing.engine import apply, condition_data
from mailingest.routing.loader import Problem, load_dir
from mailingest.routing.model import OPERATORS, Actions, Rule

__all__ = [
    "OPERATORS",
    "Actions",
    "Problem",
    "Rule",
    "apply",
    "condition_data",
    "load_rules",
    "matches",
]
_MISSING = MISSING
_lookup = lookup
_compare = compare


def load_rules(path: Path) -> list[Rule]:
    """Every ``*.toml`` under ``path`` (sorted), rules ordered by priority; errors name file:line."""
    rules, problems = load_dir(path)
    if problems:
        raise ConfigError("invalid routing rules:\n  " + "\n  ".join(str(p) for p in problems))
    return rules


def matches(rule: Rule, data: dict[str, Any]) -> bool:
    """``when`` only (the CEL ``expr`` needs an activation; see ``engine.apply``)."""
    return when_holds(rule.when, data)
