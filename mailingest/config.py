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
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from mailingest.errors import ConfigError

ENV_PREFIX = "MAILINGEST_"
DEFAULT_RETRY_SCHEDULE = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """``"60s"``, ``"5m"``, ``"2h"``, ``"250ms"`` or a number of seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '5m', '2h')")
    return float(match.group(1)) * _UNITS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Secret(_Section):
    """A reference to a secret kept outside the config file."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError('a secret is { env = "NAME" } or { file = "/path" }, exactly one of them')
        return self

    def get(self) -> str:
        """Resolve the secret now; raises ConfigError naming the source (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"Secret(env={self.env})" if self.env else f"Secret(file={self.file})"

    __str__ = __repr__


def _refuse_inline_secret(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError('secrets may not be written inline; use { env = "NAME" } or { file = "/path" }')
    return value


SecretRef = Annotated[Secret, BeforeValidator(_refuse_inline_secret)]


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


class SmtpSourceConfig(_Section):
    enabled: bool = True
    listen: str = "127.0.0.1:2525"
    max_message_bytes: int = Field(default=26_214_400, gt=0)
    mailbox: str = "smtp"


class DropSourceConfig(_Section):
    enabled: bool = True
    path: Path | None = None  # default: <data_dir>/inbox
    poll_interval: Duration = 1.0
    settle_time: Duration = 0.5  # a file must be this old (unchanged) before it is taken


_IMAP_KEYWORD = r"^[A-Za-z0-9$_.\-]+$"  # an IMAP keyword atom such as $Processed (no system flags)


class ImapAfterProcessing(_Section):
    """What happens at the server to a message once its results are committed."""

    action: Literal["seen", "flag", "move", "delete", "none"] = "seen"
    folder: str = Field(default="Processed", min_length=1)  # for "move"; created when missing
    flag: str = Field(default="$Processed", pattern=_IMAP_KEYWORD)  # for "flag"


class ImapOnFailure(_Section):
    """What happens to a message that failed (or was too large to fetch)."""

    action: Literal["move", "flag", "none"] = "flag"
    folder: str = Field(default="Failed", min_length=1)
    flag: str = Field(default="$MailingestFailed", pattern=_IMAP_KEYWORD)


def _sender_glob(pattern: str) -> str:
    """Sender patterns are matched against the whole address, so one without ``@`` (a bare
    ``vendor.example``) could never match anything: reject it instead of silently filtering."""
    if "@" not in pattern:
        raise ValueError(f"{pattern!r} matches whole addresses; write e.g. '*@{pattern}' or 'name@{pattern}'")
    return pattern.lower()


def _name_glob(pattern: str) -> str:
    if not pattern.strip():
        raise ValueError("an empty pattern matches no file name")
    return pattern.lower()


def _type_glob(pattern: str) -> str:
    """A bare ``pdf`` would never equal a content type: reject it rather than skip every mail."""
    if not re.fullmatch(r"[^/\s]+/[^/\s]+", pattern):
        raise ValueError(f"{pattern!r} is not a content type such as 'application/pdf' or 'image/*'")
    return pattern.lower()


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


class ImapFilters(_Section):
    """Which new messages an account takes, decided from headers and BODYSTRUCTURE only (see
    ``mailingest.sources.filters``); a filtered-out message is never downloaded.

    Globs are ``fnmatch`` patterns matched case-insensitively (stored lower-cased). Every pattern
    is checked here so a typo fails at load, naming its key, and not at the first mail."""

    allow_senders: list[Annotated[str, AfterValidator(_sender_glob)]] = Field(default_factory=list)
    deny_senders: list[Annotated[str, AfterValidator(_sender_glob)]] = Field(default_factory=list)
    subject_patterns: list[Annotated[str, AfterValidator(_regex)]] = Field(default_factory=list)
    require_attachment: bool = False
    attachment_names: list[Annotated[str, AfterValidator(_name_glob)]] = Field(default_factory=list)
    attachment_types: list[Annotated[str, AfterValidator(_type_glob)]] = Field(default_factory=list)
    skipped_action: Literal["none", "seen", "flag", "move"] = "none"
    skipped_folder: str = Field(default="Skipped", min_length=1)  # for "move"; created when missing
    skipped_flag: str = Field(default="$MailingestSkipped", pattern=_IMAP_KEYWORD)  # for "flag"


class ImapSourceConfig(_Section):
    """One IMAP account (``[[sources.imap]]``); every folder gets its own connection."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=60)
    enabled: bool = True
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, gt=0, lt=65536)  # default: 993 for tls, else 143
    security: Literal["tls", "starttls", "none"] = "tls"
    verify_certificate: bool = True
    username: str = Field(min_length=1)
    password: SecretRef
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    idle: bool = True
    poll_interval: Duration = Field(default=60.0, gt=0)
    idle_timeout: Duration = Field(default=1500.0, gt=0, le=1740)  # RFC 2177: servers drop IDLE at 30 min
    batch_size: int = Field(default=50, gt=0, le=1000)
    max_message_bytes: int = Field(default=26_214_400, gt=0)
    only_unseen: bool = False
    since: date | None = None
    after_processing: ImapAfterProcessing = Field(default_factory=ImapAfterProcessing)
    on_failure: ImapOnFailure = Field(default_factory=ImapOnFailure)
    filters: ImapFilters = Field(default_factory=ImapFilters)
    connect_timeout: Duration = Field(default=30.0, gt=0)
    read_timeout: Duration = Field(default=120.0, gt=0)
    reconnect_max: Duration = Field(default=300.0, gt=0)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @model_validator(mode="after")
    def _folders_are_consistent(self) -> ImapSourceConfig:
        """Each folder is watched once, fits the ledger's mailbox column, and is never a move
        target (a message moved into a watched folder would be fetched again, forever)."""
        if len(set(self.folders)) != len(self.folders):
            raise ValueError("folders must not repeat")
        too_long = [f for f in self.folders if len(self.name) + 1 + len(f) > 200]
        if too_long:  # "<name>/<folder>" is stored as the ledger's mailbox (200 characters)
            raise ValueError(f"account name and folder together exceed 200 characters: {too_long[0]}")
        targets = []
        if self.after_processing.action == "move":
            targets.append(self.after_processing.folder)
        if self.on_failure.action == "move":
            targets.append(self.on_failure.folder)
        if self.filters.skipped_action == "move":
            targets.append(self.filters.skipped_folder)
        clash = sorted(set(targets) & set(self.folders))
        if clash:
            raise ValueError(f"cannot move messages into a watched folder: {', '.join(clash)}")
        return self


