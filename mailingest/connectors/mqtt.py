"""MQTT: one ``deliver`` is one QoS 1 (or 2) publish; the broker's PUBACK (PUBCOMP) is delivery.

With MQTT 5 (the default) the event id travels as the user property ``event-id`` and the body
is marked ``application/json``; MQTT 3.1.1 has no place for either, so there consumers can
only de-duplicate on the body. paho's network thread (``loop_start``) keeps the session alive
and reconnects by itself; paho's publish is thread-safe, so the dispatcher's worker threads
publish concurrently and each waits for its own acknowledgement.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mailingest.config import MqttConfig
from mailingest.connectors.base import Attempt
from mailingest.connectors.broker import encode_body, render
from mailingest.errors import DeliveryError


class MqttConnector:
    def __init__(self, config: MqttConfig) -> None:
        self.name = config.name
        self.events: Sequence[str] = config.events
        self.config = config
        self._v5 = config.protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        )
        self._client.connect_timeout = config.timeout
        if config.username is not None:
            password = config.password.get() if config.password is not None else None
            self._client.username_pw_set(config.username, password)
        if config.tls:
            self._client.tls_set()
        self._client.on_connect = self._on_connect
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._started = False

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self._refused = None
            self._connected.set()

    def _ensure_started(self) -> None:
        """Dial once; after that paho's loop reconnects on its own, and publishes made while it
        is away wait in its queue (and fail this attempt when the ack does not come in time)."""
        with self._lock:
            if self._started:
                return
            try:
                self._client.connect(self.config.host, self.config.effective_port)
            except OSError as exc:
                raise DeliveryError(f"cannot connect to MQTT broker: {exc}") from exc
            self._client.loop_start()
            self._started = True
        if not self._connected.wait(self.config.timeout):
            with self._lock:
                self._client.loop_stop()
                self._client.disconnect()
                self._started = False
            raise DeliveryError(f"MQTT broker refused or did not answer the connect: {self._refused}")

    def deliver(self, event_id: str, payload: dict[str, Any]) -> Attempt:
        self._ensure_started()
        topic = render(self.config.topic, str(payload.get("type", "")))
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/json"
            properties.UserProperty = [("event-id", event_id)]
        info = self._client.publish(topic, encode_body(payload), qos=self.config.qos, properties=properties)
        try:
            info.wait_for_publish(self.config.timeout)
        except (RuntimeError, ValueError) as exc:  # paho's way of saying "not sent"
            raise DeliveryError(f"MQTT publish to {topic!r} failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError(f"no MQTT acknowledgement for {topic!r} within {self.config.timeout:g}s")
        return Attempt(response_excerpt=f"acknowledged mid={info.mid} topic={topic}")

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._client.disconnect()
                self._client.loop_stop()
                self._started = False
