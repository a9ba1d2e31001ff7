"""Command line (DESIGN.md 3.2 — stable; scripts rely on names, output shapes and exit codes).

Exit codes: 0 success, 1 some input or operation failed, 2 usage or configuration error.
Bad input never prints a traceback; unexpected internal errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailingest import __version__, api_cli
from mailingest.errors import ConfigError, MailingestError, error_dict

EPILOG = """examples:
  mailingest serve                          run the daemon on embedded defaults (./data, loopback)
  mailingest serve --config /etc/mailingest/config.toml
  mailingest extract invoice.pdf mail.eml   print canonical invoices as JSON Lines, store nothing
  mailingest ingest mail.eml                store, route and deliver once, then exit
  mailingest eval ../shared/corpus          score extraction against *.truth.json files
  mailingest convert invoice.pdf --to ubl -o invoice.ubl.xml
                                            re-emit an invoice as UBL 2.1 (or --to cii) XML
  mailingest db upgrade                     create or migrate the database schema
  mailingest webhook-secret                 print a fresh whsec_ secret for a webhook endpoint
  mailingest api-key create --name ci --scopes invoices:read,analytics:read
                                            print a new API key (shown only this once)
  mailingest deliveries replay --invoice inv_... --connector erp
                                            send an invoice's events to a connector again
  mailingest auth ap-mailbox                sign a mailbox in (OAuth2 device code), store its token

