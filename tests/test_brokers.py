"""Message-broker connectors against the machine's real NATS (JetStream), RabbitMQ and Mosquitto.

Every test uses its own uuid-named stream / exchange / topic so parallel runs do not meet, and
reads what was published with an independent client of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from sqlmodel import select

from mailingest.config import AmqpConfig, MqttConfig, NatsConfig, Secret
from mailingest.connectors.amqp import AmqpConnector
from mailingest.connectors.dispatcher import Dispatcher
from mailingest.connectors.mqtt import MqttConnector
from mailingest.connectors.nats import NatsConnector, stream_subjects
from mailingest.errors import DeliveryError
from mailingest.storage import db, repo, tables
from tests.conftest import free_port

NATS_URL = "nats://127.0.0.1:4222"
PAYLOAD = {"type": "invoice.extracted", "timestamp": "2025-01-02T03:04:05Z", "data": {"number": "Ä-1"}}


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# --- NATS JetStream -------------------------------------------------------------------------------


async def _stream_messages(stream: str) -> list[Any]:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [await js.get_msg(stream, seq) for seq in range(1, info.state.messages + 1)]
    finally:
        await nc.close()


async def _delete_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def nats_stream() -> Iterator[tuple[str, str]]:
    """(stream name, subject prefix) unique to this test; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    stream = f"T_{tag}"
    yield stream, f"t{tag}"
    asyncio.run(_delete_stream(stream))


def test_nats_publish_is_acknowledged_and_redelivery_is_deduplicated(nats_stream) -> None:  # type: ignore[no-untyped-def]
    stream, prefix = nats_stream
    connector = NatsConnector(
        NatsConfig(name="bus", url=NATS_URL, subject=prefix + ".{type}", stream=stream, timeout=5)
    )
    try:
        first = connector.deliver("evt_1", PAYLOAD)
        # the PubAck came back before deliver returned: the message is in the stream already
        [msg] = asyncio.run(_stream_messages(stream))
        assert msg.subject == f"{prefix}.invoice.extracted"
        assert msg.data == body_of(PAYLOAD)
        assert msg.headers["Nats-Msg-Id"] == "evt_1"
        assert first.response_excerpt == f"stream={stream} seq=1"
        again = connector.deliver("evt_1", PAYLOAD)  # a retry after a lost commit
        assert again.response_excerpt == f"stream={stream} seq=1 duplicate"
        connector.deliver("evt_2", {**PAYLOAD, "type": "invoice.needs_review"})
        subjects = [m.subject for m in asyncio.run(_stream_messages(stream))]
        assert subjects == [f"{prefix}.invoice.extracted", f"{prefix}.invoice.needs_review"]
    finally:
        connector.close()


def test_nats_without_the_stream_is_a_retryable_failure() -> None:
    tag = uuid.uuid4().hex[:12]
    connector = NatsConnector(
        NatsConfig(name="bus", subject=f"t{tag}.{{type}}", stream=f"T_{tag}", create_stream=False, timeout=2)
    )
    try:
        with pytest.raises(DeliveryError):
            connector.deliver("evt_1", PAYLOAD)
    finally:
        connector.close()


def test_nats_unreachable_fails_fast() -> None:
    tag = uuid.uuid4().hex[:12]
    config = NatsConfig(
        name="bus",
        url=f"nats://127.0.0.1:{free_port()}",
        subject=f"t{tag}.{{type}}",
        stream=f"T_{tag}",
        timeout=2,
    )
    connector = NatsConnector(config)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="NATS"):
        connector.deliver("evt_1", PAYLOAD)
    assert time.monotonic() - started < 5
    connector.close()


