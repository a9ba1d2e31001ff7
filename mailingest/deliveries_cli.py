"""``mailingest deliveries``: look at the outbox and send deliveries again.

``list`` prints deliveries as JSON Lines (newest first); ``show ID`` one delivery with every
attempt; ``replay`` sends deliveries again — by event, by invoice or by time range — each going
back to ``pending`` on the same row with a fresh retry schedule and the same ``webhook-id``
(receivers de-duplicate by it). The running daemon picks replayed deliveries up at its next
poll. Exit codes: 0 done, 1 nothing matched / no such delivery, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from mailingest.config import load_config
from mailingest.config_base import parse_duration
from mailingest.storage import db, repo, tables
from mailingest.storage.tables import utcnow

STATUSES = ("pending", "delivered", "dead")


def parse_time(value: str) -> datetime:
    """ISO 8601 (``2026-11-26``, ``2026-11-26T08:00:00Z``; naive means UTC) or a duration
    meaning that long ago (``2h``, ``3d``)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            return utcnow() - _ago(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is neither an ISO 8601 time nor a duration like 2h"
            ) from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ago(value: str) -> Any:
    from datetime import timedelta

    return timedelta(seconds=parse_duration(value))


def add_parser(sub: Any, config_arg: dict[str, Any]) -> None:
    """Register ``deliveries`` on the CLI's sub-command parser (called by ``cli.build_parser``)."""
    p = sub.add_parser(
        "deliveries",
        help="list outbox deliveries and replay them (by event, invoice or time range)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="print deliveries as JSON Lines, newest first")
    a.add_argument("--status", choices=STATUSES)
    a.add_argument("--connector", metavar="NAME")
    a.add_argument("--invoice", metavar="ID", help="deliveries of events about this invoice")
    a.add_argument("--event", metavar="ID")
    a.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100; 0: all)")
    a.add_argument("--config", "-c", **config_arg)
    a = actions.add_parser("show", help="print one delivery with every attempt as JSON")
    a.add_argument("id", metavar="ID", help="delivery id (dlv_...)")
    a.add_argument("--config", "-c", **config_arg)
    a = actions.add_parser(
        "replay",
        help="send deliveries again: --event, --invoice or --since/--until, optionally per connector",
    )
    what = a.add_mutually_exclusive_group(required=True)
    what.add_argument("--event", metavar="ID", help="every delivery of this event")
    what.add_argument("--invoice", metavar="ID", help="every delivery of events about this invoice")
    what.add_argument("--since", type=parse_time, metavar="TIME", help="events created at or after TIME")
    a.add_argument("--until", type=parse_time, metavar="TIME", help="with --since: events before TIME")
    a.add_argument("--connector", metavar="NAME", help="only deliveries to this connector")
    a.add_argument("--status", choices=STATUSES, help="only deliveries in this state (e.g. dead)")
    a.add_argument("--config", "-c", **config_arg)
    a = actions.add_parser(
        "enable", help="re-enable a connector a 410 Gone disabled (takes effect at the daemon's next start)"
    )
    a.add_argument("connector", metavar="NAME")
    a.add_argument("--config", "-c", **config_arg)


def run(args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "config", None))
    engine = db.make_engine(config.storage_url)
    db.upgrade(engine)
    try:
        with db.session_scope(engine) as session:
            if args.action == "list":
                rows = repo.find_deliveries(
                    session,
                    status=args.status,
                    connector=args.connector,
                    invoice=args.invoice,
                    event=args.event,
                    limit=args.limit or None,
                )
                for delivery, event in rows:
                    sys.stdout.write(json.dumps(repo.delivery_view(delivery, event)) + "\n")
                return 0
            if args.action == "show":
                row = session.get(tables.Delivery, args.id)
                if row is None:
                    print(f"mailingest deliveries: no delivery {args.id}", file=sys.stderr)
                    return 1
                ev = session.get(tables.Event, row.event_seq)
                assert ev is not None
                view = repo.delivery_view(row, ev)
                view["attempts"] = [repo.attempt_view(a) for a in repo.attempts_of(session, row.id)]
                print(json.dumps(view, indent=2))
                return 0
            if args.action == "enable":
                if not repo.enable_connector(session, args.connector, actor="cli"):
                    print(
                        f"mailingest deliveries: connector {args.connector} is not disabled", file=sys.stderr
                    )
                    return 1
                print(f"enabled {args.connector}; restart the daemon to deliver to it again", file=sys.stderr)
                return 0
            if args.until is not None and args.since is None:
                print("mailingest deliveries: --until needs --since", file=sys.stderr)
                return 2
            chosen = repo.select_for_replay(
                session,
                event=args.event,
                invoice=args.invoice,
                since=args.since,
                until=args.until,
                connector=args.connector,
                status=args.status,
            )
            done = repo.replay_deliveries(session, chosen, actor="cli")
            for delivery in done:
                sys.stdout.write(
                    json.dumps(
                        {"id": delivery.id, "event_id": delivery.event_id, "connector": delivery.connector}
                    )
                    + "\n"
                )
            for name in repo.disabled_connectors(session, sorted({d.connector for d in done})):
                print(
                    f"mailingest deliveries: connector {name} is disabled (410 Gone); its deliveries wait",
                    file=sys.stderr,
                )
            skipped = len(chosen) - len(done)
            note = f" ({skipped} being sent right now left alone)" if skipped else ""
            print(f"replaying {len(done)} deliveries{note}", file=sys.stderr)
            return 0 if done else 1
    finally:
        engine.dispose()
