"""``POST /v1/documents`` (sync and async), ``/v1/jobs``, downloads of the original bytes and
reprocessing — real fixture files through the real app and pipeline, on SQLite and PostgreSQL,
and once through the real daemon."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mailingest.api.app import create_app
from mailingest.config import Config
from mailingest.pipeline.runner import process_next
from mailingest.storage import db
from mailingest.storage.blobs import BlobStore
from mailingest.workers import build_runtime
from tests.conftest import FIXTURES, DaemonProcess
from tests.test_api import make_key, request

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
CII = FIXTURES / "einvoice" / "en16931__cii__examples__CII_business_example_01.xml"
PDF = FIXTURES / "pdf" / "ch-alpen-consulting.pdf"
EML = FIXTURES / "email" / "mikel-mail__attachment_emails__attachment_pdf_non_ascii.eml"


def truth(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(f"{path}.truth.json").read_text()))


@pytest.fixture
def engine(db_url: str) -> Any:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def config_for(tmp_path: Path, **pipeline: Any) -> Config:
    return Config.model_validate(
        {"data_dir": str(tmp_path / "data"), "rules": {"path": str(tmp_path / "rules")}, "pipeline": pipeline}
    )


def run_pipeline(config: Config, engine: Any) -> int:
    """What the daemon's worker does: claim and process until nothing is left."""
    blobs = BlobStore(config.data_dir / "blobs")
    runtime = build_runtime(config, engine, blobs, "test-worker")
    done = 0
    while process_next(runtime):
        done += 1
    return done