def test_nats_dials_again_after_the_connection_broke(nats_stream) -> None:  # type: ignore[no-untyped-def]
    stream, prefix = nats_stream
    connector = NatsConnector(NatsConfig(name="bus", subject=prefix + ".{type}", stream=stream))
    try:
        connector.deliver("evt_1", PAYLOAD)
        assert connector._nc is not None
        asyncio.run_coroutine_threadsafe(connector._nc.close(), connector._loop).result(5)  # server gone
        connector.deliver("evt_2", PAYLOAD)
        assert [m.headers["Nats-Msg-Id"] for m in asyncio.run(_stream_messages(stream))] == ["evt_1", "evt_2"]
    finally:
        connector.close()


def test_stream_subjects_cover_every_event_type() -> None:
    assert stream_subjects("mailingest.{type}") == ["mailingest.>"]
    assert stream_subjects("acme.invoices.v1-{type_dash}") == ["acme.invoices.>"]
    assert stream_subjects("{type}") == [">"]
    assert stream_subjects("fixed.subject") == ["fixed.subject"]


def test_nats_dispatcher_end_to_end(db_url, nats_stream) -> None:  # type: ignore[no-untyped-def]
    stream, prefix = nats_stream
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    connector = NatsConnector(NatsConfig(name="bus", subject=prefix + ".{type_dash}", stream=stream))
    dispatcher = Dispatcher(engine, {"bus": connector}, schedule=[0, 0.2, 0.2])
    with db.session_scope(engine) as s:
        event_id = repo.add_event(
            s,
            type="invoice.validated",
            subject_id="inv_1",
            data={"n": 1},
            connectors=[("bus", ["invoice.*"])],
        ).id
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and dispatcher.run_once() == 0:
        time.sleep(0.05)
    dispatcher.close()
    [msg] = asyncio.run(_stream_messages(stream))
    assert msg.subject == f"{prefix}.invoice-validated"
    assert msg.headers["Nats-Msg-Id"] == event_id
    assert json.loads(msg.data)["data"] == {"n": 1}
    with db.session_scope(engine) as s:
        assert s.exec(select(tables.Delivery)).one().status == "delivered"


# --- RabbitMQ (AMQP 0-9-1) ----------------------------------------------------------------------


@pytest.fixture
def rabbit() -> Iterator[tuple[pika.adapters.blocking_connection.BlockingChannel, str]]:
    """A test-side channel and a unique exchange name (deleted afterwards)."""
    exchange = f"t-{uuid.uuid4().hex[:12]}"
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/"))
    channel = conn.channel()
    yield channel, exchange
    channel.exchange_delete(exchange)
    conn.close()