class SourcesConfig(_Section):
    smtp: SmtpSourceConfig = Field(default_factory=SmtpSourceConfig)
    drop: DropSourceConfig = Field(default_factory=DropSourceConfig)
    imap: list[ImapSourceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_imap_names(self) -> SourcesConfig:
        names = [a.name for a in self.imap]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"IMAP account names must be unique: {', '.join(dupes)}")
        return self


class PipelineConfig(_Section):
    workers: int = Field(default=1, ge=1, le=64)  # >1 adds worker processes (other CPU cores)
    max_document_bytes: int = Field(default=50 * 2**20, gt=0)
    poll_interval: Duration = 2.0  # safety-net scan for unprocessed messages; new ones wake it at once
    lease: Duration = 300.0  # a claimed message is retried by another worker after this


class RulesConfig(_Section):
    path: Path = Path("rules")
    match: Literal["all", "first"] = "all"  # every matching rule fires, or only the first


class WebhookConfig(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretRef
    events: list[str] = Field(default_factory=lambda: ["*"])
    allow_private_network: bool = False
    timeout: Duration = 10.0
    enabled: bool = True


class ConnectorsConfig(_Section):
    webhook: list[WebhookConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ConnectorsConfig:
        """Names key deliveries and disabled state, so they are unique across all kinds."""
        names = [entry.name for kind in type(self).model_fields for entry in getattr(self, kind)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"connector names must be unique: {', '.join(dupes)}")
        return self


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
    rules: RulesConfig = Field(default_factory=RulesConfig)
    connectors: ConnectorsConfig = Field(default_factory=ConnectorsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

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
