"""Enrichment lookups: budget, contract or any other data another system holds, fetched over
HTTP before the routing rules and kept on the invoice as ``enrichment.<name>``.

Each ``[[rules.lookups]]`` (``LookupConfig``) names a URL template such as
``https://erp.example/budgets/{invoice.lines.0.coding.cost_center}``; placeholders are dotted
paths into the canonical invoice (``invoice.…``, checked against the model when the config loads;
``lines[0]`` may be written for ``lines.0``) or the mail it came with (``source.mailbox``,
``source.from``, ``source.subject``). Values are URL-encoded; ``params`` (query parameters) are
templates as well. ``GET`` or ``POST`` (the canonical invoice as JSON body). The answer must be a
JSON object; rules see it as ``enrichment.<name>.<field>`` (``when`` tables and CEL).

A lookup that fails (connection, timeout, HTTP error, not a JSON object, a placeholder without
a value) adds a warning ``lookup:<name>`` to ``validation.messages``; with
``on_error = "review"`` the invoice also goes to ``needs_review`` (unless the rules reject it).
Rules see ``lookups.failed`` (names) and ``lookups.<name>.ok``.

Answers are cached in-process for ``cache_ttl`` seconds per method + URL (+ body for POST).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel

from mailingest import __version__
from mailingest.config import LookupConfig
from mailingest.errors import ConfigError
from mailingest.models import Invoice
from mailingest.models.invoice import Validation, ValidationMessage

log = structlog.get_logger("mailingest.routing.lookups")
SOURCE_PLACEHOLDERS = frozenset({"source.mailbox", "source.from", "source.subject"})
_INDEX = re.compile(r"\[(\d+)\]")
_FORMATTER = string.Formatter()
MAX_CACHE_ENTRIES = 10_000


class LookupFailed(Exception):
    """One lookup could not produce an answer (the message says why)."""


def normalize(path: str) -> str:
    """``invoice.lines[0].coding`` → ``invoice.lines.0.coding``."""
    return _INDEX.sub(r".\1", path)


def placeholders(template: str) -> list[str]:
    """The placeholder paths of a template; ``ValueError`` for anything but plain ``{a.b.c}``."""
    found: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    for _text, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(
                f"template {template!r}: placeholder {{{name}}} may not carry a format or !conversion"
            )
        if not name:
            raise ValueError(f"template {template!r}: empty placeholder {{}}")
        found.append(name)
    return found


def check_template(template: str) -> None:
    """Every placeholder is an allow-listed path: raises ``ValueError`` naming the bad one."""
    from mailingest.routing.check import resolve  # routing.check imports the models only

    for name in placeholders(template):
        path = normalize(name)
        parts = path.split(".")
        if path in SOURCE_PLACEHOLDERS:
            continue
        target = resolve(Invoice, parts[1:]) if parts[0] == "invoice" and len(parts) > 1 else None
        if isinstance(target, tuple) or (isinstance(target, type) and issubclass(target, BaseModel)):
            raise ValueError(f"placeholder {{{name}}} in {template!r} is a list or a table, not one value")
        if target is not None:
            continue
        raise ValueError(
            f"unknown placeholder {{{name}}} in {template!r}: use invoice.<field path of the canonical "
            f"invoice> (e.g. invoice.purchase_order, invoice.lines[0].coding.cost_center) or one of "
            f"{', '.join(sorted(SOURCE_PLACEHOLDERS))}"
        )


def _value(data: dict[str, Any], path: str) -> str:
    node: Any = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupFailed(f"placeholder {{{path}}} has no value on this invoice")
    if node is None or node == "" or isinstance(node, dict | list):
        raise LookupFailed(f"placeholder {{{path}}} has no value on this invoice")
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node) if not isinstance(node, Decimal) else format(node, "f")


def render(template: str, invoice: dict[str, Any], context: dict[str, Any], *, encode: bool) -> str:
    """Fill the placeholders (URL-encoded when ``encode``); ``LookupFailed`` for a missing value."""
    data = {"invoice": invoice, "source": {**(invoice.get("source") or {}), **context}}
    out: list[str] = []
    for text, name, _spec, _conv in _FORMATTER.parse(template):
        out.append(text)
        if name is not None:
            value = _value(data, normalize(name))
            out.append(quote(value, safe="") if encode else value)
    return "".join(out)


@dataclass
class LookupResults:
    """What the lookups brought for one invoice (``facts`` is the ``lookups`` namespace)."""

    answers: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    review: bool = False

    @property
    def facts(self) -> dict[str, Any]:
        oks = {name: {"ok": name in self.answers} for name in [*self.answers, *self.failed]}
        return {"failed": list(self.failed), **oks}


class AnswerCache:
    """In-process answers per key, each kept ``ttl`` seconds (thread-safe, bounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: str, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_CACHE_ENTRIES:
                now = self._clock()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= MAX_CACHE_ENTRIES:
                    self._entries.clear()
            self._entries[key] = (self._clock() + ttl, value)


def _request(
    lookup: LookupConfig, invoice: Invoice, context: dict[str, Any]
) -> tuple[str, str, dict[str, str], bytes | None]:
    data = invoice.to_json_dict()
    url = render(lookup.url, data, context, encode=True)
    params = {k: render(v, data, context, encode=False) for k, v in lookup.params.items()}
    if params:
        url = str(httpx.URL(url).copy_merge_params(params))
    headers = {"accept": "application/json", "user-agent": f"mailingest/{__version__}", **lookup.headers}
    if lookup.token is not None:
        headers["authorization"] = f"Bearer {lookup.token.get()}"
    body = None
    if lookup.method == "POST":
        body = json.dumps(
            {"lookup": lookup.name, "invoice": data, "source": context}, ensure_ascii=False
        ).encode()
        headers["content-type"] = "application/json"
    return lookup.method, url, headers, body


def fetch(
    client: httpx.Client, cache: AnswerCache, lookup: LookupConfig, invoice: Invoice, context: dict[str, Any]
) -> dict[str, Any]:
    """One lookup's answer (from the cache when fresh); raises ``LookupFailed``."""
    try:
        method, url, headers, body = _request(lookup, invoice, context)
    except ConfigError as exc:  # the token's secret is not there
        raise LookupFailed(exc.detail) from exc
    key = f"{method} {url}" + (f" {hashlib.sha256(body).hexdigest()}" if body is not None else "")
    cached = cache.get(key)
    if cached is not None:
        return dict(cached)
    try:
        response = client.request(method, url, headers=headers, content=body, timeout=lookup.timeout)
        response.raise_for_status()
        answer = response.json()
    except httpx.TimeoutException as exc:
        raise LookupFailed(f"timed out after {lookup.timeout:g}s ({type(exc).__name__})") from exc
    except httpx.HTTPStatusError as exc:
        raise LookupFailed(f"HTTP {exc.response.status_code} from {_safe(url)}") from exc
    except httpx.HTTPError as exc:
        raise LookupFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
    except ValueError as exc:
        raise LookupFailed("the answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise LookupFailed(f"the answer is a JSON {type(answer).__name__}, not an object")
    cache.put(key, answer, lookup.cache_ttl)
    return dict(answer)


def _safe(url: str) -> str:
    """The URL without its query (which may carry identifiers) for messages."""
    return url.split("?", 1)[0]


def _warn(invoice: Invoice, name: str, text: str) -> None:
    validation = invoice.validation or Validation()
    message = ValidationMessage(rule=f"lookup:{name}", severity="warning", text=text)
    invoice.validation = Validation(valid=validation.valid, messages=[*validation.messages, message])


def run_lookups(
    client: httpx.Client,
    cache: AnswerCache,
    lookups: list[LookupConfig],
    invoice: Invoice,
    context: dict[str, Any],
) -> tuple[Invoice, LookupResults]:
    """Call every enabled lookup in order; a copy of the invoice with ``enrichment.<name>`` set."""
    result = invoice.model_copy(deep=True)
    results = LookupResults()
    for lookup in lookups:
        if not lookup.enabled:
            continue
        try:
            results.answers[lookup.name] = fetch(client, cache, lookup, result, context)
        except LookupFailed as exc:
            log.warning("lookup failed", lookup=lookup.name, on_error=lookup.on_error, error=str(exc))
            results.failed.append(lookup.name)
            results.review |= lookup.on_error == "review"
            _warn(result, lookup.name, f"lookup failed: {exc}")
    if results.answers:
        result.enrichment = {**(result.enrichment or {}), **results.answers}
    return result, results


def enforce_review(invoice: Invoice, results: LookupResults) -> Invoice:
    """A failed ``on_error = "review"`` lookup sends the invoice to a person unless rejected."""
    if results.review and invoice.status != "rejected":
        invoice.status = "needs_review"
    return invoice
