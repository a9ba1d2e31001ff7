"""What ``mailingest rules check`` and ``mailingest rules test`` print (the CLI stays thin), and
the same checks and dry runs as data for the API (``/v1/rules``, ``mailingest.api.rules``).

Drafts are checked in a private temporary directory: the rules directory is never written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mailingest.models import Invoice
from mailingest.routing import live
from mailingest.routing.check import lint
from mailingest.routing.engine import apply
from mailingest.routing.loader import Problem, load_dir
from mailingest.routing.model import Rule

if TYPE_CHECKING:
    from sqlmodel import Session

    from mailingest.storage.tables import Invoice as InvoiceRow

DRAFT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.toml$")
MODEL_KEYS = frozenset(info.alias or name for name, info in Invoice.model_fields.items())
_KINDS = (
    ("unknown field", "unknown_field"),
    ("is unreachable", "unreachable"),
    ("conflicts with", "conflict"),
)


def check_report(path: Path, *, first_match: bool = False) -> tuple[list[str], list[str], int]:
    """(stdout lines, stderr lines, exit code): 0 clean, 1 lint findings, 2 files that do not load.

    Load problems (syntax, bad values, bad CEL) go to stderr like every configuration error;
    lint findings (unknown fields, unreachable and conflicting rules) and the rule list to stdout.
    """
    rules, problems = load_dir(path)
    findings = lint(rules, first_match=first_match)
    out = [str(p) for p in findings]
    if problems or findings:
        everything = [*problems, *findings]
        errors = sum(p.level == "error" for p in everything)
        warnings = len(everything) - errors
        out.append(f"{path}: {len(rules)} rule(s) loaded, {errors} error(s), {warnings} warning(s)")
    else:
        out.append(f"{path}: {len(rules)} rule(s) OK")
    for rule in rules:
        flag = "" if rule.enabled else "  [disabled]"
        out.append(f"  {rule.priority:>4}  {rule.name}  ({rule.where}){flag}")
    return out, [str(p) for p in problems], 2 if problems else 1 if findings else 0


def for_dry_run(invoice: Invoice, status: str) -> Invoice:
    """The invoice as it stood before routing: outputs of earlier rule runs removed."""
    return invoice.model_copy(
        update={"status": status, "routing": [], "firings": [], "approvers": [], "deliver_to": []}, deep=True
    )


def describe(routed: Invoice, **extra: Any) -> str:
    return json.dumps(
        {
            **extra,
            "number": routed.number,
            "status": routed.status,
            "routing": routed.routing,
            "firings": [f"{f.rule} ({f.file}:{f.line})" for f in routed.firings],
            "tags": routed.tags,
            "approvers": routed.approvers,
            "deliver_to": routed.deliver_to,
            "gl_accounts": [line.coding.gl_account if line.coding else None for line in routed.lines],
        },
        ensure_ascii=False,
    )


def facts_for(session: Session, row: InvoiceRow) -> tuple[Invoice, dict[str, Any], dict[str, Any]]:
    """A stored invoice with what rules would see beside it: (invoice as stored, context, facts).
    Raises pydantic's ``ValidationError`` when the stored data is not a canonical invoice."""
    from mailingest.storage.tables_vendors import Vendor
    from mailingest.vendors.history import load_history, vendor_facts

    invoice = Invoice.model_validate({k: v for k, v in row.data.items() if k in MODEL_KEYS})
    facts: dict[str, Any] = {}
    if invoice.duplicate is not None:
        facts["duplicate"] = invoice.duplicate.model_dump(mode="json")
    if invoice.enrichment is not None:
        facts["enrichment"] = invoice.enrichment
    vendor = session.get(Vendor, row.vendor_id) if row.vendor_id else None
    if vendor is not None:
        hist = load_history(session, vendor.id, invoice.currency)
        facts["vendor"] = vendor_facts(vendor, hist, invoice, datetime.now(UTC).date())
    source = invoice.source
    context = {"mailbox": source.mailbox, "from": source.from_, "subject": source.subject} if source else {}
    return invoice, context, facts


def stored(storage_url: str, limit: int) -> Iterator[tuple[Invoice, dict[str, Any], dict[str, Any]]]:
    """The newest stored invoices with the facts rules would see: (invoice as stored, context,
    facts)."""
    from sqlmodel import Session, col, select

    from mailingest.storage import db, tables

    engine = db.make_engine(storage_url)
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(tables.Invoice).order_by(col(tables.Invoice.created_at).desc()).limit(limit)
            )
            for row in rows.all():
                yield facts_for(session, row)
    finally:
        engine.dispose()


def dry_run_stored(rules: list[Rule], storage_url: str, limit: int, *, first_match: bool) -> Iterator[str]:
    """One JSON line per stored invoice: what would fire now, next to what is stored."""
    from mailingest.pipeline.runner import initial_status

    for invoice, context, facts in stored(storage_url, limit):
        before = for_dry_run(invoice, initial_status(invoice))
        routed = apply(rules, before, first_match=first_match, context=context, facts=facts)
        yield describe(routed, id=invoice.id, stored_status=invoice.status, stored_routing=invoice.routing)


# --- the same as data, for the API -------------------------------------------------------------


def _plain(value: Any) -> Any:
    """TOML values (dates, times) as JSON-safe values."""
    return json.loads(json.dumps(value, default=str))


