"""Hostile messages for the intake, drawn from hypothesis strategies, and a raw dead-letter reader.

``generate_cases`` runs one ``@given`` function for ``count`` examples and collects each example
into a list: hypothesis's own engine (its edge cases, its seeding) does the drawing, while the
slow part, a real worker consuming them, runs once over the whole list afterwards. The seed is
explicit so that a failing run can be replayed exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import string
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import amqp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.integration.producer import EXCHANGE, ROUTING_KEY, connect, purge
from worker.constants import (
    DEAD_LETTER_QUEUE,
    DELAY_LEVELS,
    DELAY_QUEUE_PREFIX,
    EVENTS_QUEUE,
    TASKS_QUEUE,
)

CASE_HEADER = "x-test-case"
EVENT_TYPE = "customer.internal-identifier.changed"
CLOUDEVENTS_PREFIXES = ("cloudEvents:", "cloudEvents_", "ce-", "ce_")
TEN_MB = 10 * 1024 * 1024


@dataclass
class HostileMessage:
    """One message as a hostile or broken producer might publish it."""

    kind: str
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    headers: dict[Any, Any] = field(default_factory=dict)

    def describe(self) -> str:
        body = self.body[:120]
        return (
            f"{self.kind}: {len(self.body)} bytes {body!r}..., content_type={self.content_type!r}, "
            f"content_encoding={self.content_encoding!r}, headers={_short(self.headers)}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}..."


# --- building blocks ---------------------------------------------------------------------------

_uuids = st.uuids().map(str)
_timestamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda moment: moment.isoformat())
_identifiers = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=30)

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
# Values a producer might put where a string, a UUID or a timestamp belongs.
_wrong_values = st.one_of(
    _json_values,
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "not-a-uuid",
            "00000000-0000-0000-0000-00000000000g",
            "2024-13-45T25:61:61Z",
            "2024-01-01T00:00:00",
            "1700000000",
            "yesterday",
            "customer.internal-identifier.CHANGED",
            "1.0",
            "\u0000",
        ]
    ),
)

# AMQP table values py-amqp can serialise (timestamps after 1970, decimals of two places).
_amqp_keys = st.one_of(st.text(max_size=30), st.binary(max_size=20)).filter(
    lambda key: key not in (CASE_HEADER, CASE_HEADER.encode())
)
_amqp_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.decimals(min_value=-(10**6), max_value=10**6, places=2),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)),
)
_amqp_values = st.recursive(
    _amqp_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_amqp_keys, inner, max_size=3),
    max_leaves=10,
)
_content_types = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            "application/json",
            "application/cloudevents+json",
            "text/plain",
            "application/xml",
            "application/octet-stream",
            "application/cloudevents-batch+json",
            "application/json; charset=utf-8",
        ]
    ),
    st.text(max_size=60),
)
_wrong_content_types = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "application/xml",
            "application/octet-stream",
            "application/cloudevents-batch+json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "json",
            "application/jsonp",
            "*/*",
        ]
    ),
    st.text(max_size=60).filter(
        lambda text: (
            text.split(";", 1)[0].strip().lower()
            not in ("", "application/json", "application/cloudevents+json")
        )
    ),
)

NATIVE_FIELDS = (
    "eventId",
    "eventType",
    "occurredAt",
    "tenant",
    "customerId",
    "resellerId",
    "internalIdentifier",
    "source",
)
CLOUDEVENT_FIELDS = ("specversion", "type", "id", "source", "time", "data")
CLOUDEVENT_DATA_FIELDS = ("tenant", "customerId", "resellerId", "internalIdentifier")


class _Ids:
    """eventIds and customerIds unique to one generation run: hypothesis repeats its simplest UUIDs,
    and two cases sharing an id would hide one another (and meet in the ledger across runs)."""

    run = uuid.uuid4().hex[:8]
    numbers = itertools.count()

    @classmethod
    def restart(cls) -> None:
        cls.run = uuid.uuid4().hex[:8]
        cls.numbers = itertools.count()

    @classmethod
    def next(cls) -> tuple[str, str]:
        number = next(cls.numbers)
        name = f"hostile-{cls.run}-{number}"
        return name, str(uuid.uuid5(uuid.NAMESPACE_URL, name))


@st.composite
def _native(draw: st.DrawFn) -> dict[str, Any]:
    """A valid native event (the tenant comes from CLOUDCOCKPIT_TENANT)."""
    event_id, customer_id = _Ids.next()
    return {
        "eventId": event_id,
        "eventType": EVENT_TYPE,
        "occurredAt": draw(_timestamps),
        "customerId": customer_id,
        "resellerId": draw(st.none() | _uuids),
        "internalIdentifier": draw(st.none() | _identifiers),
        "source": "hostile-input",
    }


def _structured(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "id": event["eventId"],
        "source": "hostile-input",
        "time": event["occurredAt"],
        "data": {
            "customerId": event["customerId"],
            "resellerId": event["resellerId"],
            "internalIdentifier": event["internalIdentifier"],
        },
    }


def _mutate(draw: st.DrawFn, document: dict[str, Any], names: Iterable[str]) -> list[str]:
    """Deletes or retypes one to three of ``names``; returns what it did, for the case's kind."""
    chosen = draw(st.lists(st.sampled_from(sorted(names)), min_size=1, max_size=3, unique=True))
    done = []
    for name in chosen:
        if draw(st.booleans()):
            document.pop(name, None)
            done.append(f"-{name}")
        else:
            document[name] = draw(_wrong_values)
            done.append(f"{name}~")
    return done


