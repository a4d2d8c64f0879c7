"""A dead letter made after retries keeps the producer's headers, types and all (contract §7).

The retries travel as task messages, JSON; the producer's AMQP header table must come out of
them as it went in: a timestamp stays a timestamp, bytes stay bytes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from tests.integration.conftest import dead_letter_after_retries
from tests.integration.producer import Producer
from worker.constants import HEADER_PREFIX
from worker.sandbox import SandboxControl
from worker.testing import LocalWorker

pytestmark = pytest.mark.usefixtures("clean_queues")

#: Application headers of every AMQP type a producer may send that JSON cannot hold as is. Bytes
#: are not UTF-8: py-amqp reads bytes that are as text, on every path.
TYPED_HEADERS = {
    "sent-at": datetime(2024, 5, 17, 8, 30, 15),
    "signature": b"\x00\xffsigned",
    "amount": Decimal("12.50"),
    "priority": 7,
    "urgent": True,
    "source": "erp",
    "trace": {"span": 42, "at": datetime(2024, 5, 17, 8, 30, 16), "raw": b"\xfe\x01"},
    "hops": ["erp", 3, False],
}


def test_given_retries_exhausted_then_the_dead_letter_keeps_the_header_types(
    worker: LocalWorker, sandbox: SandboxControl, producer: Producer, broker_url: str
) -> None:
    # Given an event with headers of several AMQP types, which the API refuses with 500 each time
    # When it is published and every retry fails
    _, letter = dead_letter_after_retries(sandbox, producer, broker_url, headers=TYPED_HEADERS)
    # Then it is dead-lettered after retries
    assert letter.headers["x-ccsync-reason"] == "retries-exhausted"
    # And its producer's headers have the same values and the same types as those sent
    kept = {
        key: value
        for key, value in letter.headers.items()
        if not key.startswith(HEADER_PREFIX) and not key.startswith("x-")
    }
    assert kept == TYPED_HEADERS
    assert {key: _types(value) for key, value in kept.items()} == {
        key: _types(value) for key, value in TYPED_HEADERS.items()
    }


def _types(value: object) -> object:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__
