"""Schemathesis against the OpenAPI document served by a real daemon (``mailingest serve
--sandbox``, seeded with the sample fixtures): every operation, a few generated requests each,
sent with an admin key; no response may be a server error. Bounded: ``max_examples`` is small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sandbox:
    url: str
    values: dict[str, str]  # MAILINGEST_* lines the sandbox printed
    proc: subprocess.Popen[str]
    log: Path


def start_sandbox(workdir: Path, api: str = "") -> Sandbox:
    """``mailingest serve --sandbox`` on a free port; returns once it is ready."""
    port = free_port()
    config = workdir / "sandbox.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n{api}\n[log]\nformat = "json"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILINGEST_")}
    log = workdir / "sandbox.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailingest", "serve", "--sandbox", "--config", str(config)],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    values: dict[str, str] = {}
    assert proc.stdout is not None
    while "MI_CLIENT_SECRET" not in values:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"sandbox exited early:\n{log.read_text()[-3000:]}")
        name, _, value = line.strip().partition("=")
        values[name] = value
    url = values["MI_URL"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Sandbox(url, values, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise AssertionError(f"sandbox not ready:\n{log.read_text()[-3000:]}")


def stop_sandbox(sandbox: Sandbox) -> None:
    sandbox.proc.terminate()
    try:
        sandbox.proc.wait(20)
    except subprocess.TimeoutExpired:
        sandbox.proc.kill()
        sandbox.proc.wait()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    running = start_sandbox(tmp_path_factory.mktemp("openapi"), 'rate_limit = "0"')
    yield running
    stop_sandbox(running)


def test_no_server_errors(sandbox: Sandbox) -> None:
    schema = schemathesis.openapi.from_url(f"{sandbox.url}/openapi.json")
    headers = {"Authorization": f"Bearer {sandbox.values['MI_ADMIN_KEY']}"}
    failures: list[str] = []
    operations = 0
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=sandbox.url, headers=headers, timeout=15)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

        check()
    assert operations >= 20 and len(statuses) >= 2 * operations
    assert sum(s < 400 for s in statuses) >= operations // 2  # not only rejections
    assert not failures, "\n".join(failures)


def test_every_request_is_an_access_log_line(sandbox: Sandbox) -> None:
    key = sandbox.values["MI_READ_KEY"]
    assert httpx.get(
        f"{sandbox.url}/v1/invoices?limit=1", headers={"Authorization": f"Bearer {key}"}
    ).is_success
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in sandbox.log.read_text().splitlines() if '"api.request"' in line]
        mine = [
            e
            for e in lines
            if e.get("path") == "/v1/invoices" and e.get("status") == 200 and e.get("credential")
        ]
        if mine:
            assert mine[-1]["route"] == "/v1/invoices" and mine[-1]["method"] == "GET"
            assert mine[-1]["duration_ms"] >= 0 and mine[-1]["client"] == "127.0.0.1"
            assert key not in sandbox.log.read_text()  # credential ids, never secrets
            return
        time.sleep(0.1)
    raise AssertionError("no api.request log line for GET /v1/invoices")
