"""Forward each invoice by mail, e.g. to the accounting system's own inbox.

One message per event: a plain-text summary, the canonical invoice as ``invoice.json`` and the
original document, sent through the configured SMTP server. The Message-ID is derived from the
event id (``<evt_...@mailingest>``), so a repeat after a crash (the outbox is at-least-once) is
recognisable to the receiver as the same message.

SMTP's own reply classes decide what the dispatcher does: 4xx and network trouble are retried,
5xx (550 unknown recipient, 535 bad login, 552 too large) are permanent and disable the
connector until someone fixes its configuration.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from mailingest.config import MailConfig
from mailingest.connectors.base import Attempt
from mailingest.connectors.export import Original, field_values, invoice_of, render
from mailingest.connectors.originals import Originals
from mailingest.errors import DeliveryError, PermanentDeliveryError

_SUMMARY_FIELDS = [
    ("Number", "number"),
    ("Type", "type"),
    ("Issue date", "issue_date"),
    ("Due date", "due_date"),
    ("Seller", "seller_name"),
    ("Seller VAT ID", "seller_vat_id"),
    ("Buyer", "buyer_name"),
    ("Buyer VAT ID", "buyer_vat_id"),
    ("Purchase order", "purchase_order"),
    ("Net", "net"),
    ("Tax", "tax"),
    ("Gross", "gross"),
    ("Amount due", "amount_due"),
    ("Status", "status"),
]


def summary(event_id: str, payload: dict[str, Any]) -> str:
    """The human-readable body: key facts, totals with currency, validation messages."""
    values = field_values(event_id, payload)
    currency = values["currency"]
    lines = [f"mailingest event {values['event']} ({event_id})", ""]
    for label, key in _SUMMARY_FIELDS:
        value = values[key]
        if value and key in ("net", "tax", "gross", "amount_due") and currency:
            value = f"{value} {currency}"
        lines.append(f"{label + ':':<16}{value or '-'}")
    validation = invoice_of(payload).get("validation")
    messages = validation.get("messages") if isinstance(validation, dict) else None
    if messages:
        lines += ["", "Validation:"]
        for m in messages:
            if isinstance(m, dict):
                lines.append(f"  [{m.get('severity', '?')}] {m.get('rule', '')}: {m.get('text', '')}")
    lines += ["", "The invoice in canonical JSON is attached as invoice.json."]
    return "\n".join(lines) + "\n"


def build_message(
    config: MailConfig, event_id: str, payload: dict[str, Any], original: Original | None
) -> EmailMessage:
    values = field_values(event_id, payload)
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.to)
    msg["Subject"] = " ".join(render(config.subject, values).split())  # no CR/LF from invoice data
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<{event_id}@mailingest>"
    msg.set_content(summary(event_id, payload))
    invoice = json.dumps(invoice_of(payload), indent=2, ensure_ascii=False).encode()
    msg.add_attachment(invoice, maintype="application", subtype="json", filename="invoice.json")
    if original is not None:
        maintype, _, subtype = original.content_type.partition("/")
        if not subtype:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(original.data, maintype=maintype, subtype=subtype, filename=original.name)
    return msg


def _smtp_error(exc: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused) -> DeliveryError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {
            rcpt: (code, text.decode(errors="replace")) for rcpt, (code, text) in exc.recipients.items()
        }
        code = max(code for code, _ in replies.values())
        detail = "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in replies.items())
    else:
        code = exc.smtp_code
        text = (
            exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        )
        detail = f"{code} {text}"
    kind = PermanentDeliveryError if 500 <= code < 600 else DeliveryError
    return kind(f"SMTP server answered {detail}", status_code=code, response=detail[:500])


class MailConnector:
    """One configured recipient list and SMTP server; one ``deliver`` is one SMTP session."""

    def __init__(self, config: MailConfig, originals: Originals | None = None) -> None:
        """``originals``: where original documents are read (the registry passes the database's
        reader when ``[storage] documents = "database"``); default: ``config.blobs_path``."""
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        self.originals = originals or Originals(config.blobs_path)
        self._password = config.password.get() if config.password else None  # fail at start-up

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.config.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        if c.security == "tls":
            return smtplib.SMTP_SSL(c.host, c.effective_port, timeout=c.timeout, context=self._tls_context())
        smtp = smtplib.SMTP(c.host, c.effective_port, timeout=c.timeout)
        if c.security == "starttls":
            smtp.starttls(context=self._tls_context())
        return smtp

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        original = None
        if self.config.include_originals:
            original = self.originals.read(invoice_of(payload))
        msg = build_message(self.config, event_id, payload, original)
        try:
            with self._connect() as smtp:
                if self.config.username and self._password is not None:
                    smtp.login(self.config.username, self._password)
                refused = smtp.send_message(msg, from_addr=self.config.sender, to_addrs=self.config.to)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException) as exc:
            raise _smtp_error(exc) from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused connection, timeout, TLS, disconnect
            raise DeliveryError(f"cannot send via {self.config.host}: {type(exc).__name__}: {exc}") from exc
        excerpt = "250 accepted"
        if refused:  # some recipients got it; repeating would duplicate theirs
            excerpt += "; refused " + "; ".join(f"{r}: {code}" for r, (code, _) in refused.items())
        return Attempt(status_code=250, response_excerpt=excerpt[:500])

    def close(self) -> None:
        """Each delivery opens its own SMTP session; only the originals' engine is released."""
        self.originals.close()
