"""What ``mailingest rules check`` and ``mailingest rules test`` print (the CLI stays thin)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailingest.models import Invoice
from mailingest.routing.check import lint
from mailingest.routing.engine import apply
from mailingest.routing.loader import load_dir
from mailingest.routing.model import Rule


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


def stored(storage_url: str, limit: int) -> Iterator[tuple[Invoice, dict[str, Any], dict[str, Any]]]:
    """The newest stored invoices with the facts rules would see: (invoice as stored, context,
    facts)."""
    from sqlmodel import Session, col, select

    from mailingest.storage import db, tables
    from mailingest.storage.tables_vendors import Vendor
    from mailingest.vendors.history import load_history, vendor_facts

    engine = db.make_engine(storage_url)
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(tables.Invoice).order_by(col(tables.Invoice.created_at).desc()).limit(limit)
            )
            for row in rows.all():
                invoice = Invoice.model_validate(row.data)
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
                context = (
                    {"mailbox": source.mailbox, "from": source.from_, "subject": source.subject}
                    if source
                    else {}
                )
                yield invoice, context, facts
    finally:
        engine.dispose()


def dry_run_stored(rules: list[Rule], storage_url: str, limit: int, *, first_match: bool) -> Iterator[str]:
    """One JSON line per stored invoice: what would fire now, next to what is stored."""
    from mailingest.pipeline.runner import initial_status

    for invoice, context, facts in stored(storage_url, limit):
        before = for_dry_run(invoice, initial_status(invoice))
        routed = apply(rules, before, first_match=first_match, context=context, facts=facts)
        yield describe(routed, id=invoice.id, stored_status=invoice.status, stored_routing=invoice.routing)
