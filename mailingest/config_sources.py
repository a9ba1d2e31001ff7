"""Configuration models of the mail sources (``[sources.*]``)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from mailingest.config_base import Duration, Secret, SecretRef, _Section


def _recipient_pattern(pattern: str) -> str:
    """A recipient entry is a whole address or ``*@domain``; anything else (a bare domain, a
    glob elsewhere) would silently never match, so it is refused at load time."""
    local, at, domain = pattern.strip().lower().rpartition("@")
    if not at or not local or not domain or "*" in domain or ("*" in local and local != "*"):
        raise ValueError(f"{pattern!r} is not an address or '*@domain'")
    return f"{local}@{domain}"


_OCR_LANGUAGE = r"^[a-z]{3}(?:_[a-z]+)?$"  # Tesseract traineddata names: eng, deu, chi_sim
OcrLanguages = list[Annotated[str, Field(pattern=_OCR_LANGUAGE)]] | None
"""Tesseract languages for scans from this source (``["deu", "eng"]``); ``None`` = ``[extraction]``'s."""
PdfPasswords = list[SecretRef] | None
"""Passwords tried on encrypted PDFs from this source; ``None`` = ``[extraction]``'s."""


def _templates_dir(path: Path | None) -> Path | None:
    """invoice2data templates are loaded (and every regex compiled) at config load, so a broken
    template or a missing ``templates`` extra fails ``mailingest check``/startup, not a mail."""
    if path is None:
        return None
    from mailingest.errors import ConfigError
    from mailingest.pipeline.extractors.templates import load_templates

    try:
        load_templates(path)
    except ConfigError as exc:
        raise ValueError(exc.detail) from None
    return path


class ExtractorPluginConfig(_Section):
    """What every ``[extraction.plugins.<name>]`` table has; a plugin's ``config_model`` extends
    it with its own keys (docs/plugins.md)."""

    enabled: bool = True
    # Order among extractors: e-invoice XML is 0 (always first), PDF text 100, OCR 200.
    # None = the plugin's own ``priority`` attribute, else 50 (before PDF text).
    priority: int | None = Field(default=None, ge=1, le=999)


class ExtractionConfig(_Section):
    """``[extraction]``: how documents are read (docs/extraction.md)."""

    # Tesseract languages for OCR; empty = every one of eng, deu, fra, spa, ita, nld that is
    # installed. Fewer languages OCR faster and misread less; sources can override it.
    ocr_languages: list[Annotated[str, Field(pattern=_OCR_LANGUAGE)]] = []
    # Installed extractor plugins to use (``mailingest.extractors`` entry points), each with its
    # own validated config: ``[extraction.plugins.<name>]``, or ``plugins = ["<name>", ...]`` for
    # defaults. None is used unless named here. Values: the plugin's ExtractorPluginConfig.
    plugins: dict[str, Any] = {}
    # Passwords tried, in order, on encrypted PDFs (after the empty one); sources can override it.
    pdf_passwords: list[SecretRef] = []
    # A folder of invoice2data YAML templates (needs the "templates" extra); None = none.
    templates_dir: Annotated[Path | None, AfterValidator(_templates_dir)] = None

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugin_configs(cls, value: Any) -> dict[str, ExtractorPluginConfig]:
        from mailingest import plugins

        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            value = {name: {} for name in value}
        if not isinstance(value, dict):
            raise ValueError('write [extraction.plugins.<name>] tables or plugins = ["<name>", ...]')
        configs: dict[str, ExtractorPluginConfig] = {}
        for name, raw in value.items():
            if isinstance(raw, ExtractorPluginConfig):
                configs[name] = raw
                continue
            try:
                factory = plugins.load_factory(plugins.EXTRACTORS_GROUP, name)
            except ValueError as exc:
                raise ValueError(f"unknown extractor plugin {name!r}: {exc}") from None
            model = plugins.config_model(factory, name, ExtractorPluginConfig, required=False)
            config = plugins.validate(model, raw, f"extraction.plugins.{name}")
            assert isinstance(config, ExtractorPluginConfig)
            configs[name] = config
        return configs


