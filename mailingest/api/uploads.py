"""``POST /v1/documents``: upload files for extraction, and ``GET /v1/jobs/{id}``.

Each file becomes a ledger message with source ``api`` (an ``.eml`` as a message, anything else
as a lone file), exactly as ``mailingest ingest`` records files. Asynchronously (the default,
202 + ``job_...``) the running pipeline claims them like new mail; with ``?sync=true`` a single
small file is claimed by the request itself and extracted before it answers (201).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, File, Header, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from sqlalchemy import update
from sqlmodel import Session, col, select

from mailingest.api import actions
from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.errors import MailingestError
from mailingest.models import new_id
from mailingest.pipeline.analyse import analyse
from mailingest.pipeline.runner import Runtime, analysis_context, document_view, store_analysis
from mailingest.storage import repo, tables
from mailingest.storage.db import session_scope
from mailingest.storage.tables import IdempotencyRecord, utcnow
from mailingest.storage.tables_api import UploadJob
from mailingest.workers import build_runtime

MAX_FILES = 100
SYNC_MAX_BYTES = 10 * 2**20  # larger files go through the queue: a request should not run for minutes
SETTLED = ("processed", "failed", "duplicate")


def _limit(ctx: Context) -> int:
    return ctx.config.pipeline.max_document_bytes


def _read(upload: UploadFile, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{upload.filename or 'a file'} is larger than the limit of {limit} bytes")
    return data


def _name(upload: UploadFile, index: int) -> str:
    return (upload.filename or f"upload-{index}").replace("\\", "/").rsplit("/", 1)[-1][:500]


def _ledger_name(name: str) -> str | None:
    """None for a mail message (parsed as one), else the file name the pipeline sniffs by."""
    return None if name.lower().endswith(".eml") else name


def _invoices_of(session: Session, msg: tables.Message) -> list[tables.Invoice]:
    origin = msg.duplicate_of or msg.id
    return list(
        session.exec(
            select(tables.Invoice).where(tables.Invoice.message_id == origin).order_by(col(tables.Invoice.id))
        ).all()
    )


def file_view(session: Session, filename: str | None, message_id: str) -> dict[str, Any]:
    msg = session.get(tables.Message, message_id)
    assert msg is not None
    return {
        "filename": filename,
        "message_id": message_id,
        "status": msg.status,
        "duplicate_of": msg.duplicate_of,
        "error": msg.error,
        "invoice_ids": [i.id for i in _invoices_of(session, msg)],
    }


def job_view(session: Session, job: UploadJob) -> dict[str, Any]:
    files = [file_view(session, f["filename"], f["message_id"]) for f in job.files]
    return {
        "id": job.id,
        "status": "done" if all(f["status"] in SETTLED for f in files) else "running",
        "created_at": job.created_at.isoformat(),
        "files": files,
    }


def _claim_new(
    session: Session, ctx: Context, raw: bytes, filename: str | None, worker: str
) -> tuple[str, str | None]:
    """Record the file and claim it for this request in the same transaction, so the pipeline
    never races the request for it. Returns (message id, claim token or None for a duplicate)."""
    ctx.blobs.put(session, raw)
    msg = repo.record_message(session, source="api", raw=raw, mailbox="api", filename=filename)
    session.flush()
    if msg.status == "duplicate":
        return msg.id, None
    token = f"{worker}:{secrets.token_hex(8)}"
    session.execute(
        update(tables.Message)
        .where(col(tables.Message.id) == msg.id)
        .values(
            status="processing",
            attempts=1,
            claim_token=token,
            claimed_until=utcnow() + timedelta(seconds=ctx.config.pipeline.lease),
        )
    )
    return msg.id, token


def extract_now(
    ctx: Context, rt: Runtime, raw: bytes, filename: str | None, actor: str, key: str | None, print_: str
) -> tuple[int, dict[str, Any]]:
    with session_scope(ctx.engine) as session:
        msg_id, token = _claim_new(session, ctx, raw, filename, rt.worker)
        received_at = session.get(tables.Message, msg_id).received_at  # type: ignore[union-attr]
    if token is not None:
        context = analysis_context(rt, "api", "api", received_at)
        try:
            analysis = analyse(raw, filename=filename, context=context, max_bytes=rt.max_document_bytes)
        except MailingestError as exc:
            with session_scope(ctx.engine) as session:
                repo.finish_claim(session, msg_id, token, status="failed", error=exc.as_dict())
            analysis = None
        if analysis is not None:
            with session_scope(ctx.engine) as session:
                msg = session.get(tables.Message, msg_id)
                assert msg is not None
                store_analysis(session, rt, msg, analysis, token)
    with session_scope(ctx.engine) as session:
        msg = session.get(tables.Message, msg_id)
        assert msg is not None
        origin = msg.duplicate_of or msg.id
        docs = session.exec(select(tables.Document).where(tables.Document.message_id == origin)).all()
        body = {
            "message_id": msg_id,
            "status": msg.status,
            "duplicate_of": msg.duplicate_of,
            "error": msg.error,
            "documents": [document_view(d) for d in docs],
            "invoices": [i.data for i in _invoices_of(session, msg)],
        }
        if key is not None:
            session.add(
                IdempotencyRecord(actor=actor, key=key, fingerprint=print_, status_code=201, body=body)
            )
    return 201, body


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["documents"])
    writer, reader = ctx.scope("invoices:write"), ctx.scope("invoices:read")
    runtimes: list[Runtime] = []

    def runtime() -> Runtime:
        if not runtimes:  # the routing rules are loaded once, on the first synchronous upload
            runtimes.append(build_runtime(ctx.config, ctx.engine, ctx.blobs, "api"))
        return runtimes[0]

    @api.post("/documents", status_code=202, responses={201: {"description": "extracted (sync=true)"}})
    def upload(
        files: Annotated[list[UploadFile], File(description="one or more documents or .eml messages")],
        sync: Annotated[bool, Query(description="extract a single small file in the request")] = False,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Upload documents for extraction: 202 with a job to poll, or 201 with the invoices
        when ``sync=true`` (one file of at most 10 MiB). 413 when a file exceeds
        ``[pipeline] max_document_bytes``."""
        if len(files) > MAX_FILES:
            raise HTTPException(422, f"files: at most {MAX_FILES} files per upload")
        limit = _limit(ctx)
        contents = [(_name(f, i), _read(f, limit)) for i, f in enumerate(files)]
        print_ = actions.fingerprint(
            "POST", "/v1/documents", [sync, [(n, hashlib.sha256(b).hexdigest()) for n, b in contents]]
        )
        actor = principal.actor
        if sync:
            if len(contents) != 1 or len(contents[0][1]) > SYNC_MAX_BYTES:
                raise HTTPException(422, f"sync: only one file of at most {SYNC_MAX_BYTES} bytes")
            with Session(ctx.engine) as s:
                stored = actions.stored_response(s, actor, idempotency_key, print_)
            if stored is not None:
                return stored.response()
            status_code, body = extract_now(
                ctx, runtime(), contents[0][1], _ledger_name(contents[0][0]), actor, idempotency_key, print_
            )
            return JSONResponse(body, status_code=status_code)

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            accepted = []
            for name, raw in contents:
                ctx.blobs.put(session, raw)
                msg = repo.record_message(
                    session, source="api", raw=raw, mailbox="api", filename=_ledger_name(name)
                )
                session.flush()
                accepted.append({"filename": name, "message_id": msg.id})
            job = UploadJob(id=new_id("job"), actor=actor, files=accepted)
            session.add(job)
            session.flush()
            repo.audit(
                session,
                actor=actor,
                action="documents.uploaded",
                subject_type="job",
                subject_id=job.id,
                detail={"files": len(accepted)},
            )
            return 202, job_view(session, job)

        outcome = actions.idempotent(
            ctx.engine, actor=actor, idempotency_key=idempotency_key, request_print=print_, work=work
        )
        ctx.queued()
        return outcome.response({"Location": f"/v1/jobs/{outcome.body['id']}"})

    @api.get("/jobs/{job_id}", tags=["documents"], dependencies=[reader])
    def get_job(job_id: str) -> dict[str, Any]:
        """Per-file status of an upload and the invoices each file produced."""
        with Session(ctx.engine) as s:
            job = s.get(UploadJob, job_id)
            if job is None:
                raise HTTPException(404, f"no job {job_id}")
            return job_view(s, job)

    return api
