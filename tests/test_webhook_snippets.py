"""The verification snippets in docs/webhooks.md, executed: Python, JavaScript (node), shell
(openssl) and the curl sender, against requests signed by our own webhook connector."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mailingest.config import Secret, WebhookConfig
from mailingest.connectors.webhook import WebhookConnector, new_secret, verify
from tests.conftest import ROOT, Received, WebhookReceiver

DOC = ROOT / "docs" / "webhooks.md"
NODE = shutil.which("node") or "/usr/bin/node"


def snippet(name: str) -> str:
    found = re.search(rf"<!-- snippet: {name} -->\n```\w+\n(.*?)\n```", DOC.read_text(), re.S)
    assert found, f"docs/webhooks.md has no {name} snippet"
    return found.group(1)


@pytest.fixture
def signed(webhook_receiver: WebhookReceiver, monkeypatch: Any) -> tuple[str, str, Received]:
    """A real request from the connector while rotating: signed with a new and an old secret."""
    old, new = new_secret(), new_secret()
    monkeypatch.setenv("OLD", old)
    monkeypatch.setenv("NEW", new)
    hook = WebhookConnector(
        WebhookConfig(
            name="erp",
            url=webhook_receiver.url,
            secrets=[Secret(env="NEW"), Secret(env="OLD")],
            allow_private_network=True,
        )
    )
    payload = {
        "type": "invoice.extracted",
        "timestamp": "2026-11-26T08:00:00Z",
        "data": {"id": "inv_1", "seller": {"name": "Bürobedarf GmbH"}},
    }
    hook.deliver("evt_01TEST", payload)
    hook.close()
    [request] = webhook_receiver.accepted()
    assert len(request.headers["webhook-signature"].split()) == 2
    return new, old, request


def tampered(request: Received) -> bytes:
    return request.body.replace(b"inv_1", b"inv_2")


def test_python_snippet_verifies_and_rejects(signed: tuple[str, str, Received]) -> None:
    new, old, request = signed
    namespace: dict[str, Any] = {}
    exec(compile(snippet("python"), "docs/webhooks.md", "exec"), namespace)
    verify_webhook = namespace["verify_webhook"]
    assert verify_webhook(new, request.headers, request.body)
    assert verify_webhook(old, request.headers, request.body)
    assert not verify_webhook(new, request.headers, tampered(request))
    assert not verify_webhook(new_secret(), request.headers, request.body)
    stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 3600)}
    assert not verify_webhook(new, stale, request.body)


def run_node(tmp_path: Path, secret: str, headers: dict[str, str], body: bytes) -> int:
    (tmp_path / "verify.js").write_text(snippet("javascript"))
    (tmp_path / "headers.json").write_text(json.dumps(headers))
    (tmp_path / "body.json").write_bytes(body)
    harness = (
        'const { verifyWebhook } = require("./verify.js"); const fs = require("fs");'
        'const ok = verifyWebhook(process.env.SECRET, JSON.parse(fs.readFileSync("headers.json")),'
        ' fs.readFileSync("body.json")); process.exit(ok ? 0 : 1);'
    )
    (tmp_path / "harness.js").write_text(harness)
    done = subprocess.run(
        [NODE, "harness.js"], cwd=tmp_path, env={"SECRET": secret}, capture_output=True, timeout=30
    )
    assert not done.stderr, done.stderr
    return done.returncode


def test_javascript_snippet_verifies_and_rejects(tmp_path: Path, signed: tuple[str, str, Received]) -> None:
    new, old, request = signed
    assert run_node(tmp_path, new, request.headers, request.body) == 0
    assert run_node(tmp_path, old, request.headers, request.body) == 0
    assert run_node(tmp_path, new, request.headers, tampered(request)) == 1
    assert run_node(tmp_path, new_secret(), request.headers, request.body) == 1


def run_shell(
    tmp_path: Path, secret: str, headers: dict[str, str], body: bytes
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "body.json").write_bytes(body)
    env = {
        "PATH": "/usr/bin:/bin",
        "SECRET": secret,
        "WEBHOOK_ID": headers["webhook-id"],
        "WEBHOOK_TIMESTAMP": headers["webhook-timestamp"],
        "WEBHOOK_SIGNATURE": headers["webhook-signature"],
    }
    return subprocess.run(
        ["/bin/sh", "-c", snippet("shell")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )


def test_shell_snippet_verifies_and_rejects(tmp_path: Path, signed: tuple[str, str, Received]) -> None:
    new, old, request = signed
    for secret in (new, old):
        done = run_shell(tmp_path, secret, request.headers, request.body)
        assert done.returncode == 0 and done.stdout.strip() == "valid", done.stderr
    bad = run_shell(tmp_path, new, request.headers, tampered(request))
    assert bad.returncode == 1 and bad.stdout.strip() == "invalid signature"
    stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 3600)}
    assert run_shell(tmp_path, new, stale, request.body).stdout.strip() == "stale timestamp"


def test_curl_snippet_sends_a_request_our_verifier_accepts(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    secret = new_secret()
    body = json.dumps({"type": "invoice.extracted", "data": {"id": "inv_9"}}).encode()
    (tmp_path / "body.json").write_bytes(body)
    env = {"PATH": "/usr/bin:/bin", "SECRET": secret, "URL": webhook_receiver.url}
    done = subprocess.run(
        ["/bin/sh", "-c", snippet("curl")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    [request] = webhook_receiver.accepted()
    assert request.body == body and request.headers["webhook-id"].startswith("evt_test_")
    assert verify(secret, request.headers, request.body)
    assert not verify(new_secret(), request.headers, request.body)
