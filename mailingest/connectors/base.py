"""The connector seam: something that can deliver one outbox event somewhere.

Connectors raise ``DeliveryError`` (retry later) or ``PermanentDeliveryError`` (stop trying and
disable the destination); the dispatcher owns retries, ordering and bookkeeping, so a connector
only has to make one attempt. More kinds plug in through the ``mailingest.connectors``
entry-point group (a callable taking the config section's dict and returning a Connector).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Attempt:
    """What one successful attempt returned (failures are exceptions carrying the same facts)."""

    status_code: int | None = None
    response_excerpt: str | None = None


@runtime_checkable
class Connector(Protocol):
    name: str
    events: Sequence[str]

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt: ...

    def close(self) -> None: ...
