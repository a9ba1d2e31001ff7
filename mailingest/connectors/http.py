"""ERP-shaped HTTP connector: templated requests with auth, look-ups and idempotency.

Every URL, header, query parameter and body is a Jinja2 template rendered in an immutable
sandbox (no attribute tricks, no mutation, ``StrictUndefined`` so a typo fails loudly) with:

``event`` (``id``, ``type``, ``timestamp``), ``invoice`` (the canonical invoice, DESIGN 3.1),
``seller``/``buyer``/``totals`` (its parts, ``{}`` when absent), ``lines`` (normalised lines:
``name``, ``description``, ``quantity``, ``price_unit``, ``net_amount`` as numbers,
``gl_account``, ``vat_rate``; one line from the totals when the invoice has none),
``is_credit_note``, ``external_id`` (the invoice id, else the event id: stable across
redeliveries), ``vars`` (from the config), ``steps`` (the JSON answers of earlier steps; ``None``
for skipped ones) and ``base_url``. Filters: ``tojson`` (plain JSON, for JSON bodies) and ``num``.

One ``deliver`` runs the steps in order (a step whose ``done_if`` holds ends the delivery as
delivered: the record is already there) and then the main request. Answers are classified like
the webhook connector's: 2xx delivered; 408, 425, 429, 5xx and network errors retried
(Retry-After honoured); any other 4xx is permanent. An OAuth2 token refused with 401 is
refreshed and the request repeated once.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.environment import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailingest import __version__
from mailingest.config_http import HttpConfig, HttpStepConfig
from mailingest.connectors import mappings
from mailingest.connectors.base import Attempt
from mailingest.connectors.http_auth import Auth, make_auth
from mailingest.connectors.webhook import check_destination, parse_retry_after
from mailingest.errors import ConfigError, DeliveryError, DestinationGone, PermanentDeliveryError

CONTEXT_NAMES = frozenset(
    {"event", "invoice", "payload", "seller", "buyer", "totals", "lines", "is_credit_note", "external_id",
     "vars", "steps", "base_url", "response"}
)  # fmt: skip
RETRYABLE = frozenset({408, 425, 429})
EXCERPT = 500


def _num(value: Any) -> int | float | None:
    """A canonical decimal string (or number) as a JSON number; None when absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int(number) if number == number.to_integral_value() else float(number)


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["tojson"] = _tojson
    env.filters["num"] = _num
    return env


