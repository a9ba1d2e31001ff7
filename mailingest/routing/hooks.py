"""HTTP validation hooks: other systems check an invoice before the routing rules run.

Each ``[[rules.hooks]]`` gets ``POST {"hook": name, "invoice": <canonical>, "source": {...}}``
(JSON, signed like webhooks when a ``secret`` is set) and answers in the shape of Rossum's hooks::

    {"messages": [{"type": "error" | "warning" | "info", "content": "...", "path": "purchase_order"}],
     "operations": [{"op": "replace", "path": "buyer_reference", "value": "X"}],
     "automation_blockers": [{"content": "PO 4711 not found", "path": "purchase_order"}]}

Messages land in ``validation.messages`` with ``rule = "hook:<name>"`` (an error makes the
invoice invalid); operations replace values on the paths ``then.set`` may write; a blocker
sends the invoice to ``needs_review`` whatever the rules say (unless they reject it). A hook that
times out, fails or answers nonsense counts as a blocker with ``on_error = "block"`` and as a
warning with ``on_error = "allow"``. Rules see ``hooks.blocked``, ``hooks.failed`` and
``hooks.<name>.ok`` / ``.blocked``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailingest import __version__
from mailingest.config import HookConfig
from mailingest.errors import ConfigError
from mailingest.models import Invoice
from mailingest.models.invoice import Validation, ValidationMessage
from mailingest.routing.engine import set_field
from mailingest.routing.model import SETTABLE_PATHS

log = structlog.get_logger("mailingest.routing.hooks")


class HookMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["error", "warning", "info"] = "info"
    content: str
    path: str | None = None


class HookOperation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    op: Literal["replace"]
    path: str
    value: str


class HookBlocker(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str
    path: str | None = None


class HookResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[HookMessage] = Field(default_factory=list)
    operations: list[HookOperation] = Field(default_factory=list)
    automation_blockers: list[HookBlocker] = Field(default_factory=list)


@dataclass
class HookResults:
    """What the hooks said about one invoice (``facts`` is the ``hooks`` namespace for rules)."""

    blocked: bool = False
    failed: list[str] = field(default_factory=list)
    per_hook: dict[str, dict[str, bool]] = field(default_factory=dict)

    @property
    def facts(self) -> dict[str, Any]:
        return {"blocked": self.blocked, "failed": list(self.failed), **self.per_hook}


def _headers(hook: HookConfig, body: bytes) -> dict[str, str]:
    headers = {"content-type": "application/json", "user-agent": f"mailingest/{__version__}"}
    if hook.secret is not None:
        from mailingest.connectors.webhook import sign

        msg_id, ts = f"hook_{secrets.token_hex(8)}", int(time.time())
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(hook.secret.get(), msg_id, ts, body),
        }
    return headers


def _message(invoice: Invoice, hook: str, severity: str, text: str, path: str | None = None) -> None:
    validation = invoice.validation or Validation()
    message = ValidationMessage(rule=f"hook:{hook}", severity=severity, text=text, path=path)  # type: ignore[arg-type]
    invoice.validation = Validation(
        valid=validation.valid and severity != "error", messages=[*validation.messages, message]
    )


def call_hook(
    client: httpx.Client, hook: HookConfig, invoice: Invoice, context: dict[str, Any]
) -> HookResponse:
    """One POST; raises ``httpx.HTTPError``, ``ValueError`` or ``ValidationError`` on failure."""
    body = json.dumps(
        {"hook": hook.name, "invoice": invoice.to_json_dict(), "source": context}, ensure_ascii=False
    ).encode()
    response = client.post(hook.url, content=body, headers=_headers(hook, body), timeout=hook.timeout)
    response.raise_for_status()
    return HookResponse.model_validate(response.json())


def absorb(invoice: Invoice, hook: str, answer: HookResponse, results: HookResults) -> None:
    """Record one hook's answer on ``invoice`` (in place)."""
    for msg in answer.messages:
        _message(invoice, hook, msg.type, msg.content, msg.path)
    for op in answer.operations:
        if op.path not in SETTABLE_PATHS:
            _message(
                invoice, hook, "warning", f"operation on {op.path!r} ignored: not a settable path", op.path
            )
            continue
        try:
            set_field(invoice, op.path, op.value)
        except ValidationError as exc:
            _message(
                invoice,
                hook,
                "warning",
                f"operation on {op.path!r} ignored: {exc.errors()[0]['msg']}",
                op.path,
            )
    for blocker in answer.automation_blockers:
        _message(invoice, hook, "error", f"blocked: {blocker.content}", blocker.path)
    blocked = bool(answer.automation_blockers)
    results.blocked |= blocked
    results.per_hook[hook] = {"ok": True, "blocked": blocked}


def run_hooks(
    client: httpx.Client, hooks: list[HookConfig], invoice: Invoice, context: dict[str, Any]
) -> tuple[Invoice, HookResults]:
    """Call every enabled hook in order; returns a copy of the invoice with the results on it."""
    result = invoice.model_copy(deep=True)
    results = HookResults()
    for hook in hooks:
        if not hook.enabled:
            continue
        try:
            answer = call_hook(client, hook, result, context)
        except (httpx.HTTPError, ValueError, ValidationError, ConfigError) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("validation hook failed", hook=hook.name, on_error=hook.on_error, error=reason)
            results.failed.append(hook.name)
            block = hook.on_error == "block"
            _message(result, hook.name, "error" if block else "warning", f"hook failed: {reason}")
            results.blocked |= block
            results.per_hook[hook.name] = {"ok": False, "blocked": block}
            continue
        absorb(result, hook.name, answer, results)
    return result, results


def enforce_blockers(invoice: Invoice, results: HookResults) -> Invoice:
    """A blocked invoice is reviewed by a person unless the rules rejected it."""
    if results.blocked and invoice.status != "rejected":
        invoice.status = "needs_review"
    return invoice
