"""``mailingest rules check`` / ``rules test`` as scripts use them, and hot reload of a rule set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailingest.config import Config
from mailingest.models import Invoice
from mailingest.routing import live
from mailingest.workers import build_router
from tests.test_rules_e2e import ubl

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    return subprocess.run(
        [sys.executable, "-m", "mailingest", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_check_passes_the_shipped_rules() -> None:
    result = run("rules", "check", "--path", str(ROOT / "rules"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 rule(s) OK" in result.stdout
    assert f"auto-approve-trusted-recurring  ({ROOT / 'rules' / '10-auto-approve.toml'}:6)" in result.stdout


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        """# header comment

[[rule]]
name = "typo"
when = { "seller.nmae" = "ACME", lines = { any = { "item.colour" = "red" } }, "vendor.anything" = 1 }
then = { tags = ["x"] }

[[rule]]
name = "catch-all"
priority = 500
then = { status = "needs_review", stop = true }

[[rule]]
name = "after-catch-all"
priority = 600
when = { currency = "EUR" }
then = { tags = ["never"] }
"""
    )
    (tmp_path / "b.toml").write_text(
        """[[rule]]
name = "approve-eur"
when = { currency = "EUR" }
then = { status = "approved" }

[[rule]]
name = "reject-eur"
when = { currency = "EUR" }
then = { status = "rejected" }

