"""NATS JetStream: one ``deliver`` is one JetStream publish; the stream's PubAck counts as delivery.

The ``Nats-Msg-Id`` header carries the event id, so JetStream drops a redelivery that arrives
within the stream's duplicate window (2 minutes by default) — the case of a crash between the
PubAck and our commit. nats-py is asyncio-only while the dispatcher calls ``deliver`` from
worker threads, so each connector owns a private event loop in a daemon thread and hands it
coroutines with ``run_coroutine_threadsafe``. The client does not reconnect by itself: a broken
connection fails the attempt (the dispatcher retries with backoff) and the next attempt dials
again, so the outbox, not an in-memory buffer, holds what is not yet acknowledged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailingest.config import NatsConfig
from mailingest.connectors.base import Attempt
from mailingest.connectors.broker import encode_body, render
from mailingest.errors import DeliveryError

T = TypeVar("T")
log = structlog.get_logger("mailingest.connectors.nats")

# What a failed connect or publish raises: nats' own tree, socket errors, and asyncio's timeout
# from wait_for (nats.errors.TimeoutError subclasses it).
_FAILURES = (nats.errors.Error, OSError, asyncio.TimeoutError)


def stream_subjects(template: str) -> list[str]:
    """The subjects a created stream captures: the template's literal tokens before the first
    placeholder, then ``>`` (event types contain dots, so they span several tokens)."""
    head, brace, _ = template.partition("{")
    if not brace:
        return [template]
    tokens = head.split(".")[:-1]  # the token holding the placeholder becomes the wildcard
    return [".".join([*tokens, ">"])]


class NatsConnector:
    def __init__(self, config: NatsConfig) -> None:
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        # resolved now so a missing secret fails at start-up, not at the first delivery
        self._auth: dict[str, str] = {}
        if config.username is not None and config.password is not None:
            self._auth = {"user": config.username, "password": config.password.get()}
        if config.token is not None:
            self._auth = {"token": config.token.get()}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()  # only used on the private loop
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-{config.name}", daemon=True
        )
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DeliveryError(f"no answer from NATS within {timeout:g}s") from exc

    async def _jetstream(self) -> JetStreamContext:
        async with self._connecting:
            if self._nc is not None and self._nc.is_connected and self._js is not None:
                return self._js
            await self._drop()
            nc = await nats.connect(
                self.config.url,
                name=f"mailingest-{self.name}",
                connect_timeout=max(1, round(self.config.timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=1,  # the initial dial otherwise retries 60 times, 2 s apart
                reconnect_time_wait=0,
                error_cb=self._on_error,
                **self._auth,
            )
            try:
                js = nc.jetstream(timeout=self.config.timeout)
                if self.config.create_stream:
                    await self._ensure_stream(js)
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js = nc, js
            return js

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's default logs every failed dial with a traceback; the attempt's DeliveryError
        already reports it, so this keeps one line for asynchronous trouble."""
        log.info("nats connection error", connector=self.name, error=f"{type(exc).__name__}: {exc}")

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.config.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=self.config.stream, subjects=stream_subjects(self.config.subject))

    async def _drop(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(*_FAILURES):  # already broken; closing is best effort
                await nc.close()

    async def _publish(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        subject = render(self.config.subject, str(payload.get("type", "")))
        try:
            js = await self._jetstream()
            ack = await js.publish(
                subject,
                encode_body(payload),
                timeout=self.config.timeout,
                stream=self.config.stream,
                headers={"Nats-Msg-Id": event_id, "Content-Type": "application/json"},
            )
        except nats.js.errors.APIError as exc:  # the server answered: the connection is fine
            raise DeliveryError(f"JetStream refused {subject}: {exc}") from exc
        except _FAILURES as exc:
            await self._drop()
            raise DeliveryError(f"NATS {type(exc).__name__}: {exc or 'no details'}") from exc
        excerpt = f"stream={ack.stream} seq={ack.seq}" + (" duplicate" if ack.duplicate else "")
        return Attempt(response_excerpt=excerpt)

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        # connect + stream check + publish each honour config.timeout; allow for all three
        return self._run(self._publish(event_id, payload), 3 * self.config.timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(DeliveryError):  # shutting down anyway; the loop stops below
            self._run(self._drop(), self.config.timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.config.timeout)
        self._loop.close()
