"""``mailingest auth`` (device-code flow) and the encrypted token store, against a real loopback
HTTP server playing the provider's device authorization and token endpoints. The CLI runs as a
subprocess, as a person would run it. No mocks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from mailingest.config import load_config
from mailingest.errors import ConfigError, SourceError
from mailingest.oauth import TokenProvider
from mailingest.token_store import TokenStore, fingerprint
from tests.formserver import FormServer

CLIENT_ID, DEVICE_CODE, USER_CODE = "mailingest-test", "dev-123", "WDJB-MJHT"
KEY_ENV = "AP_IMAP_TOKEN_KEY"  # not MAILINGEST_*: those are config overrides


class DeviceServer(FormServer):
    """``/devicecode`` (RFC 8628 3.1) and ``/token`` (device-code and refresh-token grants)."""

    def __init__(self) -> None:
        self.pending = 2  # authorization_pending answers before the outcome
        self.outcome = "ok"  # or an RFC 8628 error code: access_denied, expired_token
        self.rotate = False
        self.refresh_tokens = {"refresh-device"}
        self.requests: list[dict[str, str]] = []
        self._count = 0
        super().__init__()

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(form | {"path": path})
            if form.get("client_id") != CLIENT_ID:
                return 401, {"error": "invalid_client"}
            if path == "/devicecode":
                return 200, {
                    "device_code": DEVICE_CODE,
                    "user_code": USER_CODE,
                    "verification_uri": "https://microsoft.com/devicelogin",
                    "expires_in": 900,
                    "interval": 0,
                }
            grant = form.get("grant_type")
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                if form.get("device_code") != DEVICE_CODE:
                    return 400, {"error": "invalid_grant"}
                if self.pending:
                    self.pending -= 1
                    return 400, {"error": "authorization_pending"}
                if self.outcome != "ok":
                    return 400, {"error": self.outcome, "error_description": "AADSTS70000: said no"}
                return 200, self._tokens("refresh-device")
            if grant == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant"}
                if self.rotate:
                    self.refresh_tokens.discard(form["refresh_token"])
                    new = f"refresh-rotated-{self._count}"
                    self.refresh_tokens.add(new)
                    return 200, self._tokens(new)
                return 200, self._tokens(None)
            return 400, {"error": "unsupported_grant_type"}

    def _tokens(self, refresh: str | None) -> dict[str, Any]:
        self._count += 1
        answer: dict[str, Any] = {"access_token": f"access-{self._count}", "expires_in": 3600}
        if refresh is not None:
            answer["refresh_token"] = refresh
        return answer


@pytest.fixture
def server() -> Iterator[DeviceServer]:
    s = DeviceServer()
    yield s
    s.close()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, value)
    return value


def write_config(tmp_path: Path, server: DeviceServer, *, refresh_file: Path | None = None) -> Path:
    refresh = f'refresh_token = {{ file = "{refresh_file}" }}\n' if refresh_file else ""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""data_dir = "{tmp_path / "data"}"

[[sources.imap]]
name = "ap"
host = "127.0.0.1"
username = "alice@example.com"
auth = "oauth2"

[sources.imap.oauth2]
provider = "custom"
token_url = "{server.url}/token"
device_code_url = "{server.url}/devicecode"
client_id = "{CLIENT_ID}"
scope = "imap offline_access"
token_key = {{ env = "{KEY_ENV}" }}
{refresh}"""
    )
    return path


def run_auth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailingest", "auth", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


def provider_for(config_path: Path) -> TokenProvider:
    config = load_config(config_path)
    account = config.sources.imap[0]
    assert account.oauth2 is not None and account.oauth2.token_key is not None
    store = TokenStore.for_account(config.data_dir, account.name, account.oauth2.token_key)
    return TokenProvider(account.name, account.oauth2, store=store)


