"""Configuration models of the outbound connectors (``[[connectors.*]]``)."""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from mailingest.config_base import Duration, Secret, SecretRef, _Section
from mailingest.config_http import HttpConfig


class ConnectorEntry(_Section):
    """What every ``[[connectors.<kind>]]`` entry has: its name, event filter and delivery policy.

    ``routed_only``: the entry receives ``invoice.*`` events only for invoices whose canonical
    ``deliver_to`` list (set by routing rules' ``connectors = [...]`` action) names it.
    ``circuit_failures`` consecutive failed attempts open the entry's circuit for
    ``circuit_cooldown``: its deliveries wait (no attempts are spent), then one probe decides.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    events: list[str] = Field(default_factory=lambda: ["*"])
    enabled: bool = True
    routed_only: bool = False
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: Duration = Field(default=60.0, gt=0)


class WebhookConfig(ConnectorEntry):
    """``[[connectors.webhook]]``: Standard Webhooks 1.0 POSTs.

    Rotate a secret with ``secrets = [new, old]`` (or ``secret`` + ``previous_secret``): while
    more than one is configured every request carries one signature per secret, so receivers
    holding either verify. ``payload = "thin"`` sends only the invoice's id, type, status and a
    link to ``GET /v1/invoices/{id}`` (prefixed with ``api_url`` when set) instead of all of it.
    """

    url: str = Field(pattern=r"^https?://")
    secret: SecretRef | None = None
    previous_secret: SecretRef | None = None
    secrets: list[SecretRef] = Field(default_factory=list, max_length=5)
    payload: Literal["full", "thin"] = "full"
    api_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    allow_private_network: bool = False
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_way_to_give_secrets(self) -> WebhookConfig:
        if (self.secret is None) == (not self.secrets):
            raise ValueError("give either secret (optionally with previous_secret) or secrets = [new, old]")
        if self.previous_secret is not None and self.secret is None:
            raise ValueError("previous_secret goes with secret; with secrets = [...] list them all there")
        return self

    @property
    def secret_refs(self) -> list[Secret]:
        """The signing secrets, newest first."""
        if self.secret is not None:
            return [self.secret] + ([self.previous_secret] if self.previous_secret is not None else [])
        return list(self.secrets)


_BROKER_TEMPLATE_FIELDS = {"type", "type_dash"}


def _broker_template(value: str) -> str:
    """Broker subjects, routing keys and topics may only use ``{type}`` and ``{type_dash}``, so a
    typo (``{typ}``) or a format spec fails at load instead of at the first delivery."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"invalid template {value!r}: {exc}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in _BROKER_TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"template {value!r} may only use {{type}} and {{type_dash}}, found {{{field}}}")
    return value


BrokerTemplate = Annotated[str, AfterValidator(_broker_template)]
_CONNECTOR_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class NatsConfig(ConnectorEntry):
    """``[[connectors.nats]]``: publish to JetStream; the PubAck counts as delivery."""

    name: str = Field(pattern=_CONNECTOR_NAME)
    events: list[str] = Field(default_factory=lambda: ["*"])
    enabled: bool = True
    url: str = Field(default="nats://127.0.0.1:4222", pattern=r"^(nats|tls|ws|wss)://")
    subject: BrokerTemplate = Field(default="mailingest.{type}", pattern=r"^[^\s*>]+$")
    stream: str = Field(default="MAILINGEST", pattern=r"^[A-Za-z0-9_-]+$")
    create_stream: bool = True  # created (subjects derived from `subject`) when missing
    username: str | None = None
    password: SecretRef | None = None
    token: SecretRef | None = None
    timeout: Duration = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self) -> NatsConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.token is not None and self.password is not None:
            raise ValueError("use either token or username/password, not both")
        if "@" in self.url:
            raise ValueError("put credentials in username/password or token, not in the url")
        return self


