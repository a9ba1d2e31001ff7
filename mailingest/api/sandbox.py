"""``mailingest serve --sandbox``: the whole daemon on a throw-away SQLite database, seeded by
running the sample files in ``fixtures/`` through the real pipeline, with test credentials
printed at start so an integrator can try every endpoint without real mail.

What it prints (stdout, one ``NAME=value`` per line, easy to ``eval`` or parse):
``MI_URL``, ``MAILINGEST_STORAGE__URL`` (so ``mailingest api-key ...`` run with it in the
environment manages the sandbox's credentials), ``MI_ADMIN_KEY`` (admin),
``MI_READ_KEY`` (invoices:read),
``MI_ANALYTICS_KEY`` (analytics:read), ``MI_VENDOR_KEY`` (vendor:read, bound to
``MI_VENDOR``, the VAT id of a seeded seller), ``MI_CLIENT_ID`` /
``MI_CLIENT_SECRET`` (an OAuth2 client with invoices:read and analytics:read). ``MI_`` and not
``MAILINGEST_``: exported ``MAILINGEST_*`` variables are config overrides.

The sandbox keeps ``[api]`` and ``[log]`` of the given config (listen address, rate limits) and
nothing else: no mailboxes, no SMTP receiver, no connectors; the drop directory lives in the
temporary data dir. One seeded invoice is approved through the API's action so approval
analytics have data. Everything is deleted when the daemon stops.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from mailingest.config import Config, load_config

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SAMPLES = (
    "einvoice/*.xml",
    "einvoice/*.pdf",
    "pdf/de-buerobedarf.pdf",
    "pdf/fr-atelier-dupont.pdf",
    "pdf/en-harbour-supplies.pdf",
    "pdf/not-an-invoice.pdf",
)


def sample_files(root: Path = FIXTURES) -> list[str]:
    return [str(p) for pattern in SAMPLES for p in sorted(root.glob(pattern)) if ".truth" not in p.name]


def sandbox_config(base: Config, data_dir: Path) -> Config:
    return Config.model_validate(
        {
            "data_dir": str(data_dir),
            "api": base.api.model_dump(),
            "log": base.log.model_dump(),
            "sources": {"smtp": {"enabled": False}},
            "rules": {"path": str(data_dir / "rules")},
        }
    )


def seed(config: Config, files: list[str]) -> dict[str, str]:
    """Ingest ``files``, approve one invoice, create the test credentials; returns what to print."""
    from mailingest.api import actions, auth, oauth2
    from mailingest.ingest import ingest_files
    from mailingest.storage import db, tables

    ingest_files(config, files)
    engine = db.make_engine(config.storage_url)
    try:
        with Session(engine) as session:
            invoices = session.exec(select(tables.Invoice).order_by(col(tables.Invoice.id))).all()
            vendor = next((i.seller_vat_id for i in invoices if i.seller_vat_id), None) or "DE000000000"
            approvable = next((i.id for i in invoices if i.status in actions.ACTIONABLE), None)
        if approvable:
            actions.change_status(
                engine,
                invoice_id=approvable,
                action="approve",
                actor="sandbox",
                comment="approved by the sandbox seed",
                connectors=[],
                idempotency_key=None,
                request_print="",
            )
        out = {"MI_INVOICES": str(len(invoices))}
        with db.session_scope(engine) as session:
            for name, scopes, bound in (
                ("ADMIN", ["admin"], None),
                ("READ", ["invoices:read"], None),
                ("ANALYTICS", ["analytics:read"], None),
                ("VENDOR", ["vendor:read"], vendor),
            ):
                _row, secret = auth.create_key(
                    session, name=f"sandbox-{name.lower()}", scopes=scopes, vendor=bound
                )
                out[f"MI_{name}_KEY"] = secret
            client, client_secret = oauth2.create_client(
                session, name="sandbox-client", scopes=["invoices:read", "analytics:read"]
            )
            out["MI_VENDOR"] = auth.normalize_vendor(vendor)
            out["MI_CLIENT_ID"] = client.id
            out["MI_CLIENT_SECRET"] = client_secret
        return out
    finally:
        engine.dispose()


def run_sandbox(args: argparse.Namespace) -> int:
    from mailingest import logs
    from mailingest.config import parse_listen
    from mailingest.daemon import Daemon

    base = load_config(getattr(args, "config", None))
    data_dir = Path(tempfile.mkdtemp(prefix="mailingest-sandbox-"))
    try:
        config = sandbox_config(base, data_dir)
        logs.configure(config.log.level, config.log.format)  # stderr; the credentials go to stdout
        files = sample_files()
        printed: dict[str, Any] = seed(config, files)
        host, port = parse_listen(config.api.listen)
        print(
            f"mailingest sandbox: {printed.pop('MI_INVOICES')} sample invoices in {data_dir}",
            file=sys.stderr,
        )
        print(f"MI_URL=http://{host}:{port}")
        print(f"MAILINGEST_STORAGE__URL={config.storage_url}")  # lets the CLI reach the sandbox
        for name, value in printed.items():
            print(f"{name}={value}")
        sys.stdout.flush()
        Daemon(config).run()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0
