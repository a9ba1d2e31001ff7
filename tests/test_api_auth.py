"""OAuth2 client credentials against the real app on SQLite and PostgreSQL: the ``api-client``
CLI, ``POST /oauth/token`` (HTTP Basic and form client auth), RFC 6749 errors, token expiry,
revocation, RFC 7662 introspection, and vendor binding rules."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import Session, select

from mailingest import cli
from mailingest.api.app import create_app
from mailingest.config import Config
from mailingest.storage import db
from mailingest.storage.tables import AuditLog


def call(
    app: FastAPI, method: str, path: str, *, token: str | None = None, client: str = "127.0.0.1", **kw: Any
) -> httpx.Response:
    """One request through the ASGI app, as ``client`` (an address), with a Bearer ``token``."""
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            return await c.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


def write_config(tmp_path: Path, url: str, api: str = "") -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[storage]\nurl = "{url}"\n[api]\nauth = "required"\n{api}\n'
    )
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create_client(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[str, str]:
    code, out, err = run_cli(capsys, "api-client", "create", *args, "--config", config)
    assert code == 0, err
    fields = dict(line.split("=", 1) for line in out.splitlines())
    assert fields["client_id"].startswith("cli_") and fields["client_secret"].startswith("mcs_")
    return fields["client_id"], fields["client_secret"]


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def get_token(app: FastAPI, client_id: str, secret: str, **form: str) -> httpx.Response:
    return call(
        app,
        "POST",
        "/oauth/token",
        headers=basic(client_id, secret),
        data={"grant_type": "client_credentials", **form},
    )


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[tuple[FastAPI, str, Any]]:
    config_path = write_config(tmp_path, db_url, "token_ttl = 60")
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    config = Config.model_validate({"api": {"auth": "required", "token_ttl": 60}})
    yield create_app(engine, config=config), config_path, engine
    engine.dispose()


def test_client_credentials_flow(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    app, config, engine = setup
    client_id, secret = create_client(capsys, config, "erp-sync", "--scopes", "invoices:read,analytics:read")

    issued = get_token(app, client_id, secret)
    assert issued.status_code == 200, issued.text
    assert issued.headers["cache-control"] == "no-store"
    body = issued.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 60
    assert set(body["scope"].split()) == {"invoices:read", "analytics:read"}
    token = body["access_token"]
    assert call(app, "GET", "/v1/invoices", token=token).status_code == 200
    assert call(app, "GET", "/v1/stats", token=token).status_code == 200
    denied = call(app, "POST", "/v1/invoices/inv_x/approve", token=token)
    assert denied.status_code == 403 and "invoices:approve" in denied.json()["detail"]

    # client auth in the form body works too; a narrower scope gives a narrower token
    form = call(
        app,
        "POST",
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "invoices:read",
        },
    )
    assert form.status_code == 200 and form.json()["scope"] == "invoices:read"
    narrow = form.json()["access_token"]
    assert call(app, "GET", "/v1/invoices", token=narrow).status_code == 200
    assert call(app, "GET", "/v1/stats", token=narrow).status_code == 403

    # token issuance and calls made with tokens are audited under the client id
    with Session(engine) as session:
        actions = [
            a.action for a in session.exec(select(AuditLog).where(AuditLog.actor == f"api:{client_id}"))
        ]
    assert actions.count("oauth.token") == 2 and "GET /v1/invoices" in actions

    # the client list shows the client and when it last got a token, never the secret
    _code, out, _err = run_cli(capsys, "api-client", "list", "--config", config)
    assert client_id in out and secret not in out and "secret_hash" not in out
    assert '"last_token_at": null' not in out


def test_rfc6749_errors(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    app, config, _engine = setup
    client_id, secret = create_client(capsys, config, "erp", "--scopes", "invoices:read")

    def error(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.json()["error"] == code and response.json()["error_description"]
        assert response.headers["cache-control"] == "no-store"

    none = call(app, "POST", "/oauth/token", data={"grant_type": "client_credentials"})
    error(none, 401, "invalid_client")
    assert none.headers["www-authenticate"].startswith("Basic")
    error(get_token(app, client_id, secret + "x"), 401, "invalid_client")
    error(get_token(app, "cli_unknown", secret), 401, "invalid_client")
    garbage = call(
        app, "POST", "/oauth/token", headers={"Authorization": "Basic !!!"}, data={"grant_type": "x"}
    )
    error(garbage, 401, "invalid_client")
    error(
        call(app, "POST", "/oauth/token", headers=basic(client_id, secret), data={"grant_type": "password"}),
        400,
        "unsupported_grant_type",
    )
    error(
        call(app, "POST", "/oauth/token", headers=basic(client_id, secret), data={}), 400, "invalid_request"
    )
    error(get_token(app, client_id, secret, scope="invoices:read admin"), 400, "invalid_scope")
    error(get_token(app, client_id, secret, scope="x" * 1001), 400, "invalid_request")
    both = call(
        app,
        "POST",
        "/oauth/token",
        headers=basic(client_id, secret),
        data={"grant_type": "client_credentials", "client_id": client_id},
    )
    error(both, 400, "invalid_request")


def test_tokens_expire_and_tampered_tokens_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'short.db'}"
    config = write_config(tmp_path, url)
    engine = db.make_engine(url)
    db.upgrade(engine)
    app = create_app(engine, config=Config.model_validate({"api": {"auth": "required", "token_ttl": 1}}))
    client_id, secret = create_client(capsys, config, "short", "--scopes", "invoices:read")
    token = get_token(app, client_id, secret).json()["access_token"]
    assert call(app, "GET", "/v1/invoices", token=token).status_code == 200

    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    refused = call(app, "GET", "/v1/invoices", token=forged)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]

    time.sleep(2.1)
    expired = call(app, "GET", "/v1/invoices", token=token)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert expired.headers["content-type"] == "application/problem+json"

    # a client that expires stops getting tokens
    cid, csecret = create_client(capsys, config, "brief", "--scopes", "invoices:read", "--expires", "0.00001")
    time.sleep(1.0)
    gone = get_token(app, cid, csecret)
    assert gone.status_code == 401 and "expired" in gone.json()["error_description"]
    engine.dispose()


def test_revocation_and_introspection(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    app, config, engine = setup
    client_id, secret = create_client(capsys, config, "bi", "--scopes", "analytics:read")
    token = get_token(app, client_id, secret).json()["access_token"]
    with db.session_scope(engine) as s:
        from mailingest.api import auth

        _row, admin = auth.create_key(s, name="admin", scopes=["admin"])
        _row, reader = auth.create_key(s, name="reader", scopes=["invoices:read"])

    assert call(app, "POST", "/oauth/introspect", token=reader, data={"token": token}).status_code == 403
    assert (
        call(app, "POST", "/oauth/introspect", data={"token": token}, client="192.0.2.1").status_code == 401
    )
    info = call(app, "POST", "/oauth/introspect", token=admin, data={"token": token}).json()
    assert info["active"] is True and info["client_id"] == client_id and info["scope"] == "analytics:read"
    assert info["exp"] - info["iat"] == 60 and info["token_type"] == "Bearer"
    garbage = call(app, "POST", "/oauth/introspect", token=admin, data={"token": "not.a.token"})
    assert garbage.json() == {"active": False}

    code, out, _err = run_cli(capsys, "api-client", "revoke", client_id, "--config", config)
    assert code == 0 and client_id in out
    # revocation is immediate: no new tokens, and the issued one is refused and inactive
    assert get_token(app, client_id, secret).json()["error"] == "invalid_client"
    refused = call(app, "GET", "/v1/stats", token=token)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert call(app, "POST", "/oauth/introspect", token=admin, data={"token": token}).json() == {
        "active": False
    }
    assert run_cli(capsys, "api-client", "revoke", "cli_nope", "--config", config)[0] == 1


def test_vendor_binding_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'v.db'}")
    code, _out, err = run_cli(
        capsys, "api-client", "create", "portal", "--scopes", "vendor:read", "--config", config
    )
    assert code == 2 and "needs a vendor" in err
    code, _out, err = run_cli(
        capsys,
        "api-client",
        "create",
        "p",
        "--scopes",
        "vendor:read,invoices:read",
        "--vendor",
        "DE1",
        "--config",
        config,
    )
    assert code == 2 and "exactly the scope vendor:read" in err
    code, _out, err = run_cli(
        capsys,
        "api-key",
        "create",
        "--name",
        "p",
        "--scopes",
        "invoices:read",
        "--vendor",
        "DE1",
        "--config",
        config,
    )
    assert code == 2 and "vendor:read" in err
    create_client(capsys, config, "acme-portal", "--scopes", "vendor:read", "--vendor", "de 123.456-789")
    _code, out, _err = run_cli(capsys, "api-client", "list", "--config", config)
    assert '"vendor": "DE123456789"' in out
