"""Deliveries and connectors: what was sent where, replay, and a test event per connector.

``GET /v1/deliveries`` and ``GET /v1/deliveries/{id}`` (with every attempt) show the outbox;
``POST /v1/deliveries/replay`` sends deliveries again (by event, by invoice or by time range):
each goes back to ``pending`` on the same row with a fresh retry schedule, so the request
carries the same ``webhook-id`` and receivers can de-duplicate. ``GET /v1/connectors`` lists
the configured connectors with their state (disabled, circuit); ``POST
/v1/connectors/{name}/test`` queues a ``connector.test`` event for that connector alone. All
need the ``webhooks:manage`` scope; the POSTs honour ``Idempotency-Key``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy import func
from sqlmodel import Session, col, select

from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.connectors.registry import configured, endpoint_config
from mailingest.storage import repo, tables
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_endpoints import WebhookEndpoint

Status = Literal["pending", "delivered", "dead"]


class ReplayRequest(BaseModel):
    event_id: str | None = Field(default=None, max_length=40)
    invoice_id: str | None = Field(default=None, max_length=40)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    connector: str | None = Field(default=None, max_length=100)
    status: Status | None = None

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        try:
            return value.astimezone(UTC) if value is not None else None
        except OverflowError:
            raise ValueError("time out of range") from None


def connector_view(
    kind: str, entry: Any, state: tables.ConnectorState | None, counts: dict[str, int]
) -> dict[str, Any]:
    now = utcnow()
    circuit = "closed"
    if state is not None and state.circuit_open_until is not None and state.circuit_open_until > now:
        circuit = "open"
    elif state is not None and state.consecutive_failures >= entry.circuit_failures:
        circuit = "half_open"
    return {
        "name": entry.name,
        "kind": kind,
        "events": list(entry.events),
        "routed_only": entry.routed_only,
        "disabled": state is not None and state.disabled_at is not None,
        "disabled_reason": state.disabled_reason if state is not None else None,
        "circuit": circuit,
        "consecutive_failures": state.consecutive_failures if state is not None else 0,
        "circuit_open_until": state.circuit_open_until.isoformat()
        if state and state.circuit_open_until
        else None,
        "deliveries": counts,
    }


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["deliveries"])
    manager = ctx.scope("webhooks:manage")

    @api.get("/v1/deliveries", dependencies=[manager])
    def list_deliveries(
        limit: int = Query(20, ge=1, le=200),
        starting_after: str | None = None,
        status: Status | None = None,
        connector: str | None = None,
        invoice_id: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Deliveries newest first; ``starting_after`` takes the last id seen."""
        with Session(ctx.engine) as s:
            rows = repo.find_deliveries(
                s,
                status=status,
                connector=connector,
                invoice=invoice_id,
                event=event_id,
                limit=limit + 1,
                starting_after=starting_after,
            )
        return {"data": [repo.delivery_view(d, e) for d, e in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/v1/deliveries/{delivery_id}", dependencies=[manager])
    def get_delivery(delivery_id: str) -> dict[str, Any]:
        """One delivery with every attempt (status code, duration, response excerpt, error)."""
        with Session(ctx.engine) as s:
            delivery = s.get(tables.Delivery, delivery_id)
            if delivery is None:
                raise HTTPException(404, f"no delivery {delivery_id}")
            event = s.exec(select(tables.Event).where(tables.Event.id == delivery.event_id)).one()
            attempts = repo.attempts_of(s, delivery_id)
            return {
                **repo.delivery_view(delivery, event),
                "attempts": [repo.attempt_view(a) for a in attempts],
            }

    @api.post("/v1/deliveries/replay")
    def replay(
        request: Request,
        body: Annotated[ReplayRequest, Body()],
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Send deliveries again (by ``event_id``, ``invoice_id`` or ``since``/``until``, narrowed
        by ``connector`` and ``status``); 422 when none of the three is given. ``disabled_connectors``
        names connectors among them that a 410 disabled: those deliveries wait."""
        if body.event_id is None and body.invoice_id is None and body.since is None:
            raise HTTPException(422, "name what to replay: event_id, invoice_id or since (with until)")

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            chosen = repo.select_for_replay(
                session,
                event=body.event_id,
                invoice=body.invoice_id,
                since=body.since,
                until=body.until,
                connector=body.connector,
                status=body.status,
            )
            done = repo.replay_deliveries(session, chosen, actor=principal.actor)
            disabled = repo.disabled_connectors(session, sorted({d.connector for d in done}))
            return 200, {
                "replayed": len(done),
                "deliveries": [d.id for d in done],
                "disabled_connectors": disabled,
            }

        return ctx.respond(request, body.model_dump(mode="json"), idempotency_key, principal.actor, work)

    def _entries() -> dict[str, tuple[str, Any]]:
        """Config connectors, then the webhook endpoints managed through the API (kind
        ``webhook_endpoint``; names never clash, the API refuses it)."""
        found = {entry.name: (kind, entry) for kind, entry in configured(ctx.config)}
        with Session(ctx.engine) as s:
            for row in s.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.id))):
                found.setdefault(row.name, ("webhook_endpoint", endpoint_config(row)))
        return found

    @api.get("/v1/connectors", dependencies=[manager])
    def list_connectors() -> dict[str, Any]:
        """Configured connectors, their state (disabled, circuit) and deliveries by status."""
        entries = _entries()
        with Session(ctx.engine) as s:
            states = {st.name: st for st in s.exec(select(tables.ConnectorState))}
            counts: dict[str, dict[str, int]] = {}
            for name, status, n in s.exec(
                select(tables.Delivery.connector, tables.Delivery.status, func.count())
                .where(col(tables.Delivery.connector).in_(list(entries)))
                .group_by(col(tables.Delivery.connector), col(tables.Delivery.status))
            ):
                counts.setdefault(name, {})[status] = int(n)
        return {
            "data": [
                connector_view(kind, entry, states.get(name), counts.get(name, {}))
                for name, (kind, entry) in entries.items()
            ]
        }

    @api.post("/v1/connectors/{name}/enable")
    def enable_connector(
        name: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Clear the disabled state a ``410 Gone`` left (409 when not disabled); the daemon
        delivers to the connector again after its next start."""

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            if not repo.enable_connector(session, name, actor=principal.actor):
                raise HTTPException(409, f"connector {name} is not disabled")
            return 200, {"name": name, "disabled": False}

        return ctx.respond(request, None, idempotency_key, principal.actor, work)

    @api.post("/v1/connectors/{name}/test", status_code=202)
    def test_connector(
        name: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = manager,
    ) -> JSONResponse:
        """Queue a ``connector.test`` event for this connector alone (202); the running daemon
        delivers it like any other — follow it with ``GET /v1/deliveries/{delivery_id}``."""
        if name not in _entries():
            raise HTTPException(404, f"no configured connector {name}")

        def work(session: Session) -> tuple[int, dict[str, Any]]:
            event, delivery = repo.add_test_event(session, name)
            repo.audit(
                session,
                actor=principal.actor,
                action="connector.test",
                subject_type="connector",
                subject_id=name[:40],
            )
            return 202, {"event_id": event.id, "delivery_id": delivery.id, "connector": name}

        return ctx.respond(request, None, idempotency_key, principal.actor, work)

    return api
