"""``ccsync health``: can this worker do its job right now? For probes and for operators.

Four parts, each answered on its own line: the broker (an AMQP connection opens; the messages
ready on the live and backfill lanes), Redis (PING),
the token (a static one is set, or the client-credentials flow yields one) and the API (CloudCockpit
answers HTTP at all: any status counts, since a probe must not depend on a customer existing).
The parts are checked in parallel, so a probe waits for the slowest one, not for their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.amqp.connection import broker_connection
from worker.amqp.queue_depths import read_queue
from worker.cloudcockpit.client import make_http_client, make_token_source
from worker.constants import BACKFILL_QUEUE, EVENTS_QUEUE
from worker.exceptions import CcsyncError
from worker.observability.redaction import Redaction
from worker.processing.ledger.client import redis_client
from worker.settings import Settings

PARTS: Final = ("broker", "redis", "token", "api")
#: Seconds each check may take unless the caller says otherwise.
DEFAULT_TIMEOUT: Final = 5.0
#: The longest detail a failed check reports.
MAX_DETAIL_CHARS: Final = 200


@dataclass(frozen=True)
class CheckResult:
    part: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        if self.ok:
            return f"{self.part} ok" + (f" ({self.detail})" if self.detail else "")
        return f"{self.part} FAILED: {self.detail or 'unknown error'}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    kind = type(exc).__name__
    detail = f"{kind}: {text}" if text and text != kind else kind
    return detail[:MAX_DETAIL_CHARS]


def check_broker(settings: Settings, timeout: float) -> CheckResult:
    connection = broker_connection(settings, connect_timeout=timeout)
    try:
        # One attempt: a probe reports the broker as it is now, it does not wait for it.
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=timeout
        )
        version = connection.connection.server_properties.get("version")
        lanes = {queue: read_queue(connection, queue) for queue in (EVENTS_QUEUE, BACKFILL_QUEUE)}
    except Exception as exc:
        return CheckResult("broker", False, _describe(exc))
    finally:
        connection.release()
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    details = [f"RabbitMQ {version}"] if version else []
    details += [
        f"{queue} {'not declared' if state is None else f'{state.messages} ready'}"
        for queue, state in lanes.items()
    ]
    return CheckResult("broker", True, "; ".join(details))


def check_redis(settings: Settings, timeout: float) -> CheckResult:
    client = redis_client(settings.redis_url, timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except Exception as exc:
        return CheckResult("redis", False, _describe(exc))
    finally:
        client.close()
    return CheckResult("redis", True)


def check_token(settings: Settings, http: httpx.Client) -> CheckResult:
    if settings.token is not None:
        return CheckResult("token", True, "static token")
    try:
        make_token_source(settings, http).token()
    except CcsyncError as exc:
        return CheckResult("token", False, str(exc)[:MAX_DETAIL_CHARS])
    except Exception as exc:
        return CheckResult("token", False, _describe(exc))
    return CheckResult("token", True, "client credentials")


def check_api(settings: Settings, http: httpx.Client) -> CheckResult:
    try:
        response = http.get(settings.base_url)
    except httpx.HTTPError as exc:
        where = _origin(settings.base_url)
        return CheckResult("api", False, f"no answer from {where}: {_describe(exc)}")
    return CheckResult("api", True, f"HTTP {response.status_code}")


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "CLOUDCOCKPIT_BASE_URL"
    return f"{parts.scheme}://{host}{port}" if parts.scheme and host else "CLOUDCOCKPIT_BASE_URL"


def run_checks(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """Every part's result, in the order of ``PARTS``, with no secret in any detail."""
    redact = Redaction.from_settings(settings)
    with make_http_client(settings) as http:
        http.timeout = httpx.Timeout(timeout)
        checks: list[Callable[[], CheckResult]] = [
            lambda: check_broker(settings, timeout),
            lambda: check_redis(settings, timeout),
            lambda: check_token(settings, http),
            lambda: check_api(settings, http),
        ]
        with ThreadPoolExecutor(
            max_workers=len(checks), thread_name_prefix="ccsync-health"
        ) as pool:
            results = list(pool.map(_guarded, PARTS, checks))
    return [CheckResult(r.part, r.ok, redact.text(r.detail)) for r in results]


def _guarded(part: str, check: Callable[[], CheckResult]) -> CheckResult:
    # A bug in one check must still leave a line naming its part, never a traceback.
    try:
        return check()
    except Exception as exc:
        return CheckResult(part, False, _describe(exc))


def failing_parts(results: Iterable[CheckResult]) -> list[str]:
    return [result.part for result in results if not result.ok]
