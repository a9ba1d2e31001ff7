"""Configuration model of the ERP-shaped HTTP connector (``[[connectors.http]]``).

A connector is one main request (the one that creates the record) preceded by optional *steps*
(look-ups such as "find the partner by VAT id" or "is this bill already there?"). URLs, headers,
query parameters and bodies are sandboxed Jinja2 templates; ``mapping = "odoo" | "erpnext"``
fills them in with a ready mapping that every key here may override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mailingest.config_base import Duration, SecretRef, _Section

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
_NAME = r"^[a-z0-9][a-z0-9_-]*$"
_STEP_NAME = r"^[a-z_][a-z0-9_]*$"  # usable as ``steps.<name>`` in templates


class HttpStepConfig(_Section):
    """One request before the main one; its JSON answer is ``steps.<name>`` in later templates.

    ``when`` (a Jinja expression) skips the step when false; ``done_if`` (an expression that may use
    ``response``) ends the delivery as delivered when true: the lookup-before-create of APIs that
    have no idempotency header."""

    name: str = Field(pattern=_STEP_NAME)
    method: HttpMethod = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    when: str | None = None
    done_if: str | None = None


class HttpAuthConfig(_Section):
    """``none`` | ``bearer`` (``<scheme> <token>``) | ``basic`` | ``header`` (any header name) |
    ``oauth2`` (client credentials grant; the token is cached and refreshed once after a 401)."""

    type: Literal["none", "bearer", "basic", "header", "oauth2"] = "none"
    token: SecretRef | None = None  # bearer
    scheme: str = Field(default="Bearer", pattern=r"^[A-Za-z][A-Za-z0-9._-]*$")  # bearer: "token" for Frappe
    username: str | None = None  # basic
    password: SecretRef | None = None  # basic
    header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")  # header: its name
    value: SecretRef | None = None  # header: its value
    token_url: str | None = Field(default=None, pattern=r"^https?://")  # oauth2
    client_id: str | None = None  # oauth2
    client_secret: SecretRef | None = None  # oauth2
    scope: str | None = None  # oauth2
    client_auth: Literal["basic", "post"] = "basic"  # oauth2: how the client authenticates (RFC 6749 2.3.1)

    @model_validator(mode="after")
    def _fields_of_type(self) -> HttpAuthConfig:
        required = {
            "none": (),
            "bearer": ("token",),
            "basic": ("username", "password"),
            "header": ("header", "value"),
            "oauth2": ("token_url", "client_id", "client_secret"),
        }[self.type]
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f'auth type "{self.type}" needs {", ".join(missing)}')
        optional = {"bearer": ("scheme",), "oauth2": ("scope", "client_auth")}.get(self.type, ())
        allowed = {"type", *required, *optional}
        extra = sorted(k for k in self.model_fields_set if k not in allowed)
        if extra:
            raise ValueError(f'auth type "{self.type}" does not use {", ".join(extra)}')
        return self


class HttpConfig(_Section):
    """``[[connectors.http]]``: one request per event (plus optional look-up steps) to an HTTP API."""

    name: str = Field(pattern=_NAME)
    events: list[str] = Field(default_factory=lambda: ["invoice.validated"])
    enabled: bool = True
    # the delivery policy every [[connectors.*]] entry has (config_connectors.ConnectorEntry; that
    # module imports this one, so HttpConfig mirrors the fields instead of subclassing it)
    routed_only: bool = False
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: Duration = Field(default=60.0, gt=0)
    mapping: Literal["odoo", "erpnext"] | None = None
    base_url: str | None = Field(default=None, pattern=r"^https?://")  # relative urls resolve against it
    method: HttpMethod | None = None  # default POST (or the mapping's)
    url: str | None = None  # template; absolute, or relative to base_url
    headers: dict[str, str] = Field(default_factory=dict)  # templates; merged over the mapping's
    params: dict[str, str] = Field(default_factory=dict)  # query parameters (templates)
    body: str | None = None  # template
    body_file: Path | None = None  # template kept in a file
    content_type: str = "application/json"  # a JSON body must render to valid JSON
    steps: list[HttpStepConfig] | None = None  # None: the mapping's steps; [] none at all
    idempotency_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")  # e.g. Idempotency-Key
    vars: dict[str, str | int | float | bool] = Field(default_factory=dict)  # `vars.*` in templates
    auth: HttpAuthConfig = Field(default_factory=HttpAuthConfig)
    allow_private_network: bool = False
    timeout: Duration = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> HttpConfig:
        if self.body is not None and self.body_file is not None:
            raise ValueError("use either body or body_file, not both")
        if self.mapping is None and self.url is None:
            raise ValueError("url is required unless a mapping is chosen")
        if self.mapping is not None and self.base_url is None:
            raise ValueError(f'mapping "{self.mapping}" needs base_url (the address of your instance)')
        names = [step.name for step in self.steps or []]
        if len(names) != len(set(names)):
            raise ValueError("step names must be unique")
        return self
