"""OAuth2 (SASL XOAUTH2) login for IMAP accounts, against a real Dovecot whose oauth2 passdb asks
a real HTTP server on loopback whether a bearer token is valid. That server (``AuthServer``) is
also the token endpoint the account gets its tokens from, so a test can revoke refresh tokens,
expire access tokens or refuse the client exactly as Microsoft or Google would. No mocks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from mailingest.config import ImapSourceConfig
from mailingest.errors import SourceError
from mailingest.oauth import TokenProvider
from mailingest.sources.imap_session import connect
from tests.dovecot import Dovecot
from tests.formserver import FormServer
from tests.test_imap import Store, invoice_mail, running, store, store_url, wait_for

__all__ = ["store", "store_url"]  # fixtures reused from test_imap

CLIENT_ID, CLIENT_SECRET, REFRESH = "mailingest-test", "client-s3cret", "refresh-1"


class AuthServer(FormServer):
    """Token endpoint (``/token``, RFC 6749) and introspection endpoint (``/introspect``, what
    Dovecot's oauth2 passdb POSTs ``token=...`` to) in one loopback HTTP server."""

    def __init__(self) -> None:
        self.refresh_tokens = {REFRESH}
        self.access: dict[str, float] = {}  # access token → expiry (monotonic)
        self.requests: list[dict[str, str]] = []  # token requests, as sent
        self.expires_in = 3600
        self.rotate = False  # answer every refresh with a new refresh token (the old one dies)
        self.refresh_expires_in: int | None = None
        self._count = 0
        super().__init__()

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return self._token(form) if path == "/token" else (200, self._introspect(form))

    def revoke(self) -> None:
        """What a user's "sign out everywhere" or an admin does: every token stops working."""
        with self.lock:
            self.refresh_tokens.clear()
            self.access.clear()

    def grants(self) -> list[str]:
        with self.lock:
            return [r["grant_type"] for r in self.requests]

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(form)
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"}
            answer: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.expires_in}
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "AADSTS700082: token expired"}
                if self.rotate:
                    self.refresh_tokens.discard(form["refresh_token"])
                    answer["refresh_token"] = f"refresh-rotated-{self._count}"
                    self.refresh_tokens.add(answer["refresh_token"])
                if self.refresh_expires_in is not None:
                    answer["refresh_token_expires_in"] = self.refresh_expires_in
            elif form.get("grant_type") != "client_credentials":
                return 400, {"error": "unsupported_grant_type"}
            self._count += 1
            answer["access_token"] = f"access-{self._count}"
            self.access[answer["access_token"]] = time.monotonic() + self.expires_in
            return 200, answer

    def _introspect(self, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            expiry = self.access.get(form.get("token", ""))
        if expiry is None or expiry < time.monotonic():
            return {"active": False}
        return {"active": True, "username": "alice"}


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    server = AuthServer()
    yield server
    server.close()


@pytest.fixture
def dovecot(auth: AuthServer) -> Iterator[Dovecot]:
    server = Dovecot(oauth2_introspection_url=f"{auth.url}/introspect")
    server.start()
    yield server
    server.cleanup()


def oauth_account(
    server: Dovecot, auth: AuthServer, tmp_path: Path, *, refresh: bool = True, **oauth2: Any
) -> ImapSourceConfig:
    (tmp_path / "client-secret").write_text(CLIENT_SECRET + "\n")
    (tmp_path / "refresh-token").write_text(REFRESH + "\n")
    settings: dict[str, Any] = {
        "provider": "microsoft",
        "token_url": f"{auth.url}/token",
        "client_id": CLIENT_ID,
        "client_secret": {"file": str(tmp_path / "client-secret")},
    }
    if refresh:
        settings["refresh_token"] = {"file": str(tmp_path / "refresh-token")}
    return ImapSourceConfig.model_validate(
        {
            "name": "ap",
            "host": server.host,
            "port": server.port,
            "security": "none",
            "username": server.user,
            "auth": "oauth2",
            "oauth2": settings | oauth2,
            "poll_interval": "2s",
        }
    )


def test_refresh_token_flow_fetches_mail_through_the_source(
    dovecot: Dovecot, auth: AuthServer, store: Store, tmp_path: Path
) -> None:
    uid = dovecot.append("INBOX", invoice_mail())
    config = oauth_account(dovecot, auth, tmp_path)
    with running(config, store):
        (row,) = wait_for(store.rows, what="message in the ledger")
        assert (row.mailbox, row.uid) == ("ap/INBOX", uid)
        assert store.process_all() == 1
        wait_for(lambda: "\\Seen" in dovecot.flags("INBOX")[uid], what="marked seen")
    (request,) = auth.requests
    assert request["grant_type"] == "refresh_token" and request["refresh_token"] == REFRESH
    assert request["scope"] == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert "method=XOAUTH2" in dovecot.log()


def test_client_credentials_flow_logs_in(dovecot: Dovecot, auth: AuthServer, tmp_path: Path) -> None:
    config = oauth_account(dovecot, auth, tmp_path, refresh=False)
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2)
    session = connect(config, tokens)
    try:
        assert session.select("INBOX") > 0
    finally:
        session.close()
        tokens.close()
    (request,) = auth.requests
    assert request["grant_type"] == "client_credentials"
    assert request["scope"] == "https://outlook.office365.com/.default"
    assert "refresh_token" not in request


def test_a_token_is_renewed_before_it_expires(dovecot: Dovecot, auth: AuthServer, tmp_path: Path) -> None:
    auth.expires_in = 2  # renewed after half its lifetime: 1 s
    config = oauth_account(dovecot, auth, tmp_path)
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2)
    try:
        first = tokens.token()
        assert tokens.token() == first  # cached
        time.sleep(1.2)
        second = tokens.token()
        assert second != first
        assert auth.grants() == ["refresh_token", "refresh_token"]
        time.sleep(1.3)  # the first token has now expired at the server; the second is renewed again
        connect(config, tokens).close()
        assert len(auth.grants()) == 3
    finally:
        tokens.close()