class SmtpSourceConfig(_Section):
    """The SMTP receiver. ``250`` means durably stored: a burst is slowed down (at most
    ``max_concurrent`` messages are being committed at once), never dropped."""

    enabled: bool = True
    listen: str = "127.0.0.1:2525"
    max_message_bytes: int = Field(default=26_214_400, gt=0)
    mailbox: str = "smtp"
    # empty = any recipient; otherwise addresses or "*@domain", case-insensitive (550 for others)
    allowed_recipients: list[Annotated[str, AfterValidator(_recipient_pattern)]] = []
    tls_cert: Path | None = None  # with tls_key: STARTTLS is offered
    tls_key: Path | None = None
    require_tls: bool = False  # refuse MAIL (530) until the client issued STARTTLS
    auth_users: dict[str, SecretRef] = {}  # username → password secret; when set, AUTH is required
    allow_auth_without_tls: bool = False  # AUTH over plain text (loopback/tests only)
    max_concurrent: int = Field(default=16, gt=0)  # messages committed at once; more wait
    ocr_languages: OcrLanguages = None  # e.g. ["deu", "eng"]; None = [extraction] ocr_languages
    pdf_passwords: PdfPasswords = None  # e.g. [{ env = "PDF_PW" }]; None = [extraction] pdf_passwords

    @model_validator(mode="after")
    def _coherent_security(self) -> SmtpSourceConfig:
        """Refuse combinations that would make every client fail at run time instead."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key are set together (both or neither)")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        if self.auth_users and self.tls_cert is None and not self.allow_auth_without_tls:
            raise ValueError(
                "auth_users needs TLS (tls_cert and tls_key) so passwords are not sent in clear; "
                "set allow_auth_without_tls = true only for loopback"
            )
        return self


class DropSourceConfig(_Section):
    enabled: bool = True
    path: Path | None = None  # default: <data_dir>/inbox
    poll_interval: Duration = 1.0
    settle_time: Duration = 0.5  # a file must be this old (unchanged) before it is taken
    ocr_languages: OcrLanguages = None  # e.g. ["deu", "eng"]; None = [extraction] ocr_languages
    pdf_passwords: PdfPasswords = None  # e.g. [{ env = "PDF_PW" }]; None = [extraction] pdf_passwords


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


_MS_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
_MS_DEVICE_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"
_GOOGLE_DEVICE_URL = "https://oauth2.googleapis.com/device/code"


class ImapOAuth2(_Section):
    """``[sources.imap.oauth2]``: where an IMAP account gets the access tokens it logs in with
    (SASL XOAUTH2). With ``refresh_token`` the refresh-token flow runs (a mailbox user consented
    once); without it, the client-credentials flow (an app registration with IMAP access to the
    mailbox, Microsoft only). ``provider`` fills in the token endpoint and scope; ``token_url``
    and ``scope`` override them (``custom`` needs ``token_url``).

    ``token_key`` (a Fernet key) turns on the encrypted token store
    (``<data_dir>/tokens/<account>.json.enc``, see ``mailingest.token_store``): rotated refresh
    tokens survive a restart, and ``mailingest auth ACCOUNT`` (device-code flow, endpoint from
    ``provider`` or ``device_code_url``) can put one there, so ``refresh_token`` may be left out."""

    provider: Literal["microsoft", "google", "custom"]
    token_url: str | None = Field(default=None, pattern=r"^https?://")
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+$")  # Microsoft: GUID or domain
    client_id: str = Field(min_length=1)
    client_secret: SecretRef | None = None  # absent for public (native-app) clients
    refresh_token: SecretRef | None = None
    scope: str | None = None
    token_key: SecretRef | None = None  # Fernet key of the encrypted token store
    device_code_url: str | None = Field(default=None, pattern=r"^https?://")  # for `mailingest auth`

    @property
    def uses_refresh_token(self) -> bool:
        """The refresh-token flow runs when a token is configured or may be in the token store."""
        return self.refresh_token is not None or self.token_key is not None

    @model_validator(mode="after")
    def _endpoint_is_known(self) -> ImapOAuth2:
        """Fail at load, not at the first login, when the flow cannot work as configured."""
        if self.token_url is None:
            if self.provider == "custom":
                raise ValueError("provider 'custom' needs token_url")
            if self.provider == "microsoft" and self.tenant is None and not self.uses_refresh_token:
                raise ValueError("the client-credentials flow needs tenant (a tenant id or domain)")
        if not self.uses_refresh_token:
            if self.provider == "google":
                raise ValueError(
                    "Google IMAP needs refresh_token or token_key (Gmail offers no client-credentials flow)"
                )
            if self.client_secret is None:
                raise ValueError(
                    "the client-credentials flow (no refresh_token, no token_key) needs client_secret"
                )
        return self

    @property
    def effective_token_url(self) -> str:
        if self.token_url is not None:
            return self.token_url
        if self.provider == "google":
            return _GOOGLE_TOKEN_URL
        return _MS_TOKEN_URL.format(tenant=self.tenant or "common")  # "common": any work or personal account

    @property
    def effective_scope(self) -> str:
        """The requested scope ("" = none sent; a custom server then applies its default)."""
        if self.scope is not None:
            return self.scope
        if self.provider == "google":
            return "https://mail.google.com/"
        if self.provider == "microsoft":
            if not self.uses_refresh_token:
                return "https://outlook.office365.com/.default"
            return "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
        return ""

    @property
    def effective_device_code_url(self) -> str | None:
        """The RFC 8628 device authorization endpoint (None: ``custom`` without ``device_code_url``)."""
        if self.device_code_url is not None:
            return self.device_code_url
        if self.provider == "google":
            return _GOOGLE_DEVICE_URL
        if self.provider == "microsoft":
            return _MS_DEVICE_URL.format(tenant=self.tenant or "common")
        return None


class ImapSourceConfig(_Section):
    """One IMAP account (``[[sources.imap]]``); every folder gets its own connection."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=60)
    enabled: bool = True
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, gt=0, lt=65536)  # default: 993 for tls, else 143
    security: Literal["tls", "starttls", "none"] = "tls"
    verify_certificate: bool = True
    username: str = Field(min_length=1)
    auth: Literal["password", "oauth2"] = "password"
    password: SecretRef | None = None  # for auth = "password"
    oauth2: ImapOAuth2 | None = None  # for auth = "oauth2"
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
    ocr_languages: OcrLanguages = None  # e.g. ["deu", "eng"]; None = [extraction] ocr_languages
    pdf_passwords: PdfPasswords = None  # e.g. [{ env = "PDF_PW" }]; None = [extraction] pdf_passwords

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> ImapSourceConfig:
        if self.auth == "password" and self.password is None:
            raise ValueError('auth = "password" needs password')
        if self.auth == "oauth2" and self.oauth2 is None:
            raise ValueError('auth = "oauth2" needs a [sources.imap.oauth2] table')
        return self

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


