"""``mailingest api-client create|list|revoke``: OAuth2 clients (service accounts) for the REST
API. ``create`` prints the client_id and the secret once; list never shows secrets."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any


def cmd_api_client(args: argparse.Namespace) -> int:
    from mailingest.api import oauth2
    from mailingest.config import load_config
    from mailingest.storage import db
    from mailingest.storage.tables import utcnow

    config = load_config(getattr(args, "config", None))
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        if args.action == "create":
            expires = utcnow() + timedelta(days=args.expires) if args.expires else None
            try:
                row, secret = oauth2.create_client(
                    session,
                    name=args.name,
                    scopes=args.scopes.split(","),
                    vendor=args.vendor,
                    expires_at=expires,
                )
            except ValueError as exc:
                print(f"mailingest api-client: {exc}", file=sys.stderr)
                return 2
            print(f"client_id={row.id}")
            print(f"client_secret={secret}")
            print(
                f"created {row.id} ({row.name}) with scopes {','.join(row.scopes)}"
                f"{f' for vendor {row.vendor}' if row.vendor else ''}; "
                "the secret is shown only now, store it safely",
                file=sys.stderr,
            )
        elif args.action == "list":
            for client in oauth2.list_clients(session):
                sys.stdout.write(json.dumps(client.model_dump(mode="json", exclude={"secret_hash"})) + "\n")
        else:
            revoked = oauth2.revoke_client(session, args.id)
            if revoked is None:
                print(f"mailingest api-client: no client {args.id}", file=sys.stderr)
                return 1
            print(f"revoked {revoked.id}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``api-client`` on the main parser's subcommands."""
    config_arg: dict[str, Any] = {"metavar": "PATH", "default": argparse.SUPPRESS, "help": "TOML config file"}
    text = "create, list and revoke OAuth2 clients (service accounts) for the REST API"
    p = sub.add_parser("api-client", help=text, description=text)
    p.set_defaults(func=cmd_api_client)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    action = actions.add_parser(
        "create", help="create a client and print client_id and secret (only this once)"
    )
    action.add_argument("name", metavar="NAME", help="what the client is for, e.g. 'erp-sync'")
    action.add_argument(
        "--scopes",
        required=True,
        metavar="S1,S2",
        help="comma-separated scopes (invoices:read, ..., analytics:read, vendor:read, admin)",
    )
    action.add_argument(
        "--vendor", metavar="VAT_OR_ID", help="bind to one vendor (with --scopes vendor:read)"
    )
    action.add_argument("--expires", type=float, metavar="DAYS", help="the client stops working after DAYS")
    action.add_argument("--config", "-c", **config_arg)
    action = actions.add_parser("list", help="print every client as a JSON line (never the secret)")
    action.add_argument("--config", "-c", **config_arg)
    action = actions.add_parser("revoke", help="revoke a client: no new tokens, issued tokens refused")
    action.add_argument("id", metavar="CLIENT_ID", help="cli_...")
    action.add_argument("--config", "-c", **config_arg)
