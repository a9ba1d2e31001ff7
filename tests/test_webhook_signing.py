from __future__ import annotations

import time

import pytest

from mailingest.connectors.dispatcher import next_delay
from mailingest.connectors.webhook import check_destination, new_secret, parse_retry_after, sign, verify
from mailingest.errors import ConfigError, PermanentDeliveryError


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The test vector published with the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    got = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_own_signature_and_rejects_tampering() -> None:
    secret = new_secret()
    ts = int(time.time())
    body = b'{"type":"invoice.extracted"}'
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "evt_1", ts, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_secret(), headers, body)
    stale = {
        **headers,
        "webhook-timestamp": str(ts - 3600),
        "webhook-signature": sign(secret, "evt_1", ts - 3600, body),
    }
    assert not verify(secret, stale, body)


def test_secret_must_have_the_whsec_prefix() -> None:
    with pytest.raises(ConfigError):
        sign("plain", "id", 1, b"")


def test_private_destinations_refused_unless_allowed() -> None:
    with pytest.raises(PermanentDeliveryError, match="non-public"):
        check_destination("http://127.0.0.1:9/hook", allow_private=False)
    with pytest.raises(PermanentDeliveryError):
        check_destination("http://169.254.169.254/latest/meta-data", allow_private=False)
    check_destination("http://127.0.0.1:9/hook", allow_private=True)


def test_retry_schedule_with_jitter_and_retry_after() -> None:
    schedule = [0, 5, 300]
    assert next_delay(schedule, 1, None) == pytest.approx(5, rel=0.11)
    assert next_delay(schedule, 2, None) == pytest.approx(300, rel=0.11)
    assert next_delay(schedule, 3, None) is None
    assert next_delay(schedule, 1, 120) == 120
    assert parse_retry_after("30") == 30
    assert parse_retry_after("garbage") is None