def amqp_connector(exchange: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> AmqpConnector:
    monkeypatch.setenv("T_AMQP_PASSWORD", "guest")
    config = AmqpConfig(
        name="rabbit",
        url="amqp://guest@127.0.0.1:5672/",
        password=Secret(env="T_AMQP_PASSWORD"),
        exchange=exchange,
        **extra,
    )
    return AmqpConnector(config)


def test_amqp_publish_is_confirmed_persistent_and_identified(rabbit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    channel, exchange = rabbit
    connector = amqp_connector(exchange, monkeypatch, timeout=5)
    try:
        with pytest.raises(DeliveryError, match="no queue is bound"):  # declared, but nothing bound yet
            connector.deliver("evt_0", PAYLOAD)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, exchange, routing_key="invoice.invoice.*")
        attempt = connector.deliver("evt_1", PAYLOAD)
        assert attempt.response_excerpt == f"confirmed by {exchange}/invoice.invoice.extracted"
        # confirmed means enqueued: the message is there without waiting
        method, props, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None and method.routing_key == "invoice.invoice.extracted"
        assert body == body_of(PAYLOAD)
        assert props.message_id == "evt_1" and props.content_type == "application/json"
        assert props.delivery_mode == 2 and props.headers == {"type": "invoice.extracted"}
        with pytest.raises(DeliveryError, match="no queue is bound"):  # routing key matches no binding
            connector.deliver("evt_2", {**PAYLOAD, "type": "document.received"})
        connector.deliver("evt_3", {**PAYLOAD, "type": "invoice.approved"})  # the channel survived
        assert channel.basic_get(queue, auto_ack=True)[0] is not None
    finally:
        connector.close()


def test_amqp_reconnects_after_the_connection_was_dropped(rabbit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    channel, exchange = rabbit
    connector = amqp_connector(exchange, monkeypatch)
    queue = channel.queue_declare("", exclusive=True).method.queue
    try:
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_bind(queue, exchange, routing_key="#")
        connector.deliver("evt_1", PAYLOAD)
        assert connector._connection is not None
        connector._connection.close()  # as if the broker had gone away between two events
        connector.deliver("evt_2", PAYLOAD)
        ids = [channel.basic_get(queue, auto_ack=True)[1].message_id for _ in range(2)]
        assert ids == ["evt_1", "evt_2"]
    finally:
        connector.close()


def test_amqp_unreachable_fails_fast(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_AMQP_PASSWORD", "guest")
    connector = AmqpConnector(
        AmqpConfig(
            name="rabbit",
            url=f"amqp://guest@127.0.0.1:{free_port()}/",
            password=Secret(env="T_AMQP_PASSWORD"),
            timeout=2,
        )
    )
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        connector.deliver("evt_1", PAYLOAD)
    assert time.monotonic() - started < 5
    connector.close()


def test_amqp_refuses_an_inline_password_and_unknown_placeholders() -> None:
    with pytest.raises(ValidationError, match="may not contain a password"):
        AmqpConfig(name="rabbit", url="amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(ValidationError, match=r"may only use \{type\}"):
        AmqpConfig(name="rabbit", routing_key="invoice.{typ}")
    with pytest.raises(ValidationError, match=r"may only use \{type\}"):
        NatsConfig(name="bus", subject="x.{type!r}")


# --- MQTT (Mosquitto) ---------------------------------------------------------------------------


class Subscriber:
    """An independent paho client subscribed to ``prefix/#`` with QoS 1."""

    def __init__(self, prefix: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.received = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(msg)
        self.received.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_publish_waits_for_puback_and_carries_the_event_id() -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    subscriber = Subscriber(prefix)
    connector = MqttConnector(MqttConfig(name="mq", topic=prefix + "/{type}", timeout=5))
    try:
        attempt = connector.deliver("evt_1", PAYLOAD)
        assert attempt.response_excerpt is not None and "acknowledged" in attempt.response_excerpt
        assert subscriber.received.wait(5)
        [msg] = subscriber.messages
        assert msg.topic == f"{prefix}/invoice.extracted" and msg.payload == body_of(PAYLOAD)
        assert msg.qos == 1
        assert msg.properties is not None
        assert ("event-id", "evt_1") in msg.properties.UserProperty
        assert msg.properties.ContentType == "application/json"
    finally:
        connector.close()
        subscriber.close()


def _silent_broker() -> tuple[socket.socket, int]:
    """A TCP peer that accepts the MQTT connection (CONNACK) but never acknowledges a publish —
    the one broker behaviour Mosquitto cannot be asked for."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(1024)  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")  # MQTT 5 CONNACK: success, no properties
        while conn.recv(1024):  # swallow PUBLISH and PINGREQ, answer nothing
            pass
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_mqtt_without_puback_is_not_delivered() -> None:
    server, port = _silent_broker()
    connector = MqttConnector(MqttConfig(name="mq", port=port, timeout=1))
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="no MQTT acknowledgement"):
            connector.deliver("evt_1", PAYLOAD)
        assert 0.9 < time.monotonic() - started < 4
    finally:
        connector.close()
        server.close()


def test_mqtt_unreachable_fails_fast() -> None:
    connector = MqttConnector(MqttConfig(name="mq", port=free_port(), timeout=2))
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        connector.deliver("evt_1", PAYLOAD)
    assert time.monotonic() - started < 5
    connector.close()