def _dumps(document: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes; ASCII escapes by default, so a lone surrogate drawn by hypothesis stays JSON."""
    return json.dumps(document, ensure_ascii=ascii_only).encode()


def _with_raw(event: dict[str, Any], where: str, raw_json: str) -> bytes:
    """``event`` as JSON with the value of ``where`` replaced by a raw JSON text."""
    marker = "__HOSTILE_RAW_VALUE__"
    text = json.dumps({**event, where: marker})
    return text.replace(json.dumps(marker), raw_json, 1).encode()


# --- the kinds of hostile message ----------------------------------------------------------------


def _random_bytes(draw: st.DrawFn) -> HostileMessage:
    body = draw(st.binary(max_size=4096))
    return HostileMessage("random bytes", body, draw(_content_types))


def _deep_json(draw: st.DrawFn) -> HostileMessage:
    depth = draw(st.sampled_from([50_000, 100_000]) | st.integers(1, 100_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    nested = opener * depth + "0" + closer * depth
    where = draw(st.sampled_from(["top", "eventId", "customerId", "internalIdentifier", "extra"]))
    body = nested.encode() if where == "top" else _with_raw(draw(_native()), where, nested)
    return HostileMessage(f"deep JSON ({depth} levels in {where})", body)


def _huge_string(draw: st.DrawFn) -> HostileMessage:
    char = draw(st.characters(codec="utf-8"))
    size = draw(
        st.integers(201, 5000)
        | st.integers(5000, 2_100_000)
        | st.sampled_from([256, 1_048_576, 2_000_000])
    )
    size = min(size, 2_100_000 // len(char.encode()))
    where = draw(st.sampled_from([*NATIVE_FIELDS, "extra"]))
    event = draw(_native())
    event[where] = char * size
    body = _dumps(event, ascii_only=False)
    return HostileMessage(f"huge string ({size} x {char!r} in {where})", body)


def _wrong_types(draw: st.DrawFn) -> HostileMessage:
    event = draw(_native())
    done = _mutate(draw, event, NATIVE_FIELDS)
    return HostileMessage(f"wrong types ({', '.join(done)})", _dumps(event))


def _huge_number(draw: st.DrawFn) -> HostileMessage:
    digits = draw(st.integers(1, 30_000))
    literal = draw(
        st.sampled_from(
            [
                "9" * digits,
                "-" + "9" * digits,
                "1e" + "9" * min(digits, 30),
                "0." + "0" * digits + "1",
                "1" + "0" * digits + ".5",
            ]
        )
    )
    where = draw(st.sampled_from([*NATIVE_FIELDS, "extra"]))
    body = _with_raw(draw(_native()), where, literal)
    return HostileMessage(f"huge number ({len(literal)} chars in {where})", body)


def _wrong_content_type(draw: st.DrawFn) -> HostileMessage:
    event = draw(_native())
    document = draw(st.sampled_from(["native", "structured"]))
    if document == "native":
        return HostileMessage(
            "native event, wrong content type", _dumps(event), draw(_wrong_content_types)
        )
    # A structured CloudEvent labelled plain JSON (or worse) is not a native event either.
    content_type = draw(st.none() | st.just("application/json") | _wrong_content_types)
    return HostileMessage(
        "structured CloudEvent, wrong content type", _dumps(_structured(event)), content_type
    )


def _structured_bad(draw: st.DrawFn) -> HostileMessage:
    document = _structured(draw(_native()))
    if draw(st.booleans()):
        done = _mutate(draw, document, CLOUDEVENT_FIELDS)
    else:
        done = ["data." + name for name in _mutate(draw, document["data"], CLOUDEVENT_DATA_FIELDS)]
    return HostileMessage(
        f"structured CloudEvent ({', '.join(done)})",
        _dumps(document),
        "application/cloudevents+json",
    )


def _binary_bad(draw: st.DrawFn) -> HostileMessage:
    event = draw(_native())
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "id": event["eventId"],
        "source": "hostile-input",
        "time": event["occurredAt"],
    }
    chosen = draw(
        st.lists(
            st.sampled_from([*attributes, "data", "datacontenttype", "subject"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    for name in chosen:
        if name in attributes and draw(st.booleans()):
            del attributes[name]
        else:
            attributes[name] = draw(_amqp_values | _wrong_values.filter(_fits_amqp))
    prefix = draw(st.sampled_from(CLOUDEVENTS_PREFIXES))
    headers: dict[Any, Any] = {f"{prefix}{name}": value for name, value in attributes.items()}
    if draw(st.booleans()):
        # Another prefix too, disagreeing: which one wins must not matter for safety.
        other = draw(st.sampled_from([p for p in CLOUDEVENTS_PREFIXES if p != prefix]))
        headers[f"{other}{draw(st.sampled_from(sorted(attributes) or ['id']))}"] = draw(
            _amqp_values
        )
    data = {key: event[key] for key in CLOUDEVENT_DATA_FIELDS if key in event}
    body = draw(
        st.sampled_from([_dumps(data), b"", b"null", b"[]"])
        | st.binary(max_size=200)
        | _json_values.map(_dumps)
    )
    content_type = draw(st.sampled_from(["application/json", None, "text/plain"]))
    kind = f"binary CloudEvent ({', '.join(chosen)})"
    return HostileMessage(kind, body, content_type, None, headers)


def _fits_amqp(value: Any) -> bool:
    """JSON values that py-amqp can put in a table: integers must fit 64 bits."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, list):
        return all(_fits_amqp(item) for item in value)
    if isinstance(value, dict):
        return all(_fits_amqp(item) for item in value.values())
    return False


def _hostile_properties(draw: st.DrawFn) -> HostileMessage:
    """A valid or invalid body under headers and properties no sane producer sends."""
    event = draw(_native())
    body = draw(st.just(_dumps(event)) | st.binary(max_size=100))
    headers: dict[Any, Any] = draw(st.dictionaries(_amqp_keys, _amqp_values, max_size=6))
    reserved = st.sampled_from(
        [
            "compression",
            "x-delivery-count",
            "x-death",
            "x-first-death-reason",
            "x-ccsync-reason",
            "x-ccsync-attempts",
            "x-ccsync-replay-count",
            "content-type",
            "cloudEvents",
            "cloudEvents:",
            "cloudEvents_",
        ]
    )
    headers.update(draw(st.dictionaries(reserved, _amqp_values, max_size=2)))
    content_encoding = draw(
        st.none()
        | st.sampled_from(["utf-8", "gzip", "binary", "latin-1", "utf-16", "base64", "identity"])
        | st.text(max_size=20)
    )
    return HostileMessage(
        f"hostile properties ({sorted(map(repr, headers))[:6]}, encoding={content_encoding!r})",
        body,
        draw(_content_types),
        content_encoding,
        headers,
    )


def _deep_headers(draw: st.DrawFn) -> HostileMessage:
    depth = draw(st.integers(1, 400))
    value: Any = draw(_amqp_scalars)
    for _ in range(depth):
        value = {"n": value} if draw(st.booleans()) else [value]
    event = draw(_native())
    body = draw(st.just(_dumps(event)) | st.just(b"{}"))
    return HostileMessage(f"nested header table ({depth} levels)", body, headers={"x-deep": value})


def _unicode_tricks(draw: st.DrawFn) -> HostileMessage:
    event = draw(_native())
    trick = draw(
        st.sampled_from(
            [
                "BOM",
                "utf-16",
                "utf-32",
                "latin-1",
                "lone surrogate",
                "NUL",
                "overlong UTF-8",
                "truncated UTF-8",
            ]
        )
    )
    where = draw(st.sampled_from(NATIVE_FIELDS))
    if trick == "BOM":
        body = b"\xef\xbb\xbf" + _dumps(event)
    elif trick in ("utf-16", "utf-32"):
        body = json.dumps(event).encode(trick)
    elif trick == "latin-1":
        event[where] = "caf\u00e9-\u00ff"
        body = json.dumps(event, ensure_ascii=False).encode("latin-1")
    elif trick == "lone surrogate":
        body = _with_raw(event, where, '"\\ud800-\\udfff-x"')
    elif trick == "NUL":
        body = _with_raw(event, where, '"a\\u0000b"')
    elif trick == "overlong UTF-8":
        body = _dumps(event).replace(b"hostile-input", b"hostile\xc0\xafinput")
    else:
        body = _dumps(event)[:-3] + b"\xe2\x82"
    return HostileMessage(f"unicode trick ({trick} in {where})", body)


def _not_an_object(draw: st.DrawFn) -> HostileMessage:
    value = draw(_json_values.filter(lambda value: not isinstance(value, dict)))
    return HostileMessage("JSON that is not an object", _dumps(value), draw(_content_types))


KINDS: dict[str, Callable[[st.DrawFn], HostileMessage]] = {
    "random bytes": _random_bytes,
    "deep JSON": _deep_json,
    "huge string": _huge_string,
    "wrong types": _wrong_types,
    "huge number": _huge_number,
    "wrong content type": _wrong_content_type,
    "structured CloudEvent": _structured_bad,
    "binary CloudEvent": _binary_bad,
    "hostile properties": _hostile_properties,
    "nested header table": _deep_headers,
    "unicode trick": _unicode_tricks,
    "not an object": _not_an_object,
}


@st.composite
def hostile_messages(draw: st.DrawFn) -> HostileMessage:
    kind = draw(st.sampled_from(sorted(KINDS)))
    return KINDS[kind](draw)


def ten_megabyte_messages() -> list[HostileMessage]:
    """A few bodies of 10 MB, ten times the worker's default limit: built, not drawn."""
    event = {
        "eventId": "ten-megabytes",
        "eventType": EVENT_TYPE,
        "occurredAt": "2024-01-01T00:00:00Z",
        "customerId": "6f1d2c9e-3a55-4b8e-9d0a-6c2b7e5f4a10",
        "resellerId": None,
        "internalIdentifier": "x" * TEN_MB,
    }
    return [
        HostileMessage("10 MB: a valid event with a huge identifier", json.dumps(event).encode()),
        HostileMessage("10 MB: zero bytes", bytes(TEN_MB), None),
        HostileMessage("10 MB: deep JSON", b"[" * (TEN_MB // 2) + b"]" * (TEN_MB // 2)),
        HostileMessage(
            "10 MB: binary CloudEvent",
            b'{"customerId": "' + b"9" * TEN_MB + b'"}',
            "application/json",
            headers={
                "cloudEvents:specversion": "1.0",
                "cloudEvents:type": EVENT_TYPE,
                "cloudEvents:id": "ten-megabytes-binary",
                "cloudEvents:source": "hostile-input",
                "cloudEvents:time": "2024-01-01T00:00:00Z",
            },
        ),
    ]


def generate_cases(count: int, seed: int) -> list[HostileMessage]:
    """``count`` hostile messages drawn by hypothesis with ``seed`` (same seed, same messages)."""
    cases: list[HostileMessage] = []
    _Ids.restart()

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(hostile_messages())
    def collect(message: HostileMessage) -> None:
        cases.append(message)

    collect()
    return cases


# --- publishing and reading back ---------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What the test keeps of a published message (10 MB bodies are not kept, their digest is)."""

    number: int
    kind: str
    description: str
    digest: str
    content_type: str | None
    header_keys: frozenset[Any]
    candidate_event_ids: frozenset[str]

    @classmethod
    def of(cls, number: int, message: HostileMessage) -> Published:
        return cls(
            number,
            message.kind,
            message.describe(),
            digest(message.body),
            message.content_type or None,
            frozenset(kept_header_keys(message.headers)),
            frozenset(candidate_event_ids(message)),
        )


def kept_header_keys(headers: dict[Any, Any]) -> set[Any]:
    """The header keys a dead letter must keep (contract section 7), as a consumer reads them."""
    kept = set()
    for key in headers:
        name = key
        if isinstance(key, bytes):
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                name = key
        if isinstance(name, str) and (
            (name.startswith("x-ccsync-") and name not in REPLAY_HEADERS) or name in BROKER_HEADERS
        ):
            continue
        kept.add(name)
    return kept


REPLAY_HEADERS = ("x-ccsync-replayed-at", "x-ccsync-replay-count")
BROKER_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
)


def digest(body: bytes | str) -> str:
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


class RawPublisher:
    """Publishes exactly the properties given (py-amqp, confirms on); survives refusals."""

    def __init__(self, broker_url: str) -> None:
        self._broker_url = broker_url
        self._connection: amqp.Connection | None = None
        self._channel: Any = None

    def _ensure(self) -> Any:
        if self._channel is None:
            self._connection = connect(self._broker_url)
            self._channel = self._connection.channel()
        return self._channel

    def publish(self, number: int, message: HostileMessage) -> str | None:
        """Publishes; returns None, or why the client or the broker refused the message."""
        properties: dict[str, Any] = {
            "delivery_mode": 2,
            "application_headers": {**message.headers, CASE_HEADER: number},
        }
        if message.content_type is not None:
            properties["content_type"] = message.content_type
        if message.content_encoding is not None:
            properties["content_encoding"] = message.content_encoding
        try:
            self._ensure().basic_publish(
                amqp.Message(message.body, **properties),
                exchange=EXCHANGE,
                routing_key=ROUTING_KEY,
            )
        except Exception as exc:  # the client could not encode it, or the broker refused it
            self.close()
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                connection.collect()


@dataclass(frozen=True)
class RawLetter:
    body_digest: str
    body_length: int
    content_type: str | None
    headers: dict[Any, Any]


def drain_dead_letters(broker_url: str, limit: int = 100_000) -> list[RawLetter]:
    """Takes every dead letter now in ``ccsync.dead-letter``, bodies as the bytes sent.

    The channel does not decode bodies by their content encoding (py-amqp would), so a dead letter
    is compared byte for byte with what the producer published.
    """
    letters: list[RawLetter] = []
    connection = connect(broker_url)
    try:
        channel = connection.Channel(connection, None, auto_decode=False)
        channel.open()
        while len(letters) < limit:
            message = channel.basic_get("ccsync.dead-letter", no_ack=True)
            if message is None:
                break
            letters.append(
                RawLetter(
                    digest(message.body),
                    len(message.body),
                    message.properties.get("content_type"),
                    dict(message.properties.get("application_headers") or {}),
                )
            )
    finally:
        connection.close()
    return letters


def purge_all(broker_url: str) -> None:
    """Empties the work queues, the dead letters and the delay ladder: a retry still waiting in
    the ladder must not come back as a stray dead letter in the next test."""
    ladder = [f"{DELAY_QUEUE_PREFIX}{level}" for level in range(DELAY_LEVELS)]
    purge(broker_url, EVENTS_QUEUE, TASKS_QUEUE, DEAD_LETTER_QUEUE, *ladder)


def settled_event_ids(log: str) -> set[str]:
    """eventIds the worker's JSON log reports applied, stale or duplicate (each line's fields)."""
    settled = set()
    for line in log.splitlines():
        if '"outcome"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("outcome") in ("applied", "stale", "duplicate"):
            settled.add(str(record.get("eventId")))
    return settled


def candidate_event_ids(message: HostileMessage) -> set[str]:
    """What the eventId of a message that happened to be valid would be."""
    found: set[str] = set()
    try:
        document = json.loads(message.body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict):
        for key in ("eventId", "id"):
            if isinstance(document.get(key), str):
                found.add(document[key])
    for key, value in message.headers.items():
        if isinstance(key, str) and key in {f"{prefix}id" for prefix in CLOUDEVENTS_PREFIXES}:
            found.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return found


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
