"""Every route × every credential kind → allow or deny, derived from the routes themselves.

The routes come from ``app.routes`` at test time (so routes other modules add are covered
without touching this file) and each route's required scope from its dependencies
(``Authenticator.require`` tags them). Data: the sample fixtures run through the real pipeline
(``mailingest.api.sandbox.seed``), so several vendors exist. The vendor-portal credentials must
never see another vendor's invoice."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlmodel import Session, select

from mailingest.api import auth, oauth2
from mailingest.api.app import create_app
from mailingest.api.portal import PORTAL_FIELDS
from mailingest.api.sandbox import sample_files, sandbox_config, seed
from mailingest.config import Config
from mailingest.storage import db, tables
from tests.test_api_auth import call

REMOTE = "203.0.113.7"  # a non-loopback client address
WRITE_METHODS = {"POST", "PUT", "PATCH"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("matrix")
    config = sandbox_config(Config(), Path(data_dir))
    seeded = seed(config, sample_files())
    engine = db.make_engine(config.storage_url)
    app = create_app(engine, config=config)  # default loopback-open on a loopback listener
    with db.session_scope(engine) as s:
        approve = auth.create_key(s, name="approver", scopes=["invoices:read", "invoices:approve"])[1]
        vendor_client, vendor_secret = oauth2.create_client(
            s, name="portal", scopes=["vendor:read"], vendor=seeded["MI_VENDOR"]
        )
    with Session(engine) as s:
        invoices = s.exec(select(tables.Invoice)).all()
    vendor = seeded["MI_VENDOR"]
    own = [i.id for i in invoices if auth.normalize_vendor(i.seller_vat_id or "") == vendor]
    other = [i.id for i in invoices if i.id not in own]
    assert own and other, "the samples must hold invoices of more than one vendor"

    def token(client_id: str, secret: str) -> str:
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        response = call(
            app,
            "POST",
            "/oauth/token",
            headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": "client_credentials"},
        )
        return str(response.json()["access_token"])

    credentials: dict[str, tuple[str | None, frozenset[str], bool]] = {
        "admin": (seeded["MI_ADMIN_KEY"], frozenset({"admin"}), False),
        "read": (seeded["MI_READ_KEY"], frozenset({"invoices:read"}), False),
        "approve": (approve, frozenset({"invoices:read", "invoices:approve"}), False),
        "analytics": (seeded["MI_ANALYTICS_KEY"], frozenset({"analytics:read"}), False),
        "vendor": (seeded["MI_VENDOR_KEY"], frozenset({"vendor:read"}), True),
        "oauth": (
            token(seeded["MI_CLIENT_ID"], seeded["MI_CLIENT_SECRET"]),
            frozenset({"invoices:read", "analytics:read"}),
            False,
        ),
        "oauth-vendor": (token(vendor_client.id, vendor_secret), frozenset({"vendor:read"}), True),
        "none-remote": (None, frozenset(), False),
    }
    yield {
        "app": app,
        "credentials": credentials,
        "own": own,
        "other": other,
        "vendor": vendor,
        "engine": engine,
    }
    engine.dispose()


def routes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(method, path template, required scope) for every HTTP route of the app."""
    found: list[tuple[str, str, str | None]] = []
    for route in iter_route_contexts(app.routes):
        methods = sorted((route.methods or set()) - {"HEAD"})
        dependant = getattr(route, "dependant", None)
        scope = auth.required_scope(dependant) if dependant is not None else None
        found.extend((method, str(route.path), scope) for method in methods)
    return found


def fill(path: str, invoice_id: str) -> str:
    """Concrete path: invoice ids are another vendor's real invoice, other ids do not exist."""
    return re.sub(
        r"\{([^}:]+)(:[^}]*)?\}", lambda m: invoice_id if "invoice" in m.group(1) else "zz_nonexistent", path
    )