class AmqpConfig(ConnectorEntry):
    """``[[connectors.amqp]]``: publish to a RabbitMQ exchange; the publisher confirm counts as
    delivery. The url carries no password (``amqp://user@host:5672/vhost``); it comes from
    ``password`` so that it is never written inline."""

    name: str = Field(pattern=_CONNECTOR_NAME)
    events: list[str] = Field(default_factory=lambda: ["*"])
    enabled: bool = True
    url: str = Field(default="amqp://guest@127.0.0.1:5672/", pattern=r"^amqps?://")
    password: SecretRef | None = None
    exchange: str = Field(default="mailingest", min_length=1, max_length=255)
    routing_key: BrokerTemplate = Field(default="invoice.{type}", max_length=255)
    declare: bool = True  # declare the exchange (topic, durable) on connect
    timeout: Duration = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _no_inline_password(self) -> AmqpConfig:
        from urllib.parse import urlsplit

        if urlsplit(self.url).password is not None:
            raise ValueError('the url may not contain a password; use password = { env = "NAME" }')
        return self


class MqttConfig(ConnectorEntry):
    """``[[connectors.mqtt]]``: publish with QoS 1 or 2; the PUBACK/PUBCOMP counts as delivery
    (QoS 0 has no acknowledgement, so it is not offered)."""

    name: str = Field(pattern=_CONNECTOR_NAME)
    events: list[str] = Field(default_factory=lambda: ["*"])
    enabled: bool = True
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int | None = Field(default=None, gt=0, lt=65536)  # default: 8883 with tls, else 1883
    topic: BrokerTemplate = Field(default="mailingest/{type}", pattern=r"^[^+#]+$")
    qos: Literal[1, 2] = 1
    protocol: Literal["5", "3.1.1"] = "5"  # 5 carries the event id as a user property
    client_id: str = ""  # empty: the broker assigns one
    username: str | None = None
    password: SecretRef | None = None
    tls: bool = False
    timeout: Duration = Field(default=10.0, gt=0)

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    @model_validator(mode="after")
    def _password_needs_username(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        return self


_TEMPLATE_FIELDS = ("id", "number", "issue_date", "seller", "currency", "type", "status", "event", "event_id")
CsvColumn = Literal[
    "id",
    "number",
    "type",
    "issue_date",
    "due_date",
    "seller_name",
    "seller_vat_id",
    "buyer_name",
    "buyer_vat_id",
    "currency",
    "net",
    "tax",
    "gross",
    "amount_due",
    "purchase_order",
    "status",
    "event",
    "event_id",
]

DEFAULT_CSV_COLUMNS: list[CsvColumn] = [
    "id",
    "number",
    "issue_date",
    "due_date",
    "seller_name",
    "seller_vat_id",
    "buyer_name",
    "currency",
    "net",
    "tax",
    "gross",
    "amount_due",
    "status",
]


def _template(value: str) -> str:
    """Reject unknown placeholders at load time, so a typo fails naming its key, not at delivery."""
    for _, field, _, _ in string.Formatter().parse(value):
        if field is not None and field not in _TEMPLATE_FIELDS:
            raise ValueError(f"unknown placeholder {{{field}}}; use {', '.join(_TEMPLATE_FIELDS)}")
    return value


Template = Annotated[str, AfterValidator(_template)]


def _filename_template(value: str) -> str:
    if "/" in value or "\\" in value:
        raise ValueError("a filename template names a file inside path; it may not contain / or \\")
    return value


class FilesConfig(ConnectorEntry):
    """``[[connectors.files]]``: each invoice as a file (JSON, or CSV per invoice / per day)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    events: list[str] = Field(default_factory=lambda: ["invoice.validated", "invoice.approved"])
    enabled: bool = True
    path: Path
    format: Literal["json", "csv", "ubl", "cii"] = "json"  # ubl / cii: e-invoice XML (docs/einvoices.md)
    filename: Annotated[Template, AfterValidator(_filename_template)] = "{issue_date}_{seller}_{number}.json"
    csv_mode: Literal["per_invoice", "daily"] = "per_invoice"
    csv_columns: list[CsvColumn] = Field(default_factory=lambda: list(DEFAULT_CSV_COLUMNS), min_length=1)
    include_originals: bool = False
    blobs_path: Path = Path("data/blobs")  # <data_dir>/blobs: where original documents are read from


class MailConfig(ConnectorEntry):
    """``[[connectors.mail]]``: forward each invoice (summary + invoice.json + originals) by mail."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    events: list[str] = Field(default_factory=lambda: ["invoice.validated"])
    enabled: bool = True
    to: list[str] = Field(min_length=1)
    sender: str = Field(alias="from", min_length=3)
    subject: Template = "Invoice {number} from {seller}"
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, gt=0, lt=65536)  # default: 465 for tls, 587 starttls, 25 none
    security: Literal["none", "starttls", "tls"] = "starttls"
    verify_certificate: bool = True
    username: str | None = None
    password: SecretRef | None = None
    include_originals: bool = True
    blobs_path: Path = Path("data/blobs")
    timeout: Duration = Field(default=30.0, gt=0)

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587, "none": 25}[self.security]

    @model_validator(mode="after")
    def _login_needs_password(self) -> MailConfig:
        if self.username is not None and self.password is None:
            raise ValueError("username is set but password is not")
        return self