def test_a_token_the_server_refuses_is_replaced_once(
    dovecot: Dovecot, auth: AuthServer, tmp_path: Path
) -> None:
    config = oauth_account(dovecot, auth, tmp_path)
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2)
    try:
        stale = tokens.token()
        with auth.lock:
            del auth.access[stale]  # revoked early at the server, still fresh in the cache
        connect(config, tokens).close()
        assert tokens.token() != stale
        assert auth.grants() == ["refresh_token", "refresh_token"]
    finally:
        tokens.close()


def test_rotated_refresh_tokens_are_used(dovecot: Dovecot, auth: AuthServer, tmp_path: Path) -> None:
    auth.rotate = True  # each refresh token works once
    auth.refresh_expires_in = 3 * 3600
    config = oauth_account(dovecot, auth, tmp_path)
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                tokens.invalidate(tokens.token())
        assert [r["refresh_token"] for r in auth.requests] == [
            REFRESH,
            "refresh-rotated-0",
            "refresh-rotated-1",
        ]
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 3 and "re-authorise" in warnings[0]["event"]
        assert warnings[0]["expires_in_hours"] == 3.0
    finally:
        tokens.close()


def test_a_revoked_refresh_token_is_reported_and_retried_until_reauthorised(
    dovecot: Dovecot, auth: AuthServer, store: Store, tmp_path: Path
) -> None:
    config = oauth_account(dovecot, auth, tmp_path)
    auth.revoke()
    uid = dovecot.append("INBOX", invoice_mail())
    with structlog.testing.capture_logs() as logs, running(config, store) as source:
        failures = lambda: [e for e in logs if e["event"] == "imap connection failed; will retry"]  # noqa: E731
        wait_for(lambda: len(failures()) >= 2, timeout=6, what="two failed attempts")
        assert [e["retry_in"] for e in failures()[:2]] == [1.0, 2.0]  # backing off, not hammering
        assert "re-authorise the mailbox" in failures()[0]["error"]
        assert all(w.thread.is_alive() for w in source.watchers)
        rejected = [e for e in logs if e["event"] == "oauth2 refresh token rejected; re-authorisation needed"]
        assert len(rejected) == 1 and rejected[0]["log_level"] == "error"
        # re-authorised: a new refresh token in the secret is picked up without a restart
        with auth.lock:
            auth.refresh_tokens.add("refresh-2")
        (tmp_path / "refresh-token").write_text("refresh-2\n")
        (row,) = wait_for(store.rows, timeout=10, what="message fetched after re-authorisation")
    assert row.uid == uid
    assert auth.requests[-1]["refresh_token"] == "refresh-2"


def test_a_wrong_client_secret_is_reported_as_such(
    dovecot: Dovecot, auth: AuthServer, tmp_path: Path
) -> None:
    config = oauth_account(dovecot, auth, tmp_path)
    (tmp_path / "client-secret").write_text("wrong\n")
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2)
    try:
        with pytest.raises(SourceError, match=r"invalid_client.*check client_id and client_secret"):
            connect(config, tokens)
    finally:
        tokens.close()


def test_an_unreachable_token_endpoint_is_a_source_error(dovecot: Dovecot, tmp_path: Path) -> None:
    down = AuthServer()
    down.close()  # nothing listens on its port any more
    config = oauth_account(dovecot, down, tmp_path)
    assert config.oauth2 is not None
    tokens = TokenProvider(config.name, config.oauth2, timeout=2)
    try:
        with pytest.raises(SourceError, match=r"token request to .* failed: ConnectError"):
            tokens.token()
    finally:
        tokens.close()


SECRET = {"env": "MAILINGEST_TEST_SECRET"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth": "oauth2"}, r"needs a \[sources.imap.oauth2\] table"),
        ({"password": None}, 'auth = "password" needs password'),
        ({"auth": "oauth2", "oauth2": {"provider": "custom", "client_id": "x"}}, "needs token_url"),
        ({"auth": "oauth2", "oauth2": {"provider": "google", "client_id": "x", "client_secret": SECRET}},
         "needs refresh_token"),
        ({"auth": "oauth2", "oauth2": {"provider": "microsoft", "client_id": "x", "client_secret": SECRET}},
         "needs tenant"),
        ({"auth": "oauth2", "oauth2": {"provider": "microsoft", "tenant": "t", "client_id": "x"}},
         "needs client_secret"),
    ],
)  # fmt: skip
def test_oauth2_settings_are_checked_at_load(settings: dict[str, Any], message: str) -> None:
    base = {"name": "ap", "host": "imap.example", "username": "a", "password": {"env": "P"}}
    with pytest.raises(ValidationError, match=message):
        ImapSourceConfig.model_validate({k: v for k, v in (base | settings).items() if v is not None})


def test_provider_defaults() -> None:
    google = ImapSourceConfig.model_validate(
        {
            "name": "g",
            "host": "imap.gmail.com",
            "username": "a@example.com",
            "auth": "oauth2",
            "oauth2": {"provider": "google", "client_id": "x", "refresh_token": {"env": "R"}},
        }
    ).oauth2
    assert google is not None
    assert (google.effective_token_url, google.effective_scope) == (
        "https://oauth2.googleapis.com/token",
        "https://mail.google.com/",
    )
    microsoft = google.model_copy(update={"provider": "microsoft", "tenant": "contoso.example"})
    assert (
        microsoft.effective_token_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    )
