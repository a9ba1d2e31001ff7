"""The SMTP receiver (aiosmtpd): "forward invoices to a mailbox" that works out of the box.

A message is answered ``250`` only after it is committed to the ledger; a storage failure
answers ``451`` so the sending server keeps the message and retries — nothing is lost.
Oversized messages get ``552`` from aiosmtpd's ``data_size_limit``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailingest.config import SmtpSourceConfig, parse_listen
from mailingest.errors import MailingestError, SourceError
from mailingest.sources.base import Sink

log = structlog.get_logger("mailingest.sources.smtp")


class _Handler:
    def __init__(self, sink: Sink, mailbox: str) -> None:
        self.sink = sink
        self.mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            msg_id = await asyncio.to_thread(
                self.sink, raw or b"", source="smtp", mailbox=self.mailbox, envelope_from=envelope.mail_from
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


class _Controller(Controller):
    """Controller that can bind port 0 (tests) and learns the port it got."""

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

    def start(self, sink: Sink) -> None:
        kwargs: dict[str, Any] = {"data_size_limit": self.config.max_message_bytes, "decode_data": False}
        self._controller = _Controller(
            _Handler(sink, self.config.mailbox),
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
        )

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
