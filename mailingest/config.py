"""Configuration: one TOML file → pydantic models, plus ``MAILINGEST_*`` environment overrides.

* Unknown keys are errors that name their path (``sources.smtp.lisen: extra inputs are not
  permitted``), so a typo never silently falls back to a default.
* Secrets are never inline: ``{ env = "NAME" }`` or ``{ file = "/run/secrets/x" }``. They are
  resolved only when used and print as ``Secret(env=NAME)`` — never their value.
* ``MAILINGEST_SECTION__KEY=value`` overrides ``[section] key`` (``__`` separates levels, values
  are read as TOML when they parse as TOML, else as plain strings); ``MAILINGEST_CONFIG`` names
  the file.
* With no file at all everything still runs: SQLite in the data dir, SMTP and API on loopback,
  a drop directory under the data dir.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from mailingest.config_base import Duration, Secret, SecretRef, _Section, parse_duration
from mailingest.config_connectors import *  # noqa: F403 - re-exported: callers import models from here
from mailingest.config_connectors import ConnectorsConfig
from mailingest.config_sources import *  # noqa: F403 - re-exported: callers import models from here
from mailingest.config_sources import ExtractionConfig, SourcesConfig
from mailingest.config_validation import ValidationConfig
from mailingest.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "Duration",
    "Secret",
    "SecretRef",
    "load_config",
    "parse_duration",
    "parse_listen",
]

ENV_PREFIX = "MAILINGEST_"
DEFAULT_RETRY_SCHEDULE = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a TTY, JSON otherwise


class StorageConfig(_Section):
    url: str | None = None  # default: sqlite:///<data_dir>/mailingest.db
    documents: Literal["disk", "database"] = "disk"  # where original bytes live
    echo: bool = False


class ApiConfig(_Section):
    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    # "loopback-open": callers on 127.0.0.1/::1 may read without a key while the API listens on
    # loopback; a non-loopback listen address always means "required" (see mailingest.api.auth).
    auth: Literal["required", "loopback-open"] = "loopback-open"
    # Token bucket per credential (mailingest.api.ratelimit): "N/second|minute|hour|day", "0" = off.
    rate_limit: str = "600/minute"
    # Overrides by scope or credential kind ("key", "client"); a credential gets the most generous
    # entry among its scopes and kind, else rate_limit. e.g. {"vendor:read" = "60/minute"}
    rate_limits: dict[str, str] = Field(default_factory=dict)
    # Lifetime of OAuth2 access tokens from POST /oauth/token (also the longest a revoked
    # client's already-issued token could live if revocation were not checked per request).
    token_ttl: Duration = Field(default=900.0, gt=0, le=86400)
    # Webhook endpoints created through /v1/webhook-endpoints may target loopback/private networks.
    allow_private_webhooks: bool = False

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_rates(cls, value: dict[str, str]) -> dict[str, str]:
        for rate in value.values():
            parse_rate(rate)
        return value


RATE_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_rate(value: str) -> tuple[int, float] | None:
    """``"600/minute"`` → (600, 60.0); ``"0"`` or ``"off"`` → None (no limit)."""
    text = value.strip().lower()
    if text in ("0", "off", "none"):
        return None
    count, _, period = text.partition("/")
    if not count.strip().isdigit() or int(count) <= 0 or period.strip() not in RATE_PERIODS:
        raise ValueError(f"rate {value!r}: expected N/second, N/minute, N/hour or N/day, or 0")
    return int(count), RATE_PERIODS[period.strip()]


class PipelineConfig(_Section):
    workers: int = Field(default=1, ge=1, le=64)  # >1 adds worker processes (other CPU cores)
    max_document_bytes: int = Field(default=50 * 2**20, gt=0)
    poll_interval: Duration = 2.0  # safety-net scan for unprocessed messages; new ones wake it at once
    lease: Duration = 300.0  # a claimed message is retried by another worker after this
    # a key field (number, dates, currency, amount due, seller) read from PDF/OCR with a lower
    # confidence sends the invoice to review (MI-LOW-CONFIDENCE); 0 turns this off
    review_below_confidence: float = Field(default=0.5, ge=0, le=1)


class HookConfig(_Section):
    """An HTTP validation hook called with each invoice before the routing rules (docs/routing.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(pattern=r"^https?://")
    timeout: Duration = 10.0
    secret: SecretRef | None = None  # whsec_... : signed like webhooks (Standard Webhooks headers)
    on_error: Literal["block", "allow"] = "block"  # hook down or answering nonsense: review, or go on
    enabled: bool = True


class LookupConfig(_Section):
    """An HTTP lookup (budget, contract ...) whose JSON answer rules see as ``enrichment.<name>``
    (docs/routing.md, mailingest.routing.lookups)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # a CEL identifier: enrichment.<name>.<field>
    url: str = Field(pattern=r"^https?://")  # template: {invoice.purchase_order}, URL-encoded
    method: Literal["GET", "POST"] = "GET"  # POST sends {"lookup", "invoice", "source"} as JSON
    params: dict[str, str] = Field(default_factory=dict)  # query parameters, values are templates
    headers: dict[str, str] = Field(default_factory=dict)
    token: SecretRef | None = None  # sent as "Authorization: Bearer <token>"
    timeout: Duration = 5.0
    cache_ttl: Duration = 0.0  # keep answers this long per URL in the process (0: no cache)
    on_error: Literal["ignore", "review"] = "ignore"  # failed: a warning only, or needs_review too
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # enrichment.* already holds the vendor enrichment; lookups.failed lists failed lookups
        if value.startswith("vendor_") or value in ("price_anomalies", "price_anomaly_count", "failed"):
            raise ValueError(
                f"lookup name {value!r} is reserved (vendor_*, price_anomalies, price_anomaly_count, failed)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from mailingest.routing.lookups import check_template

        check_template(value)
        return value

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, str]) -> dict[str, str]:
        from mailingest.routing.lookups import check_template

        for template in value.values():
            check_template(template)
        return value


class RulesConfig(_Section):
    path: Path = Path("rules")
    match: Literal["all", "first"] = "all"  # every matching rule fires, or only the first
    reload: Duration = 2.0  # poll the rule files for changes this often (0: only on SIGHUP)
    hooks: list[HookConfig] = Field(default_factory=list)
    lookups: list[LookupConfig] = Field(default_factory=list)  # enrichment.<name> for rules

    @field_validator("lookups")
    @classmethod
    def _unique_lookups(cls, value: list[LookupConfig]) -> list[LookupConfig]:
        names = [lookup.name for lookup in value]
        if len(set(names)) != len(names):
            raise ValueError(f"lookup names must be unique: {names}")
        return value


class OutboxConfig(_Section):
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [parse_duration(d) for d in DEFAULT_RETRY_SCHEDULE], min_length=1
    )
    poll_interval: Duration = 1.0
    concurrency: int = Field(default=8, gt=0)


class Config(_Section):
    data_dir: Path = Path("data")
    log: LogConfig = Field(default_factory=LogConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)  # docs/extraction.md
    rules: RulesConfig = Field(default_factory=RulesConfig)
    connectors: ConnectorsConfig = Field(default_factory=ConnectorsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)  # docs/einvoices.md

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_dir.resolve() / 'mailingest.db'}"

    @property
    def drop_path(self) -> Path:
        return self.sources.drop.path or self.data_dir / "inbox"

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{ENV_PREFIX}{'__'.join(keys).upper()}: {'.'.join(keys[:-1])} is not a table")
        node = child
    node[keys[-1]] = value


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(tree: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if keys:
            _set_path(tree, keys, _env_value(raw))
    return tree


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return f"invalid configuration in {origin}:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(f"{ENV_PREFIX}CONFIG")
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path:
        origin = str(path)
        try:
            tree = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    apply_env_overrides(tree, environ)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
