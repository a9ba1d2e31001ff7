"""``/v1/rules``: the routing rules in force, a draft checked like ``mailingest rules check``, and a
dry run of a draft (or the active rules) over stored invoices like ``mailingest rules test
--stored N``.

Scopes: reading the active rules needs ``invoices:read`` (rules decide what happens to invoices;
whoever reads invoices may read why); checking and dry-running drafts need ``rules:write`` (the
people who author rules). Neither endpoint changes anything: drafts are loaded in a private
temporary directory, never in the rules directory, and a dry run writes no invoice, so a retry
is always safe (an ``Idempotency-Key`` is accepted and not needed). Validation hooks are not
called by a dry run: it shows what the rules decide from what is stored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailingest.api.actions import Context, problem
from mailingest.api.invoices import InvoiceFilters, filters, page
from mailingest.routing import tooling
from mailingest.routing.loader import Problem
from mailingest.routing.model import Rule

MAX_DRAFT_CHARS = 512 * 1024
MAX_STORED = 1000
TOML_TYPES = ("application/toml", "text/toml", "text/x-toml", "text/plain")


class Draft(BaseModel):
    """A draft rule file: its TOML text and the name it would have in the rules directory."""

    model_config = ConfigDict(extra="forbid")

    toml: str | None = Field(default=None, max_length=MAX_DRAFT_CHARS, description="the rule file's text")
    name: str = Field(default="draft.toml", max_length=105, description="its file name in rules/")
    with_active: bool = Field(
        default=False,
        description="check it together with the other files of the rules directory, as if saved "
        "there as `name` (replacing that file): unreachable rules, conflicts and repeated names "
        "across files show",
    )


class DryRun(Draft):
    """A dry run: the draft (default: the active rules) over the newest ``stored`` invoices."""

    stored: int = Field(default=20, ge=1, le=MAX_STORED, description="how many of the newest invoices")
    match: str | None = Field(
        default=None, pattern="^(all|first)$", description="match mode; default: [rules] match"
    )


def _body_schema(model: type[BaseModel], required: bool) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
            "description": "JSON, or the TOML text itself with `Content-Type: application/toml` "
            "(the other fields then come from the query string)",
        }
    }


async def _read(request: Request, model: type[Draft], query: dict[str, Any]) -> Draft:
    """The body as ``model``: JSON fields, or raw TOML text plus ``query`` (name, stored, ...)."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind in TOML_TYPES:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise HTTPException(422, f"the TOML draft is not UTF-8 text: {exc}") from exc
            given = {k: v for k, v in query.items() if v is not None}
            return model.model_validate({**given, "toml": text})
        if raw.strip() and kind not in ("application/json", ""):
            raise HTTPException(415, f"send JSON or application/toml, not {kind}")
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise HTTPException(422, "the body must be a JSON object")
        return model.model_validate({**{k: v for k, v in query.items() if v is not None}, **data})
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def _load(ctx: Context, draft: Draft) -> tuple[list[Rule], list[Problem]]:
    assert draft.toml is not None
    try:
        return tooling.load_draft(
            draft.toml, name=draft.name, alongside=ctx.config.rules.path if draft.with_active else None
        )
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("body", "name"), "msg": str(exc), "type": "value_error"}]
        ) from exc


def _first(ctx: Context, match: str | None) -> bool:
    return (match or ctx.config.rules.match) == "first"


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["rules"])

    @api.get("/rules", dependencies=[ctx.scope("invoices:read")])
    def list_rules() -> dict[str, Any]:
        """The active routing rules in priority order (name, file, line, priority, enabled, when,
        expr, then), the match mode and, when the daemon serving this API runs them, the live
        status (``loaded_at``, ``reloads``, ``error`` of a broken edit — the last good rules stay
        active and are the ones listed). Without a live set the files are read as they are now
        and load problems are listed in ``problems``."""
        path = ctx.config.rules.path
        rules, problems, live = tooling.active_rules(path)
        return {
            "path": str(path),
            "match": ctx.config.rules.match,
            "live": live,
            "problems": [tooling.finding(p, loading=True) for p in problems],
            "hooks": [
                {"name": h.name, "enabled": h.enabled, "on_error": h.on_error} for h in ctx.config.rules.hooks
            ],
            "data": [tooling.rule_view(r) for r in rules],
        }

    @api.post(
        "/rules/validate",
        dependencies=[ctx.scope("rules:write")],
        openapi_extra=_body_schema(Draft, True),
    )
    async def validate_rules(
        request: Request,
        name: Annotated[str | None, Query(max_length=105)] = None,
        with_active: bool | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Check a draft rule file the way ``mailingest rules check`` does: syntax, bad values,
        unknown fields (errors), unreachable and conflicting rules (warnings), each with file and
        line. 200 with ``valid: false`` when the draft has errors; the rules directory is never
        touched. The match mode is the configured one (``[rules] match``)."""
        draft = await _read(request, Draft, {"name": name, "with_active": with_active})
        if draft.toml is None:
            raise RequestValidationError(
                [{"loc": ("body", "toml"), "msg": "Field required", "type": "missing"}]
            )
        rules, problems = await run_in_threadpool(_load, ctx, draft)
        return tooling.check_result(rules, problems, first_match=_first(ctx, None))

    @api.post(
        "/rules/dry-run",
        dependencies=[ctx.scope("rules:write")],
        openapi_extra=_body_schema(DryRun, False),
        response_model=None,
    )
    async def dry_run(
        request: Request,
        found: Annotated[InvoiceFilters, Depends(filters)],
        stored: Annotated[int | None, Query(ge=1, le=MAX_STORED)] = None,
        match: Annotated[str | None, Query(pattern="^(all|first)$")] = None,
        name: Annotated[str | None, Query(max_length=105)] = None,
        with_active: bool | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any] | JSONResponse:
        """Run a draft (or, without ``toml``, the active rules) over the newest ``stored``
        invoices that match the list filters (query string, as ``GET /v1/invoices``): for each,
        the rules that would fire and the resulting status, approvers, tags, deliver_to and GL
        accounts next to the stored status; then a summary (firings per rule, rules that never
        fired, status changes). A draft that does not load is a 422 listing its findings."""
        query = {"stored": stored, "match": match, "name": name, "with_active": with_active}
        run = await _read(request, DryRun, query)
        assert isinstance(run, DryRun)
        first = _first(ctx, run.match)
        if run.toml is None:
            rules, problems, _ = await run_in_threadpool(tooling.active_rules, ctx.config.rules.path)
            source = "active"
        else:
            rules, problems = await run_in_threadpool(_load, ctx, run)
            source = "draft"
        if problems:
            return problem(
                422,
                f"the {source} rules do not load ({len(problems)} problem(s)); nothing was run",
                findings=[tooling.finding(p, loading=True) for p in problems],
            )
        return await run_in_threadpool(_dry_run, ctx, rules, found, run.stored, first, source)

    return api


def _dry_run(
    ctx: Context, rules: list[Rule], found: InvoiceFilters, stored: int, first: bool, source: str
) -> dict[str, Any]:
    with Session(ctx.engine) as session:
        rows = page(session, ctx, found, limit=stored, descending=True, after=None)
        results = [tooling.dry_run_row(session, row, rules, first_match=first) for row in rows]
    return {
        "rules": source,
        "match": "first" if first else "all",
        "summary": tooling.summarize(rules, results),
        "data": results,
    }