_GRAPH_CATEGORY = r"^[^,]{1,255}$"  # an Outlook category name (commas would split it in clients)


class GraphAction(_Section):
    """What happens in the mailbox to a Graph message once its results are committed (or it
    failed): ``read`` sets ``isRead``, ``move`` moves it to ``folder`` (an id, a well-known name
    such as ``archive``, or the display name of a top-level folder), ``flag`` adds ``category``."""

    action: Literal["none", "read", "move", "flag"]
    folder: str = Field(default="archive", min_length=1)
    category: str = Field(default="Mailingest", pattern=_GRAPH_CATEGORY)


def _graph_done() -> GraphAction:
    return GraphAction(action="read")


def _graph_failed() -> GraphAction:
    return GraphAction(action="flag", category="Mailingest failed")


class GraphSourceConfig(_Section):
    """One Microsoft Graph mailbox folder (``[[sources.graph]]``), read with delta queries as an
    app registration (client-credentials flow, application permission ``Mail.ReadWrite``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=60)
    enabled: bool = True
    tenant_id: str = Field(pattern=r"^[A-Za-z0-9.-]+$")  # a GUID or a domain; part of the token URL
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    authority: str = Field(default="https://login.microsoftonline.com", pattern=r"^https?://")
    graph_url: str = Field(default="https://graph.microsoft.com/v1.0", pattern=r"^https?://")
    user: str = Field(min_length=1)  # the mailbox: user principal name or object id
    folder: str = Field(default="inbox", min_length=1)  # well-known name, id, or top-level display name
    poll_interval: Duration = Field(default=60.0, gt=0)
    timeout: Duration = Field(default=30.0, gt=0)
    after_processing: GraphAction = Field(default_factory=_graph_done)
    on_failure: GraphAction = Field(default_factory=_graph_failed)
    ocr_languages: OcrLanguages = None  # e.g. ["deu", "eng"]; None = [extraction] ocr_languages
    pdf_passwords: PdfPasswords = None  # e.g. [{ env = "PDF_PW" }]; None = [extraction] pdf_passwords

    @model_validator(mode="after")
    def _not_into_itself(self) -> GraphSourceConfig:
        """A message moved into the watched folder would come back through the delta query."""
        if len(self.name) + 1 + len(self.folder) > 200:  # "<name>/<folder>" is the ledger's mailbox
            raise ValueError("name and folder together exceed 200 characters")
        for rule in (self.after_processing, self.on_failure):
            if rule.action == "move" and rule.folder.lower() == self.folder.lower():
                raise ValueError(f"cannot move messages into the watched folder {self.folder!r}")
        return self


def _unique_graph_names(sources: list[GraphSourceConfig]) -> list[GraphSourceConfig]:
    """The name keys the source's state file (``<data_dir>/state/graph-<name>.json``)."""
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"Graph source names must be unique: {', '.join(dupes)}")
    return sources


