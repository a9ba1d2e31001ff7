"""The SMTP receiver (aiosmtpd): "forward invoices to a mailbox" that works out of the box.

A message is answered ``250`` only after it is committed to the ledger; a storage failure
answers ``451`` so the sending server keeps the message and retries — nothing is lost.
Oversized messages get ``552`` from aiosmtpd's ``data_size_limit`` (advertised as ``SIZE``).

Hardening, all optional: a recipient allow-list (``550`` for others), STARTTLS (and refusing
mail without it, ``530``), AUTH PLAIN/LOGIN against configured users (``530`` before AUTH,
``535`` for bad credentials). Lines that end in a bare LF (``curl`` without ``--crlf``, scripts
piping files with Unix line ends) are accepted as if they ended in CRLF, as Postfix does; only a
real ``CRLF . CRLF`` ends the data, so a bare-LF dot line cannot smuggle a second message
past a relay (it stays content). At most ``max_concurrent`` messages are committed at once; the
rest wait for a slot rather than being refused, so a burst is slow but every ``250`` is stored.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
from typing import Any

import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailingest.config import SmtpSourceConfig, parse_listen
from mailingest.errors import MailingestError, SourceError
from mailingest.sources.base import Sink

log = structlog.get_logger("mailingest.sources.smtp")


def recipient_allowed(address: str, patterns: list[str]) -> bool:
    """``patterns`` are lower-cased addresses or ``*@domain`` (validated by the config)."""
    if not patterns:
        return True
    address = address.lower()
    domain = address.rpartition("@")[2]
    return any(p == address or (p.startswith("*@") and p[2:] == domain) for p in patterns)


class _Authenticator:
    """Checks AUTH PLAIN/LOGIN against the configured users in constant time per password.

    An unknown user is compared against a dummy so the answer takes as long as a wrong
    password; only the username is ever logged."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        expected = self.users.get(login)
        candidate = expected if expected is not None else b"\0" * 32
        ok = hmac.compare_digest(candidate, auth_data.password) and expected is not None
        if not ok:
            log.warning("smtp auth refused", user=login, mechanism=mechanism, peer=str(session.peer))
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)


class _Handler:
    def __init__(self, sink: Sink, config: SmtpSourceConfig) -> None:
        self.sink = sink
        self.mailbox = config.mailbox
        self.allowed_recipients = config.allowed_recipients
        # bounds the commits in flight; created outside the loop, bound to it on first use
        self.slots = asyncio.Semaphore(config.max_concurrent)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not recipient_allowed(address, self.allowed_recipients):
            log.warning("smtp recipient refused", rcpt=address, peer=str(session.peer))
            return "550 5.1.1 recipient not accepted here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            async with self.slots:
                msg_id = await asyncio.to_thread(
                    self.sink,
                    raw or b"",
                    source="smtp",
                    mailbox=self.mailbox,
                    envelope_from=envelope.mail_from,
                )
        except MailingestError as exc:
            log.error("could not store incoming mail; sender will retry", error=exc.detail)
            return "451 4.3.0 Temporary storage failure, try again later"
        log.info(
            "mail accepted",
            message=msg_id,
            peer=str(session.peer),
            size=len(raw or b""),
            rcpt=envelope.rcpt_tos,
        )
        return f"250 2.0.0 OK queued as {msg_id}"


class _BareLfReader:
    """The DATA side of a client's stream with bare-LF line ends read as CRLF ones.

    aiosmtpd reads DATA with ``readuntil(b"\\r\\n")``, so a message with Unix line ends arrives
    as one endless line and is refused (``500 Line too long``). This reader splits on LF and
    restores the CR. A bare-LF dot line is returned dot-stuffed (content ``"."``): only a
    CRLF-terminated dot line ends the data (no SMTP smuggling)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await self._reader.readuntil(b"\n")
        if line.endswith(b"\r\n"):
            return line
        if line == b".\n":
            return b"..\r\n"
        return line[:-1] + b"\r\n"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _LenientSMTP(SMTP):
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        strict = self._reader
        self._reader: Any = _BareLfReader(strict)
        try:
            await super().smtp_DATA(arg)
        finally:
            self._reader = strict


class _Controller(Controller):
    """Controller that can bind port 0 (tests), learns the port it got and accepts bare LF."""

    def factory(self) -> SMTP:
        return _LenientSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        server: Any = self.server
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpSource:
    name = "smtp"

    def __init__(self, config: SmtpSourceConfig) -> None:
        self.config = config
        self.host, self.port = parse_listen(config.listen)
        self._controller: _Controller | None = None

    def _security_kwargs(self) -> dict[str, Any]:
        """aiosmtpd arguments for STARTTLS and AUTH; secrets and certificates are read now so a
        missing one stops startup instead of failing every client later."""
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise SourceError(f"cannot load SMTP TLS certificate {cfg.tls_cert}: {exc}") from exc
            kwargs.update(tls_context=context, require_starttls=cfg.require_tls)
        if cfg.auth_users:
            users = {name: secret.get().encode() for name, secret in cfg.auth_users.items()}
            kwargs.update(
                authenticator=_Authenticator(users),
                auth_required=True,
                auth_require_tls=not cfg.allow_auth_without_tls,
            )
        return kwargs

    def start(self, sink: Sink) -> None:
        kwargs: dict[str, Any] = {
            "data_size_limit": self.config.max_message_bytes,
            "decode_data": False,
            **self._security_kwargs(),
        }
        self._controller = _Controller(
            _Handler(sink, self.config),
            hostname=self.host,
            port=self.port,
            ident="mailingest ESMTP",
            **kwargs,
        )
        try:
            self._controller.start()
        except OSError as exc:
            raise SourceError(f"cannot listen for SMTP on {self.config.listen}: {exc.strerror}") from exc
        self.port = self._controller.port
        log.info(
            "smtp receiver listening",
            host=self.host,
            port=self.port,
            max_message_bytes=self.config.max_message_bytes,
            starttls="tls_context" in kwargs,
            require_tls=bool(kwargs.get("require_starttls")),
            auth_users=sorted(self.config.auth_users),
            allowed_recipients=self.config.allowed_recipients or "any",
        )

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