def upload(app: FastAPI, key: str, *paths: Path, sync: bool = False, **kw: Any) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    return request(app, "POST", f"/v1/documents{'?sync=true' if sync else ''}", key=key, files=files, **kw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sync_upload_extracts_and_downloads_return_the_original(engine: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    app = create_app(engine, config=config, auth_mode="required")
    _, key = make_key(engine, "invoices:read", "invoices:write")
    _, reader = make_key(engine, "invoices:read")

    for path in (UBL, PDF):
        made = upload(app, key, path, sync=True, headers={"Idempotency-Key": f"up-{path.name}"})
        assert made.status_code == 201, made.text
        body = made.json()
        expected = truth(path)
        assert body["status"] == "processed" and len(body["invoices"]) == 1
        invoice = body["invoices"][0]
        assert invoice["number"] == expected["number"]
        assert invoice["seller"]["name"] == expected["seller"]["name"]
        assert invoice["source"]["channel"] == "api"
        replay = upload(app, key, path, sync=True, headers={"Idempotency-Key": f"up-{path.name}"})
        assert replay.status_code == 201 and replay.json() == body
        assert replay.headers["idempotent-replayed"] == "true"

        [doc] = body["documents"]
        content = request(app, "GET", f"/v1/documents/{doc['id']}/content", key=reader)
        assert content.status_code == 200 and sha(content.content) == sha(path.read_bytes())
        assert content.headers["content-type"].split(";")[0] == doc["content_type"]
        assert path.name in content.headers["content-disposition"]
        raw = request(app, "GET", f"/v1/messages/{body['message_id']}/raw", key=reader)
        assert raw.status_code == 200 and sha(raw.content) == sha(path.read_bytes())
        listed = request(app, "GET", f"/v1/documents?message_id={body['message_id']}", key=reader).json()
        assert [d["id"] for d in listed["data"]] == [doc["id"]]

    again = upload(app, key, UBL, sync=True)  # the same bytes again: a duplicate, not a second invoice
    assert again.status_code == 201 and again.json()["status"] == "duplicate"
    assert [i["number"] for i in again.json()["invoices"]] == [truth(UBL)["number"]]
    messages = request(app, "GET", "/v1/messages?source=api&limit=2", key=reader).json()
    assert messages["data"][0]["status"] == "duplicate" and messages["has_more"] is True
    rest = request(
        app, "GET", f"/v1/messages?source=api&starting_after={messages['data'][1]['id']}", key=reader
    )
    assert len(rest.json()["data"]) == 1 and rest.json()["has_more"] is False
    assert request(app, "GET", "/v1/documents/doc_404/content", key=reader).status_code == 404
    assert upload(app, reader, UBL, sync=True).status_code == 403
    two = upload(app, key, UBL, PDF, sync=True)
    assert two.status_code == 422 and "sync" in two.json()["detail"]


def test_reprocess_replaces_the_extraction(engine: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    app = create_app(engine, config=config, auth_mode="required")
    _, key = make_key(engine, "invoices:read", "invoices:write", "invoices:approve")
    body = upload(app, key, CII, sync=True).json()
    [invoice] = body["invoices"]
    msg_id = body["message_id"]

    queued = request(
        app, "POST", f"/v1/invoices/{invoice['id']}/reprocess", key=key, headers={"Idempotency-Key": "rp-1"}
    )
    assert queued.status_code == 202, queued.text
    assert queued.json() == {"message_id": msg_id, "status": "received", "removed_invoices": [invoice["id"]]}
    replay = request(
        app, "POST", f"/v1/invoices/{invoice['id']}/reprocess", key=key, headers={"Idempotency-Key": "rp-1"}
    )
    assert replay.status_code == 202 and replay.json() == queued.json()
    assert request(app, "POST", f"/v1/messages/{msg_id}/reprocess", key=key).status_code == 409  # queued
    assert request(app, "GET", f"/v1/invoices/{invoice['id']}", key=key).status_code == 404

    assert run_pipeline(config, engine) == 1
    message = request(app, "GET", f"/v1/messages/{msg_id}", key=key).json()
    assert message["status"] == "processed" and len(message["documents"]) == 1
    [again] = request(app, "GET", f"/v1/invoices?number={invoice['number']}", key=key).json()["data"]
    assert again["id"] != invoice["id"] and again["totals"] == invoice["totals"]
    assert "duplicate" not in again  # the old invoice is gone, so the new one is no duplicate of it

    assert request(app, "POST", f"/v1/invoices/{again['id']}/approve", key=key).status_code == 200
    decided = request(app, "POST", f"/v1/messages/{msg_id}/reprocess", key=key)
    assert decided.status_code == 409 and "decided" in decided.json()["detail"]
    assert request(app, "POST", "/v1/messages/msg_404/reprocess", key=key).status_code == 404


def test_async_upload_makes_a_job(engine: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path, max_document_bytes=200_000)
    wake = threading.Event()  # the daemon passes its pipeline's: queued work is picked up at once
    app = create_app(engine, config=config, auth_mode="required", wake=wake)
    _, key = make_key(engine, "invoices:read", "invoices:write")
    accepted = upload(app, key, UBL, CII, EML, headers={"Idempotency-Key": "job-1"})
    assert accepted.status_code == 202, accepted.text
    assert wake.is_set()
    job = accepted.json()
    assert job["id"].startswith("job_") and accepted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "running" and [f["status"] for f in job["files"]] == ["received"] * 3
    replay = upload(app, key, UBL, CII, EML, headers={"Idempotency-Key": "job-1"})
    assert replay.json()["id"] == job["id"] and replay.headers["idempotent-replayed"] == "true"

    assert run_pipeline(config, engine) == 3
    later = request(app, "GET", "/v1/messages?received_from=2999-01-01T00:00:00%2B02:00", key=key)
    assert later.json() == {"data": [], "has_more": False}
    since = request(app, "GET", "/v1/messages?received_from=2000-01-01T00:00:00Z&status=processed", key=key)
    assert [m["filename"] for m in since.json()["data"]] == [None, CII.name, UBL.name]  # newest first
    assert since.json()["data"][0]["subject"]  # the .eml was taken as a mail message, not a file
    done = request(app, "GET", f"/v1/jobs/{job['id']}", key=key).json()
    assert done["status"] == "done"
    assert done["files"][2]["filename"] == EML.name and done["files"][2]["status"] == "processed"
    for file, path in zip(done["files"][:2], (UBL, CII), strict=True):
        assert file["filename"] == path.name and file["status"] == "processed"
        [invoice_id] = file["invoice_ids"]
        got = request(app, "GET", f"/v1/invoices/{invoice_id}", key=key).json()
        assert got["number"] == truth(path)["number"]

    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.4\n" + b"0" * 200_001)
    refused = upload(app, key, big)
    assert refused.status_code == 413 and refused.headers["content-type"] == "application/problem+json"
    assert "200000" in refused.json()["detail"]
    assert request(app, "GET", "/v1/jobs/job_404", key=key).status_code == 404


def test_the_running_daemon_processes_an_api_upload(make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon()
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailingest",
            "api-key",
            "create",
            "--name",
            "t",
            "--scopes",
            "invoices:read,invoices:write",
            "-c",
            str(daemon.config_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=daemon.env,
        cwd=daemon.workdir,
    )
    key = created.stdout.strip()
    daemon.start()
    headers = {"Authorization": f"Bearer {key}"}
    job = httpx.post(
        f"{daemon.api}/v1/documents",
        headers=headers,
        files=[("files", (UBL.name, UBL.read_bytes()))],
        timeout=10,
    )
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(f"{daemon.api}/v1/jobs/{job.json()['id']}", headers=headers, timeout=10).json()
        if status["status"] == "done" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["status"] == "done", daemon.log()
    [invoice_id] = status["files"][0]["invoice_ids"]
    got = httpx.get(f"{daemon.api}/v1/invoices/{invoice_id}", headers=headers, timeout=10).json()
    assert got["number"] == truth(UBL)["number"]
