"""Source status in ``/healthz`` and ``/metrics``: the app with a status callback, a real
``ImapSource`` whose Dovecot goes away, and a real OAuth2 token endpoint revoking the refresh token.
No mocks."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from mailingest.api.app import create_app
from mailingest.sources.imap import ImapSource
from mailingest.storage import db
from tests.dovecot import Dovecot
from tests.test_api import request
from tests.test_imap import Store, account, store, store_url, wait_for
from tests.test_imap_oauth import AuthServer, auth, dovecot, oauth_account

__all__ = ["auth", "dovecot", "store", "store_url"]  # fixtures reused from test_imap(_oauth)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


def entry(**overrides: Any) -> dict[str, Any]:
    now = time.time()
    base: dict[str, Any] = {
        "source": "imap",
        "account": "ap",
        "folder": "INBOX",
        "connected": True,
        "healthy": True,
        "last_error": None,
        "last_ok_at": now,
        "failing_since": None,
    }
    return base | overrides


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text output (None: not there)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return None


def test_a_brief_failure_is_shown_but_does_not_degrade_health(engine: Engine) -> None:
    blip = entry(connected=False, last_error="connection reset", failing_since=time.time())
    app = create_app(engine, sources_status=lambda: {"imap:ap/INBOX": blip})
    response = request(app, "GET", "/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["sources"]["imap:ap/INBOX"]["last_error"] == "connection reset"
    metrics = request(app, "GET", "/metrics").text
    assert sample(metrics, "mailingest_source_up", source="imap", account="ap", folder="INBOX") == 0


@pytest.mark.parametrize(
    "bad",
    [
        entry(connected=False, healthy=False, last_error="refused", failing_since=time.time() - 600),
        entry(token_ok=False, refresh_token_expires_at=None),
    ],
    ids=["failing-past-grace", "token-refused"],
)
def test_a_lasting_failure_or_a_refused_token_degrades_health(engine: Engine, bad: dict[str, Any]) -> None:
    app = create_app(engine, sources_status=lambda: {"imap:ap/INBOX": bad})
    response = request(app, "GET", "/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"


def test_oauth_gauges_once_per_account(engine: Engine) -> None:
    expires_at = time.time() + 3600
    oauth = {"token_ok": True, "refresh_token_expires_at": expires_at}
    status = {
        "imap:ap/INBOX": entry(**oauth),
        "imap:ap/Archive": entry(folder="Archive", connected=False, **oauth),
        "graph:m365/Inbox": entry(source="graph", account="m365", folder="Inbox", token_ok=False),
    }
    app = create_app(engine, sources_status=lambda: status)
    metrics = request(app, "GET", "/metrics").text
    assert sample(metrics, "mailingest_source_up", source="imap", account="ap", folder="Archive") == 0
    assert sample(metrics, "mailingest_source_up", source="graph", account="m365", folder="Inbox") == 1
    assert sample(metrics, "mailingest_oauth_token_ok", account="ap") == 1
    assert sample(metrics, "mailingest_oauth_token_ok", account="m365") == 0
    remaining = sample(metrics, "mailingest_oauth_refresh_token_expires_seconds", account="ap")
    assert remaining is not None and 3500 < remaining <= 3600
    assert sample(metrics, "mailingest_oauth_refresh_token_expires_seconds", account="m365") is None
    assert metrics.count("mailingest_oauth_token_ok{") == 2


def test_without_a_status_callback_sources_are_left_out(engine: Engine) -> None:
    app = create_app(engine)
    assert "sources" not in request(app, "GET", "/healthz").json()
    assert "mailingest_source_up" not in request(app, "GET", "/metrics").text


def test_a_stopped_server_turns_unhealthy_after_the_grace_period(store: Store, tmp_path: Path) -> None:
    server = Dovecot()
    server.start()
    source = ImapSource(account(server, tmp_path), store.ledger, grace=1.0)
    source.start(store.ledger.accept)
    try:
        wait_for(lambda: source.status()["ap/INBOX"]["last_ok_at"], what="connected")
        app = create_app(store.engine, sources_status=source.status)
        assert request(app, "GET", "/healthz").status_code == 200
        server.stop()

        def unhealthy() -> dict[str, Any] | None:
            status = source.status()["ap/INBOX"]
            return None if status["healthy"] else status

        down = wait_for(unhealthy, timeout=15, what="unhealthy after the grace period")
        assert down is not None and not down["connected"] and down["last_error"]
        assert down["failing_since"] is not None and down["last_ok_at"] < time.time() - 1.0
        assert request(app, "GET", "/healthz").status_code == 503
        metrics = request(app, "GET", "/metrics").text
        assert sample(metrics, "mailingest_source_up", source="imap", account="ap", folder="INBOX") == 0
    finally:
        source.stop()
        server.cleanup()


def test_a_revoked_refresh_token_shows_in_metrics_at_once(
    dovecot: Dovecot, auth: AuthServer, store: Store, tmp_path: Path
) -> None:
    auth.refresh_expires_in = 3 * 86400
    source = ImapSource(oauth_account(dovecot, auth, tmp_path), store.ledger)
    source.start(store.ledger.accept)
    try:
        app = create_app(store.engine, sources_status=source.status)
        wait_for(lambda: source.status()["ap/INBOX"]["last_ok_at"], what="connected")
        metrics = request(app, "GET", "/metrics").text
        assert sample(metrics, "mailingest_oauth_token_ok", account="ap") == 1
        remaining = sample(metrics, "mailingest_oauth_refresh_token_expires_seconds", account="ap")
        assert remaining is not None and 3 * 86400 - 60 < remaining <= 3 * 86400
        auth.revoke()
        dovecot.stop()  # the next login needs a token, and the refresh token is gone
        dovecot.start()
        wait_for(lambda: source.status()["ap/INBOX"]["token_ok"] is False, timeout=15, what="token refused")
        metrics = request(app, "GET", "/metrics").text
        assert sample(metrics, "mailingest_oauth_token_ok", account="ap") == 0
        response = request(app, "GET", "/healthz")  # no grace period: only a person can fix this
        assert response.status_code == 503
        assert "refresh token" in response.json()["sources"]["ap/INBOX"]["last_error"]
    finally:
        source.stop()
