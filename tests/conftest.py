"""Shared test fixtures: real databases (SQLite file and the machine's PostgreSQL), free ports,
a real HTTP webhook receiver on loopback and the real daemon as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def _shared_corpus() -> Path:
    """The shared dev corpus (read-only; its LGPL and unlicensed files must not be copied here).

    Beside the checkout in a session's work tree; at its fixed place for a checkout elsewhere
    (CI's clean clone); or wherever MAILINGEST_CORPUS points."""
    candidates = [
        os.environ.get("MAILINGEST_CORPUS"),
        ROOT.parent / "shared" / "corpus",
        "/work/shared/corpus",
    ]
    for candidate in candidates:
        if candidate and Path(candidate, "index.jsonl").exists():
            return Path(candidate)
    return ROOT.parent / "shared" / "corpus"


SHARED_CORPUS = _shared_corpus()
PG_ADMIN = os.environ.get("MAILINGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards (parallel-safe)."""
    name = f"mailingest_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("pg_url"))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback recording every POST; ``responses`` scripts its answers."""

    port: int
    requests: list[Received] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r, (code, _) in zip(self.requests, self._codes, strict=False) if 200 <= code < 300]

    _codes: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted()
            if predicate(got):
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"webhook condition not met in {timeout}s; got {[r.json['type'] for r in self.accepted()]}"
        )


def start_receiver(port: int | None = None) -> tuple[WebhookReceiver, ThreadingHTTPServer]:
    receiver = WebhookReceiver(port=port or 0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                code, headers = receiver.responses.pop(0) if receiver.responses else (200, {})
                receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                receiver._codes.append((code, headers))
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
    receiver.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class DaemonProcess:
    """The real daemon (``python -m mailingest serve``) in a subprocess with its own data dir."""

    workdir: Path
    api_port: int
    smtp_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def drop(self) -> Path:
        return self.workdir / "data" / "inbox"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.workdir / "daemon.log", "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailingest", "serve", "--config", str(self.config_path)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return (self.workdir / "daemon.log").read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_processed(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.get("/v1/stats")
            if predicate(stats):
                return stats
            time.sleep(0.1)
        raise AssertionError(f"not processed in {timeout}s: {self.get('/v1/stats')}\n{self.log()}")


def write_config(
    workdir: Path, *, api_port: int, smtp_port: int, webhook_url: str | None, extra: str = ""
) -> Path:
    text = f"""
data_dir = "{workdir / "data"}"

[log]
format = "json"
level = "info"

[api]
listen = "127.0.0.1:{api_port}"

[sources.smtp]
listen = "127.0.0.1:{smtp_port}"
max_message_bytes = 5000000

[sources.drop]
poll_interval = "0.2s"
settle_time = "0.1s"

[outbox]
poll_interval = "0.2s"
retry_schedule = ["0s", "1s", "1s", "2s"]
"""
    if webhook_url:
        text += f"""
[[connectors.webhook]]
name = "test"
url = "{webhook_url}"
secret = {{ env = "TEST_WEBHOOK_SECRET" }}
allow_private_network = true
"""
    path = workdir / "config.toml"
    path.write_text(text + extra)
    return path


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def factory(webhook_url: str | None = None, extra: str = "") -> DaemonProcess:
        api_port, smtp_port = free_port(), free_port()
        write_config(tmp_path, api_port=api_port, smtp_port=smtp_port, webhook_url=webhook_url, extra=extra)
        env = {**os.environ, "TEST_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("MAILINGEST_")}
        daemon = DaemonProcess(workdir=tmp_path, api_port=api_port, smtp_port=smtp_port, env=env)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
