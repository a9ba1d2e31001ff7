"""``/v1/rules``: the active rules with the live status, drafts checked like ``rules check`` (the
rules directory untouched), dry runs of a draft or the active rules over stored invoices — the
real app over SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mailingest.api.app import create_app
from mailingest.config import Config
from mailingest.routing import live
from mailingest.routing.loader import snapshot
from mailingest.storage import db
from mailingest.storage.tables import utcnow
from tests.test_api import make_key, request
from tests.test_api_invoices import seed

ACTIVE = """# shipped with the test
[[rule]]
name = "big-needs-review"
priority = 10
when = { "totals.amount_due" = { gt = "1000" } }
then = { status = "needs_review", approvers = ["cfo@example.com"], tags = ["big"] }

[[rule]]
name = "small-approved"
priority = 20
when = { "totals.amount_due" = { lte = "1000" }, currency = "EUR" }
then = { status = "approved", connectors = ["erp"] }
"""

DRAFT = """[[rule]]
name = "typo"
priority = 5
when = { "seller.nmae" = "ACME" }
then = { tags = ["x"] }

[[rule]]
name = "usd-review"
priority = 6
when = { currency = "USD" }
then = { status = "needs_review", tags = ["fx"] }

[[rule]]
name = "usd-approve"
priority = 7
when = { currency = "USD" }
then = { status = "approved" }

[[rule]]
name = "catch-all"
priority = 50
then = { tags = ["seen"], stop = true }

