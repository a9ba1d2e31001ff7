"""Signed webhooks following Standard Webhooks 1.0 (https://www.standardwebhooks.com/).

Headers ``webhook-id`` (the event id: stable across retries, so receivers can de-duplicate),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 over "id.timestamp.body">``) keyed with the ``whsec_`` secret — one
such entry per configured secret, space-separated, while a secret is being rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from mailingest import __version__
from mailingest.config import WebhookConfig
from mailingest.connectors.base import Attempt
from mailingest.errors import ConfigError, DeliveryError, DestinationGone

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(
            "webhook secrets look like whsec_<base64>; generate one with `mailingest webhook-secret`"
        )
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise ConfigError("webhook secret is not valid base64 after whsec_") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` entry of the ``webhook-signature`` header."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_all(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The header during a rotation: one signature per secret, space-separated (Standard Webhooks)."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def thin(payload: dict[str, Any], api_url: str) -> dict[str, Any]:
    """The thin form of an ``invoice.*`` event: a reference the receiver fetches with its API key."""
    data = payload.get("data")
    if not str(payload.get("type", "")).startswith("invoice.") or not isinstance(data, dict):
        return payload
    invoice_id = data.get("id")
    return {
        **payload,
        "data": {
            "id": invoice_id,
            "type": data.get("type"),
            "status": data.get("status"),
            "links": {"invoice": f"{api_url.rstrip('/')}/v1/invoices/{invoice_id}"},
        },
    }


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> bool:
    """Receiver-side check (used by tests and documented for users)."""
    msg_id, ts = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    candidates = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def check_destination(url: str, *, allow_private: bool) -> None:
    """SSRF guard: refuse loopback, private, link-local and reserved targets unless allowed."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise DeliveryError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise DestinationGone(
                f"{host} resolves to non-public address {addr}; set allow_private_network = true to permit it"
            )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class WebhookConnector:
    """One configured endpoint; one ``deliver`` call is one HTTP attempt."""

    def __init__(self, config: WebhookConfig, client: httpx.Client | None = None) -> None:
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        self._secrets = [ref.get() for ref in config.secret_refs]
        for secret in self._secrets:
            secret_key(secret)  # fail at start-up, not at the first delivery
        self._client = client or httpx.Client(timeout=config.timeout, follow_redirects=False)

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        check_destination(self.config.url, allow_private=self.config.allow_private_network)
        if self.config.payload == "thin":
            payload = thin(payload, self.config.api_url)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": f"mailingest/{__version__}",
            "webhook-id": event_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign_all(self._secrets, event_id, ts, body),
        }
        try:
            response = self._client.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        excerpt = response.text[:500]
        if 200 <= response.status_code < 300:
            return Attempt(status_code=response.status_code, response_excerpt=excerpt)
        if response.status_code == 410:
            raise DestinationGone("endpoint answered 410 Gone", status_code=410, response=excerpt)
        raise DeliveryError(
            f"endpoint answered HTTP {response.status_code}",
            status_code=response.status_code,
            response=excerpt,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    def close(self) -> None:
        self._client.close()


def new_secret() -> str:
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()