environment: MAILINGEST_CONFIG names the config file; MAILINGEST_SECTION__KEY=value overrides
any config key (e.g. MAILINGEST_STORAGE__URL=postgresql://user@host/db).
docs: README.md and config.example.toml."""


def _config(args: argparse.Namespace) -> Any:
    from mailingest.config import load_config

    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "sandbox", False):
        from mailingest.api.sandbox import run_sandbox

        return run_sandbox(args)
    from mailingest import logs
    from mailingest.daemon import Daemon

    config = _config(args)
    logs.configure(config.log.level, config.log.format)
    Daemon(config).run()
    return 0


def _extract_record(path: str, templates_dir: str | None = None) -> tuple[dict[str, Any], bool]:
    from mailingest.errors import InputError
    from mailingest.pipeline.analyse import analyse

    record: dict[str, Any] = {"file": path, "invoices": [], "error": None}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        record["error"] = {
            "type": "file_error",
            "title": "Cannot read file",
            "detail": f"{path}: {exc.strerror}",
        }
        return record, False
    try:
        context = {"channel": "cli", "templates_dir": templates_dir}
        result = analyse(data, filename=Path(path).name, context=context)
    except InputError as exc:
        record["error"] = exc.as_dict()
        return record, False
    record["invoices"] = [inv.to_json_dict() for inv in result.invoices]
    record["documents"] = [
        {
            "path": o.doc.path,
            "filename": o.doc.filename,
            "kind": o.kind,
            "status": o.status,
            "invoices": len(o.invoices),
            **({"error": o.error} if o.error else {}),
        }
        for o in result.documents
    ]
    failures = [o for o in result.documents if o.status in ("failed", "unsupported")]
    if not record["invoices"] and (failures or not result.documents):
        record["error"] = (
            failures[0].error
            if failures
            else {
                "type": "no_documents",
                "title": "Nothing to extract",
                "detail": f"{path}: the message carries no attachment or document",
            }
        )
    return record, record["error"] is None


def cmd_extract(args: argparse.Namespace) -> int:
    from mailingest import logs

    logs.configure("error", "json")
    if args.templates:  # invoice2data templates: a broken one is reported once, before any file
        from mailingest.pipeline.extractors.templates import load_templates

        try:
            load_templates(args.templates)
        except MailingestError as exc:
            print(f"mailingest extract: {exc.detail}", file=sys.stderr)
            return 2
    ok = True
    for path in args.files:
        try:
            record, good = _extract_record(path, args.templates)
        except Exception as exc:  # noqa: BLE001 - contract: one JSON line per file, never a traceback
            record, good = {"file": path, "invoices": [], "error": error_dict(exc)}, False
        ok &= good
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0 if ok else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from mailingest import logs
    from mailingest.render.convert import convert_file

    logs.configure("error", "json")
    try:
        written = convert_file(Path(args.file), args.to, Path(args.output) if args.output else None)
    except MailingestError as exc:
        print(f"mailingest convert: {exc.detail}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mailingest import logs
    from mailingest.evaluate import evaluate, find_cases, format_report

    logs.configure("error", "json")
    dirs = [Path(d) for d in args.dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        print(f"mailingest eval: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        cases = find_cases(dirs)
    except ValueError as exc:  # a truth file that is not JSON
        print(f"mailingest eval: unreadable truth file: {exc}", file=sys.stderr)
        return 2
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()} if args.kinds else None
    cases = [c for c in cases if kinds is None or c.kind in kinds]
    if not cases:
        wanted = f" of kind {args.kinds}" if kinds else ""
        print(
            f"mailingest eval: no files{wanted} with a .truth.json in {', '.join(args.dirs)}", file=sys.stderr
        )
        return 2

    def progress(done: int, total: int) -> None:
        if total > 25 and (done % 25 == 0 or done == total):
            print(f"eval: {done}/{total} files", file=sys.stderr, flush=True)

    report = evaluate(cases, show_misses=args.show_misses, progress=progress)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from mailingest import logs
    from mailingest.ingest import ingest_files

    config = _config(args)
    logs.configure(config.log.level if args.verbose else "warning", config.log.format)
    results = ingest_files(config, args.files)
    for result in results:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0 if all(r.get("status") in ("processed", "duplicate") for r in results) else 1


def cmd_db(args: argparse.Namespace) -> int:
    from mailingest.storage import db

    config = _config(args)
    engine = db.make_engine(config.storage_url)
    if args.action == "upgrade":
        db.upgrade(engine, args.revision)
    print(f"{engine.url.render_as_string(hide_password=True)}: schema revision {db.current_revision(engine)}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from mailingest.models import Invoice
    from mailingest.pipeline.runner import initial_status
    from mailingest.routing import tooling
    from mailingest.routing.rules import apply, load_rules

    config = _config(args)
    path = Path(args.path) if args.path else config.rules.path
    first = config.rules.match == "first"
    if args.action == "check":
        out, err, code = tooling.check_report(path, first_match=first)
        print("\n".join(out))
        if err:
            print("invalid routing rules:\n  " + "\n  ".join(err), file=sys.stderr)
        return code
    rules = load_rules(path)
    if args.stored:
        for line in tooling.dry_run_stored(rules, config.storage_url, args.stored, first_match=first):
            print(line)
    ok = True
    for file in args.files:
        record, good = _extract_record(file)
        ok &= good
        for data in record["invoices"]:
            invoice = Invoice.model_validate(data)
            invoice.status = initial_status(invoice)  # type: ignore[assignment]
            print(tooling.describe(apply(rules, invoice, first_match=first), file=file))
        if record["error"]:
            print(json.dumps({"file": file, "error": record["error"]}))
    return 0 if ok else 1


def cmd_schema(_args: argparse.Namespace) -> int:
    from mailingest.models import Invoice

    print(json.dumps(Invoice.model_json_schema(by_alias=True), indent=2))
    return 0


def cmd_webhook_secret(_args: argparse.Namespace) -> int:
    from mailingest.connectors.webhook import new_secret

    print(new_secret())
    return 0


def _scopes_arg(value: str) -> list[str]:
    from mailingest.api.auth import check_scopes

    try:
        return check_scopes(value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration_arg(value: str) -> float:
    from mailingest.config_base import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_api_key(args: argparse.Namespace) -> int:
    """Manage API keys in the configured database (the schema is brought up to date first)."""
    from datetime import timedelta

    from mailingest.api import auth
    from mailingest.storage import db
    from mailingest.storage.tables import utcnow

    config = _config(args)
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        if args.action == "create":
            expires = utcnow() + timedelta(seconds=args.expires) if args.expires else None
            try:
                row, secret = auth.create_key(
                    session, name=args.name, scopes=args.scopes, expires_at=expires, vendor=args.vendor
                )
            except ValueError as exc:
                print(f"mailingest api-key: {exc}", file=sys.stderr)
                return 2
            print(secret)
            print(
                f"created {row.id} ({row.name}) with scopes {','.join(row.scopes)}; "
                "the key is shown only now, store it safely",
                file=sys.stderr,
            )
        elif args.action == "list":
            for key in auth.list_keys(session):
                sys.stdout.write(json.dumps(key.model_dump(mode="json", exclude={"key_hash"})) + "\n")
        else:
            revoked = auth.revoke_key(session, args.id)
            if revoked is None:
                print(f"mailingest api-key: no key {args.id}", file=sys.stderr)
                return 1
            print(f"revoked {revoked.id}")
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from mailingest.auth_cli import run

    return run(args)


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(config.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailingest",
        description="Take invoices out of mailboxes; turn them into structured, routed data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailingest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, func: Any, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if config:
            p.add_argument(
                "--config",
                "-c",
                metavar="PATH",
                help="TOML config file (default: $MAILINGEST_CONFIG, else built-in defaults)",
            )
        p.set_defaults(func=func)
        return p

    p = add("serve", "run the daemon: sources, pipeline, API, connectors", cmd_serve)
    p.add_argument("--sandbox", action="store_true", help="temporary database, sample invoices, test keys")
    p = add(
        "extract",
        "extract invoices from files and print JSON Lines; no database, no side effects",
        cmd_extract,
        config=False,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".eml, .pdf, .xml or other document files")
    p.add_argument("--templates", metavar="DIR", help="invoice2data YAML templates to apply (see docs)")
    p = add(
        "convert",
        "extract the invoice from a file and write it as UBL 2.1 (Peppol BIS 3) or CII XML",
        cmd_convert,
        config=False,
    )
    p.add_argument("file", metavar="FILE", help=".xml, .pdf, .eml or other document holding one invoice")
    p.add_argument(
        "--to", required=True, choices=["ubl", "cii"], help="output syntax: ubl or cii (Factur-X EN 16931)"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write here (default: stdout); several invoices get -1, -2 ... suffixes",
    )
    p = add(
        "eval",
        "score extraction against *.truth.json files: per-field and per-kind accuracy, speed",
        cmd_eval,
        config=False,
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="directories searched for FILE + FILE.truth.json")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--kinds", metavar="K1,K2", help="only these kinds (ubl, cii, facturx_pdf, pdf, eml, ...)")
    p.add_argument(
        "--show-misses", type=int, default=0, metavar="N", help="list N misses with expected and got values"
    )
    p = add(
        "ingest", "run files through the whole pipeline once (store, route, deliver), then exit", cmd_ingest
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--verbose", "-v", action="store_true", help="log each step")
    p = add("db", "database schema management", cmd_db)
    p.add_argument("action", choices=["upgrade", "current"], help="upgrade: migrate to the newest schema")
    p.add_argument("--revision", default="heads", help="target revision (default: heads, the newest)")
    p = add("rules", "check routing rule files, or show how they route given files", cmd_rules)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("check", "validate rule files: syntax, unknown fields, unreachable or conflicting rules"),
        ("test", "dry run: print what would fire for FILEs and/or stored invoices (--stored N)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--path", help="rules directory (default: [rules] path from the config)")
        action.add_argument(
            "--config", "-c", metavar="PATH", default=argparse.SUPPRESS, help="TOML config file"
        )
        if name == "test":
            action.add_argument("files", nargs="*", metavar="FILE", help=".eml, .pdf or .xml files to route")
            action.add_argument(
                "--stored", type=int, default=0, metavar="N", help="also dry-run the N newest stored invoices"
            )
    add("schema", "print the JSON Schema of the canonical invoice", cmd_schema, config=False)
    add(
        "webhook-secret", "print a new random whsec_ webhook signing secret", cmd_webhook_secret, config=False
    )
    p = add("api-key", "create, list and revoke API keys for the REST API", cmd_api_key)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    config_arg: dict[str, Any] = {"metavar": "PATH", "default": argparse.SUPPRESS, "help": "TOML config file"}
    action = actions.add_parser("create", help="create a key and print it (only this once)")
    action.add_argument("--name", required=True, help="what the key is for, e.g. 'erp-export'")
    action.add_argument(
        "--scopes",
        required=True,
        type=_scopes_arg,
        metavar="S1,S2",
        help="comma-separated: invoices:read, invoices:write, invoices:approve, rules:write, "
        "webhooks:manage, analytics:read, vendor:read (with --vendor), admin (admin implies all)",
    )
    action.add_argument("--expires", type=_duration_arg, metavar="DURATION", help="lifetime, e.g. 90d")
    action.add_argument("--vendor", metavar="VAT_OR_ID", help="vendor-portal key (with --scopes vendor:read)")
    action.add_argument("--config", "-c", **config_arg)
    action = actions.add_parser("list", help="print every key as a JSON line (never the secret)")
    action.add_argument("--config", "-c", **config_arg)
    action = actions.add_parser("revoke", help="revoke a key at once")
    action.add_argument("id", metavar="ID", help="key id (key_...)")
    action.add_argument("--config", "-c", **config_arg)
    api_cli.add_parser(sub)
    from mailingest import deliveries_cli

    deliveries_cli.add_parser(sub, config_arg)
    p = add(
        "auth",
        "authorise an OAuth2 IMAP account (device-code flow) and store its refresh token encrypted",
        cmd_auth,
    )
    p.add_argument("account", nargs="?", metavar="ACCOUNT", help="name of the [[sources.imap]] account")
    p.add_argument("--new-key", action="store_true", help="print a new token_key (Fernet key) and exit")
    add(
        "config",
        "validate the configuration and print it with defaults filled in (secrets redacted)",
        cmd_config,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mailingest: {exc.detail}", file=sys.stderr)
        return 2
    except MailingestError as exc:
        print(f"mailingest: {exc.title}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
