"""Per-credential rate limits: token buckets, IETF RateLimit headers, 429 problem+json with
Retry-After, per-scope overrides, OAuth2 clients counted by client id, anonymous loopback reads
exempt."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from mailingest.api import auth, oauth2
from mailingest.api.app import create_app
from mailingest.api.ratelimit import Policy, TokenBuckets, policy_for
from mailingest.config import ApiConfig, Config
from mailingest.storage import db
from tests.test_api_auth import call


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'rl.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


def app_with(engine: Any, **api: Any) -> FastAPI:
    return create_app(engine, config=Config.model_validate({"api": api}))


def key(engine: Any, *scopes: str) -> str:
    with db.session_scope(engine) as s:
        return auth.create_key(s, name="rl", scopes=scopes)[1]


def test_bucket_runs_out_answers_429_and_refills(engine: Any) -> None:
    app = app_with(engine, rate_limit="3/second")
    first, second = key(engine, "invoices:read"), key(engine, "invoices:read")
    seen = []
    for _ in range(3):
        response = call(app, "GET", "/v1/invoices", token=first)
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"default";q=3;w=1'
        seen.append(response.headers["ratelimit"])
    assert [h.split(";")[1] for h in seen] == ["r=2", "r=1", "r=0"]
    limited = call(app, "GET", "/v1/invoices", token=first)
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["status"] == 429 and "rate limit" in limited.json()["detail"]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit"].startswith('"default";r=0;')
    # another credential has its own bucket
    assert call(app, "GET", "/v1/invoices", token=second).status_code == 200
    time.sleep(0.4)  # 3/second refills one request in a third of a second
    assert call(app, "GET", "/v1/invoices", token=first).status_code == 200


def test_overrides_by_scope_and_kind(engine: Any) -> None:
    app = app_with(
        engine, rate_limit="2/minute", rate_limits={"analytics:read": "5/minute", "client": "4/minute"}
    )
    analyst = key(engine, "analytics:read", "invoices:read")  # the more generous entry wins
    response = call(app, "GET", "/v1/stats", token=analyst)
    assert response.headers["ratelimit-policy"] == '"analytics:read";q=5;w=60'
    reader = key(engine, "invoices:read")
    assert call(app, "GET", "/v1/invoices", token=reader).headers["ratelimit-policy"] == '"default";q=2;w=60'

    with db.session_scope(engine) as s:
        client, secret = oauth2.create_client(s, name="c", scopes=["invoices:read"])
    basic = base64.b64encode(f"{client.id}:{secret}".encode()).decode()
    tokens = [
        call(
            app,
            "POST",
            "/oauth/token",
            headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": "client_credentials"},
        ).json()["access_token"]
        for _ in range(2)
    ]
    # OAuth2 tokens of one client share the client's bucket
    statuses = [call(app, "GET", "/v1/invoices", token=tokens[i % 2]).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


def test_anonymous_loopback_reads_are_not_limited_and_zero_turns_limits_off(engine: Any) -> None:
    app = app_with(engine, rate_limit="1/minute")
    for _ in range(4):
        response = call(app, "GET", "/v1/invoices")  # loopback-open, no credential
        assert response.status_code == 200 and "ratelimit" not in response.headers
    off = app_with(engine, rate_limit="0")
    reader = key(engine, "invoices:read")
    for _ in range(4):
        response = call(off, "GET", "/v1/invoices", token=reader)
        assert response.status_code == 200 and "ratelimit" not in response.headers


def test_token_bucket_arithmetic() -> None:
    now = [100.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    policy = Policy("p", 10, 60.0)
    decisions = [buckets.take("k", policy) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[0].remaining == 9 and decisions[0].reset == 6
    assert decisions[-1].retry_after == 6  # one request refills in 60/10 s
    now[0] += 6.0
    assert buckets.take("k", policy).allowed
    assert not buckets.take("k", policy).allowed
    api = ApiConfig(rate_limit="100/hour", rate_limits={"vendor:read": "off"})
    vendor = auth.Principal(key_id="key_v", scopes=frozenset({"vendor:read"}), vendor="DE1")
    assert policy_for(api, vendor) is None
    with pytest.raises(ValueError):
        ApiConfig(rate_limit="ten/minute")