class ConnectorsConfig(_Section):
    """``[connectors]``: one list per kind. Any other key is a kind provided by a plugin (the
    ``mailingest.connectors`` entry point of that name, docs/plugins.md); its entries are
    validated at load time against the plugin's ``config_model`` (a ``ConnectorEntry``)."""

    model_config = ConfigDict(extra="allow")

    webhook: list[WebhookConfig] = Field(default_factory=list)
    files: list[FilesConfig] = Field(default_factory=list)
    mail: list[MailConfig] = Field(default_factory=list)
    nats: list[NatsConfig] = Field(default_factory=list)
    amqp: list[AmqpConfig] = Field(default_factory=list)
    mqtt: list[MqttConfig] = Field(default_factory=list)
    http: list[HttpConfig] = Field(default_factory=list)

    def entries(self) -> Iterator[tuple[str, ConnectorEntry]]:
        """(kind, entry) for every entry, built-in kinds first, then plugin kinds, in config order."""
        for kind in type(self).model_fields:
            for entry in getattr(self, kind):
                yield kind, entry
        for kind, entries in (self.model_extra or {}).items():
            for entry in entries:
                yield kind, entry

    @model_validator(mode="after")
    def _plugins_and_unique_names(self) -> ConnectorsConfig:
        """Plugin kinds are validated by their own models; names key deliveries and disabled
        state, so they are unique across all kinds."""
        extra = self.__pydantic_extra__ or {}
        for kind, raw in list(extra.items()):
            extra[kind] = _plugin_entries(kind, raw)
        names = [entry.name for _, entry in self.entries()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"connector names must be unique: {', '.join(dupes)}")
        return self


def _plugin_entries(kind: str, raw: Any) -> list[ConnectorEntry]:
    """``[[connectors.<kind>]]`` of a plugin kind, each validated by the plugin's config model."""
    from mailingest import plugins

    if isinstance(raw, dict):
        raise ValueError(f"connectors.{kind}: write [[connectors.{kind}]] (a list of tables)")
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError(f"connectors.{kind}: expected a list of tables ([[connectors.{kind}]])")
    try:
        factory = plugins.load_factory(plugins.CONNECTORS_GROUP, kind)
    except ValueError as exc:
        raise ValueError(f"unknown connector kind {kind!r}: {exc}") from None
    model = plugins.config_model(factory, kind, ConnectorEntry, required=True)
    entries = []
    for i, item in enumerate(raw):
        entry = plugins.validate(model, item, f"connectors.{kind}.{i}")
        assert isinstance(entry, ConnectorEntry)
        entries.append(entry)
    return entries
