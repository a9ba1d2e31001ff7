"""``/v1/webhook-endpoints``: webhook endpoints managed through the API (scope ``webhooks:manage``).

Create (the ``whsec_`` secret is generated unless given, and returned only in this response),
list, get (with an ``ETag``), PATCH url / events / enabled / payload / description under
``If-Match``, DELETE (its pending deliveries are dead-lettered, with the reason), rotate the
secret (the new one is returned once; the old one keeps signing as a second signature for
``overlap_seconds``, default 24 h) and queue a test event. The running daemon picks changes up
within a few seconds (``mailingest.connectors.dispatcher``); the outbox fans events out to the
enabled endpoints in the transaction that writes them (``repo.endpoint_subscriptions``).

The SSRF guard refuses loopback, private and link-local targets unless the operator set
``[api] allow_private_webhooks = true``; the decision is stored with the endpoint and checked
again at every delivery (a name that later resolves elsewhere is still refused).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete
from sqlmodel import Session, col, select

from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.connectors.registry import configured
from mailingest.connectors.webhook import check_destination, new_secret, secret_key
from mailingest.errors import DeliveryError, DestinationGone, MailingestError
from mailingest.models import new_id
from mailingest.storage import repo, tables
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_endpoints import WebhookEndpoint

DEFAULT_OVERLAP = 24 * 3600
EventPattern = Annotated[
    str, Field(min_length=1, max_length=60, pattern=r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$")
]
Url = Annotated[str, Field(max_length=2000, pattern=r"^https?://[^\s/\x00]+[^\s\x00]*$")]
Text = Annotated[str, Field(max_length=500, pattern=r"^[^\x00]*$")]


def _check_secret(value: str | None) -> str | None:
    if value is not None:
        try:
            secret_key(value)
        except MailingestError as exc:
            raise ValueError(exc.detail) from None
    return value


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    url: Url
    events: list[EventPattern] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50)
    secret: str | None = Field(default=None, max_length=200)
    payload: Literal["full", "thin"] = "full"
    enabled: bool = True
    description: Text | None = None

    _secret = field_validator("secret")(_check_secret)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: list[EventPattern] | None = Field(default=None, min_length=1, max_length=50)
    enabled: bool | None = None
    payload: Literal["full", "thin"] | None = None
    description: Text | None = None


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(default=DEFAULT_OVERLAP, ge=0, le=7 * 86400)
    secret: str | None = Field(default=None, max_length=200)

    _secret = field_validator("secret")(_check_secret)


def etag(row: WebhookEndpoint) -> str:
    return f'"{row.id}.{row.version}"'


def endpoint_view(row: WebhookEndpoint, state: tables.ConnectorState | None = None) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secrets."""
    now = utcnow()
    overlap = row.previous_secret_expires_at
    return {
        "id": row.id,
        "name": row.name,
        "url": row.url,
        "events": list(row.events),
        "payload": row.payload,
        "enabled": row.enabled,
        "description": row.description,
        "previous_secret_expires_at": overlap.isoformat()
        if row.previous_secret and overlap and overlap > now
        else None,
        "disabled_reason": state.disabled_reason if state is not None and state.disabled_at else None,
        "consecutive_failures": state.consecutive_failures if state is not None else 0,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def _guard(ctx: Context, url: str) -> bool:
    """The SSRF guard at the API: 422 for a private target unless the operator allows them. A
    name that does not resolve yet is accepted: every delivery checks the target again."""
    allow = ctx.config.api.allow_private_webhooks
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise HTTPException(422, f"url: not a valid URL ({exc})") from None
    if not host:
        raise HTTPException(422, "url: no host")
    try:
        check_destination(url, allow_private=allow)
    except DestinationGone as exc:
        raise HTTPException(
            422, f"url: {exc.detail.replace('set allow_private_network', 'set [api] allow_private_webhooks')}"
        ) from None
    except DeliveryError:
        pass  # the name does not resolve (yet): each delivery attempt checks it again
    except ValueError as exc:  # e.g. an IDNA label that is empty or too long
        raise HTTPException(422, f"url: not a valid host name ({exc})") from None
    return allow


def _get(session: Session, endpoint_id: str) -> WebhookEndpoint:
    row = session.get(WebhookEndpoint, endpoint_id)
    if row is None:
        raise HTTPException(404, f"no webhook endpoint {endpoint_id}")
    return row


def _audit(session: Session, principal: Principal, action: str, row: WebhookEndpoint, **detail: Any) -> None:
    repo.audit(
        session,
        actor=principal.actor,
        action=f"webhook_endpoint.{action}",
        subject_type="webhook_endpoint",
        subject_id=row.id,
        detail={"name": row.name, **detail},
    )


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["webhook endpoints"])
    manager = ctx.scope("webhooks:manage")

    @api.post("/v1/webhook-endpoints", status_code=201)
    def create_endpoint(
        request: Request,
        body: Annotated[EndpointCreate, Body()],
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Create an endpoint (201); the response holds its ``secret`` — the only time it is shown."""
        if body.name in {entry.name for _, entry in configured(ctx.config)}:
            raise HTTPException(409, f"name {body.name} is taken by a connector in the config file")
        allow = _guard(ctx, body.url)

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            if session.exec(select(WebhookEndpoint.id).where(WebhookEndpoint.name == body.name)).first():
                raise HTTPException(409, f"a webhook endpoint named {body.name} exists")
            row = WebhookEndpoint(
                id=new_id("whe"),
                name=body.name,
                url=body.url,
                events=list(body.events),
                secret=body.secret or new_secret(),
                payload=body.payload,
                enabled=body.enabled,
                allow_private_network=allow,
                description=body.description,
            )
            session.add(row)
            # a fresh start for the name (an earlier endpoint of that name may have been disabled)
            session.execute(delete(tables.ConnectorState).where(col(tables.ConnectorState.name) == body.name))
            session.add(tables.ConnectorState(name=body.name))
            _audit(session, principal, "created", row, url=row.url, events=row.events)
            session.flush()
            return 201, {**endpoint_view(row), "secret": row.secret}

        return ctx.respond(request, body.model_dump(mode="json"), idempotency_key, principal.actor, work)

    @api.get("/v1/webhook-endpoints", dependencies=[manager])
    def list_endpoints(
        limit: int = Query(20, ge=1, le=200),
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """Endpoints oldest first; ``starting_after`` takes the last id seen."""
        with Session(ctx.engine) as s:
            query = select(WebhookEndpoint).order_by(col(WebhookEndpoint.id)).limit(limit + 1)
            if starting_after:
                query = query.where(col(WebhookEndpoint.id) > starting_after)
            rows = list(s.exec(query).all())
            states = {
                st.name: st
                for st in s.exec(
                    select(tables.ConnectorState).where(
                        col(tables.ConnectorState.name).in_([r.name for r in rows])
                    )
                )
            }
            return {
                "data": [endpoint_view(r, states.get(r.name)) for r in rows[:limit]],
                "has_more": len(rows) > limit,
            }

    @api.get("/v1/webhook-endpoints/{endpoint_id}", dependencies=[manager])
    def get_endpoint(endpoint_id: str) -> JSONResponse:
        """One endpoint, with its ``ETag`` for a later PATCH."""
        with Session(ctx.engine) as s:
            row = _get(s, endpoint_id)
            state = s.get(tables.ConnectorState, row.name)
            return JSONResponse(endpoint_view(row, state), headers={"ETag": etag(row)})

    @api.patch("/v1/webhook-endpoints/{endpoint_id}")
    def patch_endpoint(
        endpoint_id: str,
        body: Annotated[EndpointPatch, Body()],
        if_match: Annotated[str | None, Header()] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Change url, events, enabled, payload or description under ``If-Match`` (428 without,
        412 when it changed since). ``enabled = true`` also clears a disabled state a 410 left."""
        if if_match is None:
            raise HTTPException(428, "send If-Match with the ETag of GET /v1/webhook-endpoints/{id}")
        changes = body.model_dump(exclude_unset=True)
        if changes.get("url") is not None:
            allow = _guard(ctx, changes["url"])
        with Session(ctx.engine, expire_on_commit=False) as s:
            row = _get(s, endpoint_id)
            if if_match.strip() not in (etag(row), "*"):
                raise HTTPException(
                    412, f"webhook endpoint {endpoint_id} changed since you read it ({etag(row)})"
                )
            for field, value in changes.items():
                if value is None and field != "description":
                    raise HTTPException(422, f"{field}: may not be null")
                setattr(row, field, list(value) if field == "events" else value)
            if changes.get("url") is not None:
                row.allow_private_network = allow
            if changes.get("enabled") is True:
                repo.enable_connector(s, row.name, actor=principal.actor)
            row.version += 1
            row.updated_at = utcnow()
            s.add(row)
            _audit(s, principal, "updated", row, changes=changes)
            s.commit()
            state = s.get(tables.ConnectorState, row.name)
            return JSONResponse(endpoint_view(row, state), headers={"ETag": etag(row)})

    @api.delete("/v1/webhook-endpoints/{endpoint_id}")
    def delete_endpoint(endpoint_id: str, principal: Principal = manager) -> dict[str, Any]:
        """Delete the endpoint; its pending deliveries become dead with a clear ``last_error``."""
        with Session(ctx.engine) as s:
            row = _get(s, endpoint_id)
            reason = f"webhook endpoint {row.id} ({row.name}) was deleted"
            dead = repo.dead_letter_pending(s, row.name, reason)
            _audit(s, principal, "deleted", row, dead_lettered=dead)
            s.execute(delete(tables.ConnectorState).where(col(tables.ConnectorState.name) == row.name))
            s.delete(row)
            s.commit()
        return {"id": endpoint_id, "deleted": True, "dead_lettered": dead}

    @api.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret")
    def rotate_secret(
        endpoint_id: str,
        request: Request,
        body: Annotated[RotateRequest | None, Body()] = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """A new secret (returned once); the old one keeps signing — a second signature in the
        ``webhook-signature`` header — for ``overlap_seconds`` (default 86400)."""
        options = body or RotateRequest()

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            row = _get(session, endpoint_id)
            row.previous_secret = row.secret
            row.previous_secret_expires_at = utcnow() + timedelta(seconds=options.overlap_seconds)
            row.secret = options.secret or new_secret()
            row.version += 1
            row.updated_at = utcnow()
            session.add(row)
            _audit(session, principal, "secret_rotated", row, overlap_seconds=options.overlap_seconds)
            return 200, {**endpoint_view(row), "secret": row.secret}

        return ctx.respond(request, options.model_dump(mode="json"), idempotency_key, principal.actor, work)

    @api.post("/v1/webhook-endpoints/{endpoint_id}/test", status_code=202)
    def test_endpoint(
        endpoint_id: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Queue a ``connector.test`` event for this endpoint alone (202)."""

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            row = _get(session, endpoint_id)
            event, delivery = repo.add_test_event(session, row.name)
            _audit(session, principal, "tested", row)
            return 202, {"event_id": event.id, "delivery_id": delivery.id, "connector": row.name}

        return ctx.respond(request, None, idempotency_key, principal.actor, work)

    return api