ENV = _environment()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def invoice_lines(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    """The invoice's lines in the shape ERP line items want; one summary line when it has none."""
    out = []
    for line in invoice.get("lines") or []:
        line = _dict(line)
        item = _dict(line.get("item"))
        quantity = _num(line.get("quantity"))
        net = _num(line.get("net_amount"))
        price = _num(_dict(line.get("price")).get("net"))
        if quantity in (None, 0):
            quantity = 1
        if price is None and net is not None:
            price = _num(Decimal(str(net)) / Decimal(str(quantity)))
        name = item.get("name") or item.get("description") or line.get("note") or line.get("id")
        name = name or "Invoice line"
        out.append(
            {
                "name": str(name),
                "description": str(item.get("description") or name),
                "quantity": quantity,
                "price_unit": price if price is not None else 0,
                "net_amount": net,
                "gl_account": _dict(line.get("coding")).get("gl_account"),
                "vat_rate": _num(_dict(line.get("vat")).get("rate")),
            }
        )
    if not out:
        totals = _dict(invoice.get("totals"))
        amount = _num(totals.get("tax_exclusive")) or _num(totals.get("amount_due")) or 0
        name = f"Invoice {invoice.get('number') or ''}".strip()
        out.append(
            {"name": name, "description": name, "quantity": 1, "price_unit": amount, "net_amount": amount,
             "gl_account": None, "vat_rate": None}
        )  # fmt: skip
    return out


def template_context(
    event_id: str, payload: dict[str, Any], *, variables: dict[str, Any], base_url: str | None
) -> dict[str, Any]:
    invoice = _dict(payload.get("data"))
    return {
        "event": {"id": event_id, "type": payload.get("type"), "timestamp": payload.get("timestamp")},
        "payload": payload,
        "invoice": invoice,
        "seller": _dict(invoice.get("seller")),
        "buyer": _dict(invoice.get("buyer")),
        "totals": _dict(invoice.get("totals")),
        "lines": invoice_lines(invoice),
        "is_credit_note": invoice.get("type") == "credit_note",
        "external_id": str(invoice.get("id") or event_id),
        "vars": dict(variables),
        "steps": {},
        "base_url": base_url or "",
    }


def _template_line(exc: BaseException, name: str) -> int | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == name:
            return frame.lineno
    return None


@dataclass(frozen=True)
class Text:
    """One compiled template; ``render`` turns runtime failures into a permanent delivery error
    naming the template and its line (a template bug will not heal by retrying)."""

    name: str
    template: Template

    def render(self, context: dict[str, Any]) -> str:
        try:
            return self.template.render(context)
        except Exception as exc:  # any template failure is a configuration bug
            line = _template_line(exc, self.name)
            where = f"{self.name}, line {line}" if line else self.name
            raise PermanentDeliveryError(f"template {where}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Expression:
    name: str
    source: str
    evaluate: Callable[..., Any]

    def __call__(self, context: dict[str, Any]) -> bool:
        try:
            return bool(self.evaluate(**context))
        except Exception as exc:  # any expression failure is a configuration bug
            detail = f"{self.name} ({self.source!r}): {type(exc).__name__}: {exc}"
            raise PermanentDeliveryError(detail) from exc


def _unknown_names(ast: nodes.Template, name: str) -> None:
    unknown = sorted(meta.find_undeclared_variables(ast) - CONTEXT_NAMES - set(ENV.globals))
    if unknown:
        known = ", ".join(sorted(CONTEXT_NAMES))
        raise ConfigError(f"{name} uses unknown name(s) {', '.join(unknown)}; use {known}")


def compile_text(source: str, name: str) -> Text:
    """Compile a template now, so syntax errors and unknown names fail at start-up."""
    try:
        ast = ENV.parse(source, name=name, filename=name)
        code = ENV.compile(source, name=name, filename=name)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"template {name}{f', line {line}' if line else ''}: {exc}") from exc
    _unknown_names(ast, f"template {name}")
    return Text(name, Template.from_code(ENV, code, ENV.make_globals(None)))


def compile_expression(source: str, name: str) -> Expression:
    try:
        _unknown_names(ENV.parse("{{ " + source + " }}"), f"{name} ({source!r})")
        return Expression(name, source, ENV.compile_expression(source, undefined_to_none=False))
    except TemplateError as exc:
        raise ConfigError(f"{name} ({source!r}): {exc}") from exc


@dataclass(frozen=True)
class Request:
    """One compiled request (a step or the main one)."""

    name: str
    method: str
    url: Text
    headers: dict[str, Text]
    params: dict[str, Text]
    body: Text | None
    when: Expression | None = None
    done_if: Expression | None = None
    idempotency_header: str | None = None


def _compile_request(where: str, step: HttpStepConfig, idempotency_header: str | None = None) -> Request:
    return Request(
        name=step.name,
        method=step.method,
        url=compile_text(step.url, f"{where}.url"),
        headers={k: compile_text(v, f"{where}.headers.{k}") for k, v in step.headers.items()},
        params={k: compile_text(v, f"{where}.params.{k}") for k, v in step.params.items()},
        body=compile_text(step.body, f"{where}.body") if step.body is not None else None,
        when=compile_expression(step.when, f"{where}.when") if step.when else None,
        done_if=compile_expression(step.done_if, f"{where}.done_if") if step.done_if else None,
        idempotency_header=idempotency_header,
    )


def plan(config: HttpConfig) -> tuple[list[Request], Request, dict[str, Any]]:
    """The compiled steps, main request and vars of a config: its mapping with overrides applied."""
    mapping = mappings.get(config.mapping) if config.mapping else None
    body = config.body
    if config.body_file is not None:
        try:
            body = config.body_file.read_text()
        except OSError as exc:
            detail = (
                f"connectors.http {config.name}: cannot read body_file {config.body_file}: {exc.strerror}"
            )
            raise ConfigError(detail) from exc
    if body is None and mapping is not None:
        body = mapping.body
    url = config.url or (mapping.url if mapping else None)
    assert url is not None  # the config model requires url without a mapping
    steps = list(config.steps) if config.steps is not None else list(mapping.steps if mapping else ())
    main = HttpStepConfig(
        name="request",
        method=config.method or (mapping.method if mapping else "POST"),  # type: ignore[arg-type]
        url=url,
        params=config.params,
        body=body,
    )
    idem = config.idempotency_header or (mapping.idempotency_header if mapping else None)
    prefix = f"connectors.http.{config.name}"
    compiled = [_compile_request(f"{prefix}.steps.{s.name}", s) for s in steps]
    variables: dict[str, Any] = {**(mapping.vars if mapping else {}), **config.vars}
    return compiled, _compile_request(prefix, main, idem), variables


def _parse(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class HttpConnector:
    """One configured HTTP destination; one ``deliver`` is one pass through steps + request."""

    def __init__(self, config: HttpConfig, client: httpx.Client | None = None) -> None:
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        self.steps, self.request, self.vars = plan(config)
        mapping = mappings.get(config.mapping) if config.mapping else None
        common = {**(mapping.headers if mapping else {}), **config.headers}
        self.headers = {
            k.lower(): compile_text(v, f"connectors.http.{config.name}.headers.{k}")
            for k, v in common.items()
        }
        self._client = client or httpx.Client(
            base_url=config.base_url or "", timeout=config.timeout, follow_redirects=False
        )
        self.auth: Auth = make_auth(config.auth, self._client, self._check)

    def __repr__(self) -> str:
        return f"HttpConnector(name={self.name!r}, mapping={self.config.mapping!r}, auth={self.auth!r})"

    def _check(self, url: str) -> None:
        check_destination(url, allow_private=self.config.allow_private_network)

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        context = template_context(event_id, payload, variables=self.vars, base_url=self.config.base_url)
        steps: dict[str, Any] = context["steps"]
        for step in self.steps:
            if step.when is not None and not step.when(context):
                steps[step.name] = None
                continue
            response = self._send(step, context)
            steps[step.name] = _parse(response)
            if step.done_if is not None and step.done_if({**context, "response": steps[step.name]}):
                return Attempt(
                    status_code=response.status_code,
                    response_excerpt=f"already present ({step.name}): {response.text[:EXCERPT]}"[:EXCERPT],
                )
        response = self._send(self.request, context)
        return Attempt(status_code=response.status_code, response_excerpt=response.text[:EXCERPT])

    def _build(self, request: Request, context: dict[str, Any]) -> httpx.Request:
        url = request.url.render(context).strip()
        if not url.lower().startswith(("http://", "https://")) and not self.config.base_url:
            raise PermanentDeliveryError(
                f"{request.url.name} rendered {url!r}: not absolute and no base_url is set"
            )
        headers = {"user-agent": f"mailingest/{__version__}", "accept": "application/json"}
        for name, text in [*self.headers.items(), *request.headers.items()]:
            value = text.render(context).strip()
            if value:  # an empty header (an unset optional var) is left out
                headers[name.lower()] = value
        if request.idempotency_header:
            headers[request.idempotency_header.lower()] = context["external_id"]
        content = None
        if request.body is not None:
            content = request.body.render(context).encode()
            headers["content-type"] = self.config.content_type
            if "json" in self.config.content_type:
                try:
                    json.loads(content)
                except ValueError as exc:
                    raise PermanentDeliveryError(f"{request.body.name} rendered invalid JSON: {exc}") from exc
        params = {k: v.render(context) for k, v in request.params.items()}
        try:
            return self._client.build_request(
                request.method, url, params=params or None, headers=headers, content=content
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            detail = f"{request.url.name} rendered an invalid url {url!r}: {exc}"
            raise PermanentDeliveryError(detail) from exc

    def _send(self, request: Request, context: dict[str, Any]) -> httpx.Response:
        built = self._build(request, context)
        self._check(str(built.url))
        for attempt in (1, 2):
            built.headers.update(self.auth.headers())
            try:
                response = self._client.send(built)
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{request.name}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 401 and attempt == 1 and self.auth.invalidate():
                continue  # a stale OAuth2 token: fetch a fresh one and repeat once
            return _classify(request.name, response)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._client.close()


def _classify(name: str, response: httpx.Response) -> httpx.Response:
    code, excerpt = response.status_code, response.text[:EXCERPT]
    if 200 <= code < 300:
        return response
    where = f"{name}: {response.request.method} {response.request.url.path} answered HTTP {code}"
    if code in RETRYABLE or code >= 500:
        raise DeliveryError(
            where,
            status_code=code,
            response=excerpt,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if code in (401, 403, 410):  # wrong credentials or a removed endpoint: nothing can get through
        raise DestinationGone(where, status_code=code, response=excerpt)
    raise PermanentDeliveryError(where, status_code=code, response=excerpt)  # this record only