def test_every_route_allows_and_denies_by_scope(world: Any) -> None:
    app: FastAPI = world["app"]
    table = routes(app)
    assert len(table) >= 20 and any(scope is None for *_, scope in table)
    mistakes = []
    for method, template, scope in table:
        path = fill(template, world["other"][0])
        for name, (token, scopes, vendor_bound) in world["credentials"].items():
            kw: dict[str, Any] = {"json": {}} if method in WRITE_METHODS else {}
            client = REMOTE if token is None else "127.0.0.1"
            response = call(app, method, path, token=token, client=client, **kw)
            if scope is None:  # open route: everyone but a vendor credential
                allowed = not vendor_bound
            else:
                holds = "admin" in scopes or scope in scopes
                allowed = holds and (not vendor_bound or scope == "vendor:read")
            status = response.status_code
            if template == "/oauth/token" and status in (400, 401) and allowed:
                assert "error" in response.json()  # its own client authentication, not a Bearer denial
                continue
            if allowed and status in (401, 403):
                mistakes.append(
                    f"{name} {method} {template} (scope {scope}) denied {status}: {response.text[:120]}"
                )
            if not allowed:
                expected = 401 if token is None else 403
                if status != expected:
                    mistakes.append(
                        f"{name} {method} {template} (scope {scope}) expected {expected}, got {status}"
                    )
                elif response.headers.get("content-type") != "application/problem+json":
                    mistakes.append(f"{name} {method} {template}: denial is not problem+json")
    assert not mistakes, "\n".join(mistakes)


@pytest.mark.parametrize("name", ["vendor", "oauth-vendor"])
def test_vendor_credentials_see_only_their_own_invoices(world: Any, name: str) -> None:
    app: FastAPI = world["app"]
    token = world["credentials"][name][0]
    admin = world["credentials"]["admin"][0]
    listed = call(app, "GET", "/v1/portal/invoices?limit=200", token=token).json()
    ids = [row["id"] for row in listed["data"]]
    assert sorted(ids) == sorted(world["own"])
    for row in listed["data"]:
        assert set(row) == set(PORTAL_FIELDS)  # the reduced view, nothing internal
    # asking for another vendor does not widen the view; admin can, to check what a vendor sees
    other_vat = None
    for invoice_id in world["other"]:
        data = call(app, "GET", f"/v1/invoices/{invoice_id}", token=admin).json()
        other_vat = (data.get("seller") or {}).get("vat_id") or other_vat
    assert other_vat
    widened = call(app, "GET", f"/v1/portal/invoices?limit=200&vendor={other_vat}", token=token).json()
    assert sorted(r["id"] for r in widened["data"]) == sorted(world["own"])
    as_admin = call(app, "GET", f"/v1/portal/invoices?limit=200&vendor={other_vat}", token=admin).json()
    assert as_admin["data"] and not set(r["id"] for r in as_admin["data"]) & set(world["own"])
    for invoice_id in world["other"]:
        hidden = call(app, "GET", f"/v1/portal/invoices/{invoice_id}", token=token)
        assert hidden.status_code == 404 and invoice_id in hidden.json()["detail"]
        assert call(app, "GET", f"/v1/invoices/{invoice_id}", token=token).status_code == 403
    mine = call(app, "GET", f"/v1/portal/invoices/{world['own'][0]}", token=token)
    assert mine.status_code == 200 and set(mine.json()) == set(PORTAL_FIELDS)
    # pagination stays inside the vendor
    page = call(app, "GET", "/v1/portal/invoices?limit=1", token=token).json()
    seen = [r["id"] for r in page["data"]]
    while page["has_more"]:
        page = call(app, "GET", f"/v1/portal/invoices?limit=1&starting_after={seen[-1]}", token=token).json()
        seen += [r["id"] for r in page["data"]]
    assert sorted(seen) == sorted(world["own"])


def test_a_vendor_id_binding_sees_that_vendors_invoices(world: Any) -> None:
    app: FastAPI = world["app"]
    admin = world["credentials"]["admin"][0]
    engine = world["engine"]
    with Session(engine) as s:
        rows = s.exec(select(tables.Invoice)).all()
    vendor_id = next(r.vendor_id for r in rows if r.vendor_id)
    assert vendor_id and vendor_id.startswith("ven_")
    with db.session_scope(engine) as s:
        key = auth.create_key(s, name="by-id", scopes=["vendor:read"], vendor=vendor_id)[1]
    listed = call(app, "GET", "/v1/portal/invoices?limit=200", token=key).json()["data"]
    assert sorted(r["id"] for r in listed) == sorted(r.id for r in rows if r.vendor_id == vendor_id)
    stranger = next(r.id for r in rows if r.vendor_id != vendor_id)
    assert call(app, "GET", f"/v1/portal/invoices/{stranger}", token=key).status_code == 404
    assert call(app, "GET", "/v1/analytics/spend", token=key).status_code == 403
    assert call(app, "GET", "/v1/portal/invoices", token=admin).status_code == 200