def test_device_flow_stores_the_token_encrypted_and_the_provider_uses_it(
    server: DeviceServer, key: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, server)
    result = run_auth("ap", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "https://microsoft.com/devicelogin" in result.stdout and USER_CODE in result.stdout
    token_file = tmp_path / "data" / "tokens" / "ap.json.enc"
    assert str(token_file) in result.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert b"refresh-device" not in token_file.read_bytes()
    polls = [r for r in server.requests if r["path"] == "/token"]
    assert len(polls) == 3  # pending, pending, success
    assert server.requests[0]["scope"] == "imap offline_access"

    tokens = provider_for(config)
    try:
        assert tokens.token().startswith("access-")
    finally:
        tokens.close()
    assert server.requests[-1]["grant_type"] == "refresh_token"
    assert server.requests[-1]["refresh_token"] == "refresh-device"


@pytest.mark.parametrize(("outcome", "message"), [("access_denied", "denied"), ("expired_token", "expired")])
def test_a_refused_sign_in_exits_1_and_stores_nothing(
    server: DeviceServer, key: str, tmp_path: Path, outcome: str, message: str
) -> None:
    server.outcome = outcome
    result = run_auth("ap", "--config", str(write_config(tmp_path, server)))
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "tokens" / "ap.json.enc").exists()


def test_usage_and_config_errors_exit_2(server: DeviceServer, key: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, server))
    unknown = run_auth("nope", "--config", config)
    assert unknown.returncode == 2 and "no [[sources.imap]] account named 'nope'" in unknown.stderr
    missing = run_auth("--config", config)
    assert missing.returncode == 2
    env_less = subprocess.run(
        [sys.executable, "-m", "mailingest", "auth", "ap", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != KEY_ENV},
    )
    assert env_less.returncode == 2 and KEY_ENV in env_less.stderr
    assert not [r for r in server.requests if r["path"] == "/devicecode"]  # nobody was asked to sign in


def test_new_key_prints_a_fernet_key() -> None:
    result = run_auth("--new-key")
    assert result.returncode == 0
    Fernet(result.stdout.strip().encode())  # raises unless it is a valid key


def test_a_rotated_token_is_written_back_encrypted(server: DeviceServer, key: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, server)
    store = provider_for(config).store
    assert store is not None
    store.save("refresh-device", based_on=None)
    server.rotate = True
    tokens = provider_for(config)
    try:
        tokens.token()
    finally:
        tokens.close()
    stored = store.load()
    assert stored is not None and stored.refresh_token.startswith("refresh-rotated-")
    assert b"refresh-rotated" not in store.path.read_bytes()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    again = provider_for(config)  # a restart: the rotated token, not the dead one
    try:
        again.token()
    finally:
        again.close()
    assert server.requests[-1]["refresh_token"] == stored.refresh_token


def test_a_changed_configured_token_is_newer_than_the_stored_one(
    server: DeviceServer, key: str, tmp_path: Path
) -> None:
    secret = tmp_path / "refresh-token"
    secret.write_text("refresh-old\n")
    config = write_config(tmp_path, server, refresh_file=secret)
    store = provider_for(config).store
    assert store is not None
    store.save("refresh-device", based_on=fingerprint("refresh-old"))
    server.refresh_tokens.add("refresh-new")
    for configured, used in (("refresh-old", "refresh-device"), ("refresh-new", "refresh-new")):
        secret.write_text(configured + "\n")
        tokens = provider_for(config)
        try:
            tokens.token()
        finally:
            tokens.close()
        assert server.requests[-1]["refresh_token"] == used


def test_a_wrong_key_is_a_clear_error_naming_the_file(
    server: DeviceServer, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, server)
    store = provider_for(config).store
    assert store is not None
    store.save("refresh-device", based_on=None)
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match=r"cannot decrypt token file .*ap\.json\.enc"):
        store.load()
    tokens = provider_for(config)
    try:
        with pytest.raises(SourceError, match=r"imap account ap: cannot decrypt token file .*ap\.json\.enc"):
            tokens.token()
    finally:
        tokens.close()
    assert not [r for r in server.requests if r["path"] == "/token"]
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match="is not a Fernet key"):
        store.load()


def test_no_stored_and_no_configured_token_says_to_run_auth(
    server: DeviceServer, key: str, tmp_path: Path
) -> None:
    tokens = provider_for(write_config(tmp_path, server))
    try:
        with pytest.raises(SourceError, match="run `mailingest auth ap`"):
            tokens.token()
    finally:
        tokens.close()