def rule_view(rule: Rule) -> dict[str, Any]:
    """One loaded rule as JSON: where it is written and what it says (``then`` without defaults)."""
    return {
        "name": rule.name,
        "description": rule.description,
        "file": rule.file,
        "line": rule.line,
        "priority": rule.priority,
        "enabled": rule.enabled,
        "when": _plain(rule.when),
        "expr": rule.expr,
        "then": rule.then.model_dump(mode="json", exclude_defaults=True),
    }


def finding(problem: Problem, *, loading: bool = False) -> dict[str, Any]:
    """A ``Problem`` as JSON with its kind: syntax / invalid (the file does not load) or
    unknown_field / unreachable / conflict (``rules check`` lint)."""
    if loading:
        syntax = "not valid TOML" in problem.message or "not UTF-8" in problem.message
        kind = "syntax" if syntax else "invalid"
    else:
        kind = next((k for text, k in _KINDS if text in problem.message), "lint")
    return {
        "file": problem.file,
        "line": problem.line,
        "level": problem.level,
        "kind": kind,
        "message": problem.message,
    }


def load_draft(
    text: str, *, name: str = "draft.toml", alongside: Path | None = None
) -> tuple[list[Rule], list[Problem]]:
    """Load a draft rule file as if it were saved as ``name`` in a rules directory.

    With ``alongside`` (a rules directory) the draft is loaded together with copies of that
    directory's other ``*.toml`` files (replacing the one called ``name``), so unreachable rules,
    conflicts and duplicate names across files show. Everything happens in a private temporary
    directory; files are reported by bare name. ``ValueError`` for a bad ``name``."""
    if not DRAFT_NAME.match(name):
        raise ValueError(f"name {name!r}: a file name ending in .toml (letters, digits, _ . -)")
    with tempfile.TemporaryDirectory(prefix="mailingest-rules-") as tmp:
        root = Path(tmp)
        if alongside is not None and alongside.is_dir():
            for file in sorted(alongside.glob("*.toml")):
                if file.name != name and file.is_file():
                    shutil.copyfile(file, root / file.name)
        (root / name).write_text(text, encoding="utf-8")
        rules, problems = load_dir(root)
    prefix = str(root) + os.sep
    for rule in rules:
        if rule.file:
            rule.file = rule.file.removeprefix(prefix)
    problems = [
        Problem(p.file.removeprefix(prefix), p.line, p.message.replace(prefix, ""), p.level) for p in problems
    ]
    return rules, problems


def check_result(rules: list[Rule], problems: list[Problem], *, first_match: bool) -> dict[str, Any]:
    """What ``mailingest rules check`` reports, as data: ``valid`` is false when any finding is
    an error (a file that does not load, an unknown field); warnings do not invalidate."""
    findings = [finding(p, loading=True) for p in problems]
    findings += [finding(p) for p in lint(rules, first_match=first_match)]
    errors = sum(f["level"] == "error" for f in findings)
    return {
        "valid": errors == 0,
        "errors": errors,
        "warnings": len(findings) - errors,
        "findings": sorted(findings, key=lambda f: (f["file"], f["line"])),
        "rules": [rule_view(r) for r in rules],
    }


def active_rules(path: Path) -> tuple[list[Rule], list[Problem], dict[str, Any] | None]:
    """The rules in force for ``path``: a running daemon's live set when this process has one
    for that path (a broken edit then still shows the last good rules, with the error in the
    status), else the files as they are now. Returns (rules, load problems, live status)."""
    current = live._current
    if current is not None and current.path.resolve() == path.resolve():
        return list(current.rules), [], current.status()
    rules, problems = load_dir(path)
    return rules, problems, None


def dry_run_row(session: Session, row: InvoiceRow, rules: list[Rule], *, first_match: bool) -> dict[str, Any]:
    """What the rules would do to one stored invoice now (validation hooks are not called)."""
    from mailingest.pipeline.runner import initial_status

    base = {"id": row.id, "number": row.number, "seller_name": row.seller_name, "stored_status": row.status}
    try:
        invoice, context, facts = facts_for(session, row)
    except ValidationError as exc:
        return {**base, "error": f"stored data is not a canonical invoice: {exc.error_count()} error(s)"}
    before = for_dry_run(invoice, initial_status(invoice))
    routed = apply(rules, before, first_match=first_match, context=context, facts=facts)
    return {
        **base,
        "status": routed.status,
        "status_changed": routed.status != row.status,
        "fired": [{"rule": f.rule, "file": f.file, "line": f.line} for f in routed.firings],
        "stored_routing": invoice.routing,
        "approvers": routed.approvers,
        "tags": routed.tags,
        "deliver_to": routed.deliver_to,
        "gl_accounts": [line.coding.gl_account if line.coding else None for line in routed.lines],
    }


def summarize(rules: list[Rule], results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts over a dry run: firings per rule (every enabled rule listed, 0 when it never
    fired), status changes against the stored status, resulting statuses, invoices not routable."""
    fired: Counter[str] = Counter({r.name: 0 for r in rules if r.enabled})
    changes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    count = errors = 0
    for result in results:
        count += 1
        if "error" in result:
            errors += 1
            continue
        fired.update(f["rule"] for f in result["fired"])
        statuses[result["status"]] += 1
        if result["status_changed"]:
            changes[f"{result['stored_status']} -> {result['status']}"] += 1
    return {
        "invoices": count,
        "errors": errors,
        "fired": dict(fired),
        "never_fired": [name for name, n in fired.items() if n == 0],
        "statuses": dict(statuses),
        "status_changes": dict(changes),
        "changed": sum(changes.values()),
    }
