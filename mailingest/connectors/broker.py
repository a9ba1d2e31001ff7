"""What the message-broker connectors (NATS, AMQP, MQTT) share: the body and the destination name.

The body is the webhook envelope byte for byte (``{"type", "timestamp", "data"}``, compact UTF-8
JSON), so a consumer can switch transports without changing its parser. Destinations are
rendered from templates that config validation limited to ``{type}`` and ``{type_dash}``.
"""

from __future__ import annotations

import json
from typing import Any


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def render(template: str, event_type: str) -> str:
    """``"mailingest.{type}"`` → ``"mailingest.invoice.extracted"``; ``{type_dash}`` gives
    ``invoice-extracted`` for brokers or consumers that treat dots as separators."""
    return template.format(type=event_type, type_dash=event_type.replace(".", "-"))