[[rule]]
name = "bad-cel"
expr = "currency ==="
"""
    )
    (tmp_path / "c.toml").write_text('[[rule]]\nname = "ok"\n\nwhen = { currency = \n')
    result = run("rules", "check", "--path", str(tmp_path))
    assert result.returncode == 2  # some files do not load: a configuration error
    a, b, c = (str(tmp_path / f) for f in ("a.toml", "b.toml", "c.toml"))
    err = result.stderr.splitlines()
    assert err[0] == "invalid routing rules:" and len(err) == 3
    assert err[1].startswith(f"  {b}:11: error: rule bad-cel: expr: bad CEL expression")
    assert err[2].startswith(f"  {c}:4: error: not valid TOML")
    assert "5 rule(s) loaded, 4 error(s), 2 warning(s)" in result.stdout  # the rest is still linted
    (tmp_path / "b.toml").write_text((tmp_path / "b.toml").read_text().replace("===", "== 'EUR'"))
    (tmp_path / "c.toml").unlink()
    result = run("rules", "check", "--path", str(tmp_path))
    assert result.returncode == 1 and not result.stderr  # loads, but lint findings
    out = result.stdout.splitlines()
    expected = [
        f"{a}:3: error: rule typo: unknown field 'seller.nmae'",
        f"{a}:3: error: rule typo: unknown field 'lines.any.item.colour'",
        f"{a}:13: warning: rule after-catch-all is unreachable: catch-all ({a}:8) always matches first",
        f"{b}:6: warning: rule reject-eur conflicts with approve-eur ({b}:1): "
        "same condition, status 'rejected' vs 'approved'",
    ]
    for prefix in expected:
        assert any(line.startswith(prefix) for line in out), (prefix, result.stdout)
    assert not any("vendor.anything" in line for line in out)  # fact namespaces are open
    problems = [line for line in out if ": error: " in line or ": warning: " in line]
    assert len(problems) == len(expected)


def test_check_first_match_mode_makes_rules_after_a_catch_all_unreachable(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.toml").write_text(
        '[[rule]]\nname = "all"\nthen = { tags = ["a"] }\n\n[[rule]]\nname = "b"\nthen = { tags = ["b"] }\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[rules]\npath = "{rules}"\nmatch = "first"\n')
    result = run("rules", "check", "--config", str(config))
    assert result.returncode == 1
    assert (
        f"{rules / 'r.toml'}:5: warning: rule b is unreachable" in result.stdout
        and "first-match" in result.stdout
    )


def test_rules_test_dry_runs_files_and_stored_invoices(tmp_path: Path) -> None:
    (tmp_path / "s.xml").write_bytes(ubl("S-1", "50", po="PO-1", lines=(("Hotel Berlin", "50"),)))
    (tmp_path / "n.xml").write_bytes(ubl("N-1", "900"))
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[rules]\npath = "{ROOT / "rules"}"\n')
    ingest = run(
        "ingest", "--config", str(config), str(tmp_path / "s.xml"), str(tmp_path / "n.xml"), cwd=tmp_path
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr

    stricter = tmp_path / "stricter"
    stricter.mkdir()
    (stricter / "r.toml").write_text(
        '[[rule]]\nname = "review-above-100"\nwhen = { "totals.amount_due" = { gt = 100 } }\n'
        'then = { status = "needs_review", approvers = ["boss@example.com"] }\n'
    )
    result = run(
        "rules",
        "test",
        "--config",
        str(config),
        "--path",
        str(stricter),
        "--stored",
        "10",
        str(tmp_path / "s.xml"),
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    stored = {r["number"]: r for r in rows if "id" in r}
    assert set(stored) == {"S-1", "N-1"}
    assert (
        stored["N-1"]["stored_status"] == "needs_review"
        and "missing-purchase-order" in stored["N-1"]["stored_routing"]
    )
    assert stored["N-1"]["status"] == "needs_review" and stored["N-1"]["approvers"] == ["boss@example.com"]
    assert stored["N-1"]["routing"] == ["review-above-100"]
    assert stored["N-1"]["firings"] == [f"review-above-100 ({stricter / 'r.toml'}:1)"]
    assert stored["S-1"]["status"] == "validated" and stored["S-1"]["routing"] == []
    assert stored["S-1"]["stored_routing"][0] == "gl-by-keyword"
    (from_file,) = [r for r in rows if "file" in r]
    assert from_file["number"] == "S-1" and from_file["routing"] == []
    shipped = run("rules", "test", "--config", str(config), str(tmp_path / "s.xml"))
    assert json.loads(shipped.stdout)["gl_accounts"] == ["6670"]  # hotel → travel


def _route(route: object) -> Invoice:
    invoice = Invoice.model_validate({"number": "1", "totals": {"amount_due": "5"}})
    return route(invoice, {})  # type: ignore[operator]


def _wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_hot_reload_keeps_the_last_good_rules_and_exposes_the_error(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text('[[rule]]\nname = "one"\nthen = { tags = ["one"] }\n')
    route = build_router(Config.model_validate({"rules": {"path": str(rules), "reload": 0.1}}))
    try:
        assert _route(route).tags == ["one"]
        (rules / "a.toml").write_text('[[rule]]\nname = "two"\nthen = { tags = ["two"] }\n')
        _wait(lambda: _route(route).tags == ["two"])
        assert _route(route).tags == ["two"]
        assert live.status() is not None and live.status()["ok"] and live.status()["reloads"] == 1  # type: ignore[index]

        (rules / "b.toml").write_text('\n[[rule]]\nname = "bad"\nexpr = "((("\n')
        _wait(lambda: not live.status()["ok"])  # type: ignore[index]
        status = live.status()
        assert status is not None and not status["ok"] and status["rules"] == 1
        assert f"{rules / 'b.toml'}:2: error: rule bad: expr: bad CEL expression" in status["error"]
        assert _route(route).tags == ["two"]

        (rules / "b.toml").unlink()
        _wait(lambda: live.status()["ok"])  # type: ignore[index]
        assert live.status()["error"] is None  # type: ignore[index]
    finally:
        route.live.stop()  # type: ignore[attr-defined]


def test_sighup_reloads_in_process(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text('[[rule]]\nname = "one"\nthen = { tags = ["one"] }\n')
    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    route = build_router(Config.model_validate({"rules": {"path": str(rules), "reload": 0}}))
    try:
        (rules / "a.toml").write_text('[[rule]]\nname = "two"\nthen = { tags = ["two"] }\n')
        time.sleep(0.3)
        assert _route(route).tags == ["one"]  # polling off
        os.kill(os.getpid(), signal.SIGHUP)
        _wait(lambda: _route(route).tags == ["two"])
        assert _route(route).tags == ["two"]
    finally:
        route.live.stop()  # type: ignore[attr-defined]
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("broken", ['[[rule]]\nname = "x"\nthen = { status = "paid" }\n', "[[rule\n"])
def test_a_broken_rule_set_stops_the_start(tmp_path: Path, broken: str) -> None:
    from mailingest.errors import ConfigError

    (tmp_path / "r.toml").write_text(broken)
    with pytest.raises(ConfigError, match=r"r\.toml:1:"):
        build_router(Config.model_validate({"rules": {"path": str(tmp_path)}}), watch=False)