class SourcesConfig(_Section):
    smtp: SmtpSourceConfig = Field(default_factory=SmtpSourceConfig)
    drop: DropSourceConfig = Field(default_factory=DropSourceConfig)
    imap: list[ImapSourceConfig] = Field(default_factory=list)
    graph: Annotated[list[GraphSourceConfig], AfterValidator(_unique_graph_names)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _unique_imap_names(self) -> SourcesConfig:
        names = [a.name for a in self.imap]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"IMAP account names must be unique: {', '.join(dupes)}")
        return self


def ocr_languages_for(
    sources: SourcesConfig, extraction: ExtractionConfig, channel: str | None, mailbox: str | None
) -> str | None:
    """The Tesseract language string (``"deu+eng"``) for a message from ``channel``/``mailbox``.

    ``mailbox`` is what the source records on each message (IMAP and Graph: ``<name>/<folder>``,
    SMTP: its ``mailbox``, drop: the folder path). ``None`` means OCR's default (all installed).
    """
    chosen: list[str] | None = None
    if channel == "imap" or channel == "graph":
        configs: list[ImapSourceConfig] | list[GraphSourceConfig] = (
            sources.imap if channel == "imap" else sources.graph
        )
        name = (mailbox or "").split("/", 1)[0]
        chosen = next((c.ocr_languages for c in configs if c.name == name), None)
    elif channel == "smtp":
        chosen = sources.smtp.ocr_languages
    elif channel == "drop":
        chosen = sources.drop.ocr_languages
    chosen = chosen or extraction.ocr_languages
    return "+".join(chosen) if chosen else None


def pdf_passwords_for(
    sources: SourcesConfig, extraction: ExtractionConfig, channel: str | None, mailbox: str | None
) -> list[Secret]:
    """The PDF password secrets, in order, for a message from ``channel``/``mailbox``.

    The source's ``pdf_passwords`` replace ``[extraction]``'s when set. They are returned
    unresolved: ``analyse`` reads them only when it meets an encrypted PDF.
    """
    chosen: list[Secret] | None = None
    if channel == "imap" or channel == "graph":
        configs: list[ImapSourceConfig] | list[GraphSourceConfig] = (
            sources.imap if channel == "imap" else sources.graph
        )
        name = (mailbox or "").split("/", 1)[0]
        chosen = next((c.pdf_passwords for c in configs if c.name == name), None)
    elif channel == "smtp":
        chosen = sources.smtp.pdf_passwords
    elif channel == "drop":
        chosen = sources.drop.pdf_passwords
    return list(chosen if chosen is not None else extraction.pdf_passwords)