[[rule]]
name = "never"
priority = 60
when = { currency = "EUR" }
then = { status = "rejected" }
"""


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    (path / "10-main.toml").write_text(ACTIVE)
    monkeypatch.setattr(live, "_current", None)  # no live rule set from another test in this process
    return path


def app_for(engine: Any, rules_dir: Path, match: str = "all") -> Any:
    config = Config.model_validate({"rules": {"path": str(rules_dir), "match": match}})
    return create_app(engine, config=config, auth_mode="required")


def test_lists_the_active_rules_with_the_live_status(engine: Any, rules_dir: Path) -> None:
    app = app_for(engine, rules_dir)
    _, reader = make_key(engine, "invoices:read")
    _, vendor_only = make_key(engine, "analytics:read")
    listed = request(app, "GET", "/v1/rules", key=reader)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["match"] == "all" and body["live"] is None and body["problems"] == []
    assert [r["name"] for r in body["data"]] == ["big-needs-review", "small-approved"]
    big = body["data"][0]
    assert big["file"].endswith("10-main.toml") and big["line"] == 2 and big["priority"] == 10
    assert big["when"] == {"totals.amount_due": {"gt": "1000"}} and big["enabled"] is True
    assert big["then"] == {"status": "needs_review", "approvers": ["cfo@example.com"], "tags": ["big"]}
    denied = request(app, "GET", "/v1/rules", key=vendor_only)
    assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"

    # a daemon's live set in this process: its status shows; a broken edit keeps the last good rules
    running = live.LiveRules(rules_dir, interval=0)
    (rules_dir / "10-main.toml").write_text(ACTIVE + "[[rule]\n")
    assert running.reload() is False
    body = request(app, "GET", "/v1/rules", key=reader).json()
    assert body["live"]["ok"] is False and "10-main.toml:13" in body["live"]["error"]
    assert body["live"]["loaded_at"] and [r["name"] for r in body["data"]] == [
        "big-needs-review",
        "small-approved",
    ]


def test_validate_reports_what_rules_check_reports(engine: Any, rules_dir: Path) -> None:
    app = app_for(engine, rules_dir)
    _, author = make_key(engine, "rules:write")
    _, reader = make_key(engine, "invoices:read")
    before = snapshot(rules_dir)
    toml = {"Content-Type": "application/toml"}

    checked = request(app, "POST", "/v1/rules/validate", key=author, content=DRAFT, headers=toml)
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["valid"] is False and body["errors"] == 1 and body["warnings"] == 2
    kinds = {(f["kind"], f["line"], f["level"]) for f in body["findings"]}
    assert kinds == {
        ("unknown_field", 1, "error"),
        ("conflict", 13, "warning"),
        ("unreachable", 24, "warning"),
    }
    assert all(f["file"] == "draft.toml" for f in body["findings"])
    unknown = next(f for f in body["findings"] if f["kind"] == "unknown_field")
    assert "seller.nmae" in unknown["message"]
    assert [r["name"] for r in body["rules"]] == ["typo", "usd-review", "usd-approve", "catch-all", "never"]

    syntax = request(
        app,
        "POST",
        "/v1/rules/validate",
        key=author,
        json={"toml": '[[rule]]\nname = "a"\nwhen = { a = 1\n', "name": "x.toml"},
    ).json()
    assert syntax["valid"] is False and syntax["findings"][0]["kind"] == "syntax"
    assert syntax["findings"][0]["file"] == "x.toml" and syntax["findings"][0]["line"] == 3
    bad_value = request(
        app,
        "POST",
        "/v1/rules/validate",
        key=author,
        json={"toml": '[[rule]]\nname = "a"\nthen = { status = "paid" }'},
    ).json()
    assert (
        bad_value["findings"][0]["kind"] == "invalid" and "then.status" in bad_value["findings"][0]["message"]
    )

    clean = request(app, "POST", "/v1/rules/validate", key=author, json={"toml": ACTIVE}).json()
    assert clean == {**clean, "valid": True, "errors": 0, "warnings": 0, "findings": []}

    # checked together with the rules directory: a repeated name and a conflict across files
    beside = request(
        app,
        "POST",
        "/v1/rules/validate?with_active=true&name=20-new.toml",
        key=author,
        content='[[rule]]\nname = "big-needs-review"\nwhen = { currency = "EUR" }\nthen = { tags = ["x"] }\n',
        headers=toml,
    ).json()
    assert beside["valid"] is False
    repeated = next(f for f in beside["findings"] if "more than once" in f["message"])
    assert repeated["file"] == "20-new.toml" and "10-main.toml:2" in repeated["message"]
    assert "mailingest-rules-" not in str(beside)  # the private directory never leaks
    # replacing an existing file by name: its old rules are not loaded twice
    replaced = request(
        app,
        "POST",
        "/v1/rules/validate",
        key=author,
        json={"toml": ACTIVE, "name": "10-main.toml", "with_active": True},
    ).json()
    assert replaced["valid"] is True and len(replaced["rules"]) == 2

    assert snapshot(rules_dir) == before  # never touched
    missing = request(app, "POST", "/v1/rules/validate", key=author, json={})
    assert missing.status_code == 422 and "toml" in missing.json()["detail"]
    bad_name = request(
        app, "POST", "/v1/rules/validate", key=author, json={"toml": ACTIVE, "name": "../x.toml"}
    )
    assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]
    extra = request(app, "POST", "/v1/rules/validate", key=author, json={"toml": ACTIVE, "nope": 1})
    assert extra.status_code == 422 and "nope" in extra.json()["detail"]
    wrong_type = request(
        app, "POST", "/v1/rules/validate", key=author, content=b"x", headers={"Content-Type": "image/png"}
    )
    assert wrong_type.status_code == 415
    assert request(app, "POST", "/v1/rules/validate", key=reader, json={"toml": ACTIVE}).status_code == 403


def test_dry_run_over_stored_invoices(engine: Any, rules_dir: Path) -> None:
    app = app_for(engine, rules_dir)
    _, author = make_key(engine, "rules:write")
    now = utcnow()
    old = seed(
        engine, number="OLD", currency="EUR", totals={"amount_due": "10"}, created_at=now - timedelta(days=9)
    )
    big = seed(
        engine,
        number="BIG",
        currency="EUR",
        totals={"amount_due": "5000"},
        lines=[{"id": "1", "net_amount": "5000", "item": {"name": "Server"}}],
        created_at=now - timedelta(days=2),
    )
    small = seed(
        engine,
        number="SMALL",
        currency="EUR",
        totals={"amount_due": "20"},
        created_at=now - timedelta(days=1),
    )
    usd = seed(
        engine, number="USD", currency="USD", totals={"amount_due": "30"}, status="approved", created_at=now
    )

    # the active rules over the 3 newest
    ran = request(app, "POST", "/v1/rules/dry-run", key=author, json={"stored": 3})
    assert ran.status_code == 200, ran.text
    body = ran.json()
    assert body["rules"] == "active" and body["match"] == "all"
    results = {r["id"]: r for r in body["data"]}
    assert list(results) == [usd, small, big]  # newest first; OLD is the 4th
    assert results[big]["status"] == "needs_review" and results[big]["approvers"] == ["cfo@example.com"]
    assert results[big]["tags"] == ["big"] and results[big]["stored_status"] == "validated"
    assert results[big]["fired"] == [
        {"rule": "big-needs-review", "file": str(rules_dir / "10-main.toml"), "line": 2}
    ]
    assert results[small]["status"] == "approved" and results[small]["deliver_to"] == ["erp"]
    assert results[usd]["fired"] == [] and results[usd]["status"] == "validated"
    summary = body["summary"]
    assert summary["invoices"] == 3 and summary["fired"] == {"big-needs-review": 1, "small-approved": 1}
    assert summary["status_changes"] == {
        "validated -> needs_review": 1,
        "validated -> approved": 1,
        "approved -> validated": 1,
    }
    assert summary["changed"] == 3 and summary["never_fired"] == []

    # a draft, first-match, filtered like the invoice list, sent as TOML
    draft = '[[rule]]\nname = "eur-tag"\nwhen = { currency = "EUR" }\nthen = { tags = ["eur"] }\n'
    draft += (
        '[[rule]]\nname = "eur-review"\nwhen = { currency = "EUR" }\nthen = { status = "needs_review" }\n'
    )
    filtered = request(
        app,
        "POST",
        "/v1/rules/dry-run?currency=EUR&stored=10&match=first",
        key=author,
        content=draft,
        headers={"Content-Type": "application/toml"},
    ).json()
    assert filtered["rules"] == "draft" and filtered["match"] == "first"
    assert [r["id"] for r in filtered["data"]] == [small, big, old]
    assert all(r["tags"] == ["eur"] and r["status"] == "validated" for r in filtered["data"])
    assert filtered["summary"]["fired"] == {"eur-tag": 3, "eur-review": 0}
    assert filtered["summary"]["never_fired"] == ["eur-review"]
    assert filtered["data"][0]["fired"][0]["file"] == "draft.toml"

    broken = request(app, "POST", "/v1/rules/dry-run", key=author, json={"toml": "[[rule]\n"})
    assert broken.status_code == 422 and broken.headers["content-type"] == "application/problem+json"
    assert broken.json()["findings"][0]["kind"] == "syntax"
    too_many = request(app, "POST", "/v1/rules/dry-run", key=author, json={"stored": 5000})
    assert too_many.status_code == 422 and "stored" in too_many.json()["detail"]
    _, reader = make_key(engine, "invoices:read")
    assert request(app, "POST", "/v1/rules/dry-run", key=reader, json={}).status_code == 403
