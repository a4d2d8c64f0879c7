"""One typed settings object, read from the environment (contract section 5).

A settings file may add to the environment: ``CCSYNC_SETTINGS_FILE`` names a dotenv file whose
values apply where the environment has none.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.exceptions import ConfigurationError

ENTRA_TOKEN_URL = (
    "https://login.microsoftonline.com/4e806121-ff28-4286-ab4e-3be0a08f9ce0/oauth2/v2.0/token"
)
CLOUDCOCKPIT_SCOPE = "api://b92a36a4-feb8-4f47-a69c-29a180aa6d0a/.default"

#: About 72 minutes in all: rides out a deploy or a short outage; a dead letter shows the same hour.
DEFAULT_RETRY_DELAYS = (2.0, 10.0, 60.0, 300.0, 900.0, 3600.0)

#: Seconds a command waits for RabbitMQ before it fails with one line (``ccsync worker`` at start).
DEFAULT_BROKER_CONNECT_TIMEOUT: Final = 30.0

#: Seconds an event's occurredAt may lie ahead of the worker's clock: producers' clocks drift a
#: little; an event from further ahead would win over every real update until that time comes.
DEFAULT_MAX_CLOCK_SKEW_SECONDS: Final = 300.0

#: Seconds a relationship stays taken for an event waiting for a lane of the caller; right before
#: its call, the lock is checked and extended to cover the call (``worker.processing.ledger``).
DEFAULT_LOCK_TTL_SECONDS: Final = 60.0
#: Seconds a relationship stays held after a call that may still be applied (no answer, or a 5xx).
DEFAULT_UNANSWERED_HOLD_SECONDS: Final = 30.0
#: Seconds the worker's event loop may go without running before /livez fails: longer than
#: any pause of a healthy loop, short enough that a hung worker is restarted within minutes.
DEFAULT_LIVENESS_SECONDS: Final = 60.0
#: Calls to CloudCockpit a worker keeps in flight at once (``ccsync worker --concurrency``): enough
#: to hide a slow API's latency; the worker's CPU, not this number, bounds a fast API's throughput.
DEFAULT_CONCURRENCY: Final = 256


def default_processes() -> int:
    """Worker processes ``ccsync worker`` runs by default: one per core this process may run on
    (its CPU affinity, which a container's cpuset narrows; a CPU quota does not)."""
    return len(os.sched_getaffinity(0))


#: Events one ``ccsync ingest`` batch may hold: a producer's ordinary batch, and a bound on the work
#: (validation, publishing) one request can ask for.
DEFAULT_MAX_BATCH_EVENTS: Final = 1000

#: Broker URL schemes accepted: kombu's AMQP 0-9-1 transports. ccsync needs RabbitMQ (quorum
#: queues, publisher confirms, mandatory publishing), so kombu's other transports are refused.
BROKER_SCHEMES: Final = ("amqp", "amqps")
#: Separates the URLs of several brokers (a cluster's nodes) in one setting, as Celery and kombu do.
BROKER_URL_SEPARATOR: Final = ";"
#: Redis URL schemes redis-py's ``from_url`` accepts, Sentinel's (``redis_sentinel_url``) and
#: Redis Cluster's (``redis_cluster_url``).
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
#: The scheme of a Redis reached through Sentinel: the Sentinels' addresses and the service name.
SENTINEL_SCHEME: Final = "redis+sentinel"
#: The scheme of a Redis Cluster: some of its nodes' addresses, from which the client learns all.
CLUSTER_SCHEME: Final = "redis+cluster"
#: Schemes of CloudCockpit's API and token URLs.
HTTP_SCHEMES: Final = ("http", "https")

#: Host headers ``ccsync console`` answers by default: its own default address, by number or name.
DEFAULT_CONSOLE_ALLOWED_HOSTS: Final = ("127.0.0.1", "localhost")
#: The interface the worker's metrics and probes listen on by default: this host only.
DEFAULT_METRICS_HOST: Final = "127.0.0.1"

#: How a Standard Webhooks secret starts; the rest is the HMAC key in base64.
WEBHOOK_SECRET_PREFIX: Final = "whsec_"
#: The shortest HMAC key accepted: the 24 random bytes Standard Webhooks recommends at least.
MIN_WEBHOOK_KEY_BYTES: Final = 24
#: The shortest bearer token ``ccsync ingest`` accepts: anyone who guesses it may publish events.
MIN_TOKEN_CHARS: Final = 32
#: The least entropy of such a token, estimated from how often each of its characters occurs:
#: 43 random URL-safe characters hold about 200 bits; a word repeated or a padded name far less.
MIN_TOKEN_BITS: Final = 128
#: How to make a token strong enough, quoted by the error that refuses a weak one.
MAKE_A_TOKEN: Final = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class HttpTimeouts:
    """Seconds allowed for each phase of a call to CloudCockpit."""

    connect: float = 5.0
    read: float = 15.0
    write: float = 5.0
    pool: float = 5.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, env_ignore_empty=True
    )

    # URLs may carry passwords: kept out of repr so that logging the settings leaks nothing.
    broker_url: str = Field(
        "amqp://guest:guest@localhost:5672//", validation_alias="CCSYNC_BROKER_URL", repr=False
    )
    redis_url: str = Field(
        "redis://localhost:6379/0", validation_alias="CCSYNC_REDIS_URL", repr=False
    )
    base_url: str = Field("https://api.cloudcockpit.com", validation_alias="CLOUDCOCKPIT_BASE_URL")
    tenant: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[!-~]+$",
        validation_alias="CLOUDCOCKPIT_TENANT",
    )
    token: SecretStr | None = Field(None, validation_alias="CLOUDCOCKPIT_TOKEN")
    client_id: str | None = Field(None, validation_alias="CLOUDCOCKPIT_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, validation_alias="CLOUDCOCKPIT_CLIENT_SECRET")
    token_url: str = Field(ENTRA_TOKEN_URL, validation_alias="CLOUDCOCKPIT_TOKEN_URL")
    scope: str = Field(CLOUDCOCKPIT_SCOPE, validation_alias="CLOUDCOCKPIT_SCOPE")
    retry_delays: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULT_RETRY_DELAYS, validation_alias="CCSYNC_RETRY_DELAYS"
    )
    retry_jitter: float = Field(0.2, ge=0, le=1, validation_alias="CCSYNC_RETRY_JITTER")
    broker_connect_timeout: float = Field(
        DEFAULT_BROKER_CONNECT_TIMEOUT,
        gt=0,
        allow_inf_nan=False,
        validation_alias="CCSYNC_BROKER_CONNECT_TIMEOUT",
    )
    http_timeout: float = Field(15.0, gt=0, validation_alias="CCSYNC_HTTP_TIMEOUT")
    # The dead-letter store (docs/dead-letters.md); the URL may carry a password.
    dlq_store_url: str = Field(
        "sqlite:///ccsync-dead-letters.db", validation_alias="CCSYNC_DLQ_STORE_URL", repr=False
    )
    dlq_retention_days: float = Field(
        14.0, gt=0, allow_inf_nan=False, validation_alias="CCSYNC_DLQ_RETENTION_DAYS"
    )
    lock_ttl_seconds: float = Field(
        DEFAULT_LOCK_TTL_SECONDS,
        gt=0,
        allow_inf_nan=False,
        validation_alias="CCSYNC_LOCK_TTL_SECONDS",
    )
    unanswered_hold_seconds: float = Field(
        DEFAULT_UNANSWERED_HOLD_SECONDS,
        ge=0,
        allow_inf_nan=False,
        validation_alias="CCSYNC_UNANSWERED_HOLD_SECONDS",
    )
    max_event_bytes: int = Field(1_048_576, gt=0, validation_alias="CCSYNC_MAX_EVENT_BYTES")
    max_batch_events: int = Field(
        DEFAULT_MAX_BATCH_EVENTS, gt=0, validation_alias="CCSYNC_MAX_BATCH_EVENTS"
    )
    max_clock_skew_seconds: float = Field(
        DEFAULT_MAX_CLOCK_SKEW_SECONDS,
        ge=0,
        allow_inf_nan=False,
        validation_alias="CCSYNC_MAX_CLOCK_SKEW_SECONDS",
    )
    broker_ca_file: FilePath | None = Field(None, validation_alias="CCSYNC_BROKER_CA_FILE")
    api_ca_file: FilePath | None = Field(None, validation_alias="CLOUDCOCKPIT_CA_FILE")
    sentry_dsn: SecretStr | None = Field(None, validation_alias="SENTRY_DSN")
    # The one shared secret operators log in to ``ccsync console`` with; the console refuses to
    # start without it.
    console_token: SecretStr | None = Field(None, validation_alias="CCSYNC_CONSOLE_TOKEN")
    # Peers whose X-Forwarded-For and X-Forwarded-Proto the console believes (addresses or
    # networks); none by default, so no local process can pose as another client.
    console_trusted_proxies: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None, validation_alias="CCSYNC_CONSOLE_TRUSTED_PROXIES"
    )
    # Host headers the console answers (its names as operators type them): a page of another
    # site whose name was rebound to the console's address is refused.
    console_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_CONSOLE_ALLOWED_HOSTS, validation_alias="CCSYNC_CONSOLE_ALLOWED_HOSTS"
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, validation_alias="CCSYNC_METRICS_PORT")
    # Loopback by default: the probes and metrics say much about the deployment; a container
    # scraped or probed from outside sets 0.0.0.0.
    metrics_host: str = Field(
        DEFAULT_METRICS_HOST, min_length=1, validation_alias="CCSYNC_METRICS_HOST"
    )
    # /livez fails once the worker's event loop has not run for this long (a hung worker).
    liveness_seconds: float = Field(
        DEFAULT_LIVENESS_SECONDS,
        gt=0,
        allow_inf_nan=False,
        validation_alias="CCSYNC_LIVENESS_SECONDS",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", validation_alias="CCSYNC_LOG_FORMAT"
    )
    # ``ccsync ingest``: who may post events (a bearer token, a Standard Webhooks secret, or both).
    ingest_token: SecretStr | None = Field(None, validation_alias="CCSYNC_INGEST_TOKEN")
    ingest_secret: SecretStr | None = Field(None, validation_alias="CCSYNC_INGEST_SECRET")
    # Calls a second per tenant the whole fleet makes to CloudCockpit (through Redis); None: no
    # limit, and a 429 slows the tenant's calls at a rate learned from it.
    api_rate_limit: float | None = Field(
        None, gt=0, allow_inf_nan=False, validation_alias="CCSYNC_API_RATE_LIMIT"
    )
    # Replicas every ledger write must reach (Redis WAIT) before it counts as done: 0 for none.
    redis_wait_replicas: int = Field(0, ge=0, validation_alias="CCSYNC_REDIS_WAIT_REPLICAS")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        schemes = {_check_url(url, BROKER_SCHEMES).scheme for url in split_broker_urls(value)}
        if len(schemes) > 1:
            raise ValueError("every URL of the list must use the same scheme, amqp:// or amqps://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value.lower().startswith(f"{SENTINEL_SCHEME}://"):
            redis_sentinel_url(value)  # raises ValueError naming the expected form
        elif value.lower().startswith(f"{CLUSTER_SCHEME}://"):
            redis_cluster_url(value)  # raises ValueError naming the expected form
        else:
            _check_url(value, REDIS_SCHEMES)
        return value

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = _check_url(value, HTTP_SCHEMES)
        if not parts.hostname:
            raise ValueError(f"must name a host, like {parts.scheme}://api.example.com")
        return value

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            parts = _comma_list(value, example="2,10,60")
            try:
                delays = tuple(float(part) for part in parts)
            except ValueError:
                raise ValueError("must be seconds separated by commas, like 2,10,60") from None
            if not all(math.isfinite(delay) and delay >= 0 for delay in delays):
                raise ValueError("delays must be finite and not negative")
            return delays
        return value

    @field_validator("console_trusted_proxies", "console_allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return _comma_list(value, example="a,b") if isinstance(value, str) else value

    @field_validator("console_trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for proxy in value or ():
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    "give IP addresses or networks separated by commas, like "
                    "10.0.0.5,192.168.0.0/24 (names and * are not accepted)"
                ) from None
        return value

    @field_validator("ingest_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_secret_key(value)  # raises ValueError naming the expected form
        return value

    @field_validator("ingest_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            require_strong_token(value)  # raises ValueError saying how to make one
        return value

    @model_validator(mode="after")
    def _credentials_not_contradictory(self) -> Self:
        if self.token is not None and (self.client_id or self.client_secret):
            raise ValueError(
                "CLOUDCOCKPIT_TOKEN and CLOUDCOCKPIT_CLIENT_ID/CLOUDCOCKPIT_CLIENT_SECRET are "
                "both set: choose a static token or the client-credentials flow"
            )
        if bool(self.client_id) != bool(self.client_secret):
            missing = "CLOUDCOCKPIT_CLIENT_SECRET" if self.client_id else "CLOUDCOCKPIT_CLIENT_ID"
            raise ValueError(f"{missing} is required with the client-credentials flow")
        return self

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """Each broker URL of ``broker_url``: one, or the nodes of a cluster, in order."""
        return split_broker_urls(self.broker_url)

    @property
    def timeouts(self) -> HttpTimeouts:
        return HttpTimeouts(read=self.http_timeout)

    def require_ingest_credentials(self) -> None:
        """Fail at start when ``ccsync ingest`` could authenticate no request."""
        if self.ingest_token is None and self.ingest_secret is None:
            raise ConfigurationError(
                "CCSYNC_INGEST_TOKEN or CCSYNC_INGEST_SECRET (or both) is required to serve "
                "ccsync ingest: without one, nobody could be allowed to post events"
            )

    def require_api_credentials(self) -> None:
        """Fail at start, not at the first event, when the worker could not call the API."""
        if self.token is None and self.client_id is None:
            raise ConfigurationError(
                "CLOUDCOCKPIT_TOKEN (or CLOUDCOCKPIT_CLIENT_ID and CLOUDCOCKPIT_CLIENT_SECRET) "
                "is required to call CloudCockpit"
            )


def _comma_list(value: str, *, example: str) -> tuple[str, ...]:
    """The items of a comma-separated setting; ValueError on an empty item."""
    items = tuple(item.strip() for item in value.split(","))
    if not all(items):
        raise ValueError(f"an empty item: give values separated by commas, like {example}")
    return items


def webhook_secret_key(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``: the decoded base64, its
    ``=`` padding optional (as in the Standard Webhooks libraries, which add what is missing).

    Raises ValueError saying the expected form, never quoting the secret.
    """
    text = secret.get_secret_value()
    if not text.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"must be {WEBHOOK_SECRET_PREFIX} followed by base64 (Standard Webhooks)")
    encoded = text.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the part after {WEBHOOK_SECRET_PREFIX} is not base64") from None
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ValueError(f"the key must be at least {MIN_WEBHOOK_KEY_BYTES} bytes")
    return key


def token_bits(token: str) -> float:
    """The entropy of ``token`` in bits, estimated from its characters' frequencies (Shannon): an
    upper bound for a token a person made up, close to the truth for a random one."""
    length = len(token)
    return -sum(count * math.log2(count / length) for count in Counter(token).values())


def require_strong_token(token: SecretStr) -> None:
    """Return when ``token`` has ``MIN_TOKEN_CHARS`` characters and ``MIN_TOKEN_BITS`` bits of
    estimated entropy; else raise ValueError saying how to make one, quoting nothing of it."""
    text = token.get_secret_value()
    if len(text) < MIN_TOKEN_CHARS or token_bits(text) < MIN_TOKEN_BITS:
        raise ValueError(
            f"too weak a token: at least {MIN_TOKEN_CHARS} random characters "
            f"({MIN_TOKEN_BITS} bits) are needed; make one with {MAKE_A_TOKEN}"
        )


def split_broker_urls(value: str) -> tuple[str, ...]:
    """The URLs of a ``;``-separated broker list (kombu's failover form); raises ValueError on an
    empty item, quoting nothing of the URLs (they may hold passwords)."""
    urls = tuple(url.strip() for url in value.split(BROKER_URL_SEPARATOR))
    if not all(urls):
        raise ValueError("an empty item: give broker URLs separated by ';'")
    return urls


@dataclass(frozen=True)
class SentinelUrl:
    """What ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`` says:
    the Sentinels to ask, the service they monitor, and the database and credentials of the
    Redis servers they name."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


#: The port of a Sentinel named without one.
DEFAULT_SENTINEL_PORT: Final = 26379


def redis_sentinel_url(value: str) -> SentinelUrl:
    """Parses a ``redis+sentinel://`` URL; raises ValueError saying the expected form, quoting
    nothing of the URL (it may hold a password)."""
    form = f"expected {SENTINEL_SCHEME}://[:password@]host:port[,host:port]/service_name[/db]"
    hosts, path, username, password = _split_hosts_url(value, SENTINEL_SCHEME, form)
    sentinels = _host_list(hosts, DEFAULT_SENTINEL_PORT, what="a Sentinel", form=form)
    service, _, db = path.strip("/").partition("/")
    if not service or (db and not db.isdigit()):
        raise ValueError(f"no service name, or a database that is not a number; {form}")
    return SentinelUrl(
        tuple(sentinels), unquote(service), int(db or 0), username=username, password=password
    )


@dataclass(frozen=True)
class ClusterUrl:
    """What ``redis+cluster://[[user]:password@]host:port[,host:port…][/0]`` says: nodes of the
    cluster to start from (the client learns the rest from them), and the nodes' credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)


#: The port of a Redis Cluster node named without one.
DEFAULT_REDIS_PORT: Final = 6379


def redis_cluster_url(value: str) -> ClusterUrl:
    """Parses a ``redis+cluster://`` URL; raises ValueError saying the expected form, quoting
    nothing of the URL (it may hold a password). A cluster has database 0 only: ``/0`` may be
    given, no other."""
    form = f"expected {CLUSTER_SCHEME}://[:password@]host:port[,host:port][/0]"
    hosts, path, username, password = _split_hosts_url(value, CLUSTER_SCHEME, form)
    nodes = _host_list(hosts, DEFAULT_REDIS_PORT, what="a node", form=form)
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only; {form}")
    return ClusterUrl(tuple(nodes), username=username, password=password)


def _split_hosts_url(value: str, scheme: str, form: str) -> tuple[str, str, str | None, str | None]:
    """The host list, the path, the user name and the password of a ``scheme://`` URL that names
    several hosts (which ``urlsplit`` cannot read)."""
    given, separator, rest = value.partition("://")
    if not separator or given.lower() != scheme:
        raise ValueError(form)
    location, _, path = rest.partition("/")
    credentials, at, hosts = location.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    return hosts, path, username, password


def _host_list(hosts: str, default_port: int, *, what: str, form: str) -> list[tuple[str, int]]:
    """``host:port,host:port…`` as (host, port) pairs; ValueError naming ``what`` is wrong."""
    found = []
    for host in hosts.split(","):
        name, colon, port = host.strip().rpartition(":")
        if not colon:
            name, port = host.strip(), ""
        name = name.strip("[]")
        if not name or (colon and not port.isdigit()):
            raise ValueError(f"{what} without a host or with a port that is not a number; {form}")
        found.append((name, int(port) if port else default_port))
    return found


def _check_url(value: str, schemes: tuple[str, ...]) -> SplitResult:
    """The parts of ``value``, a URL of one of ``schemes`` whose port, if any, is a number.

    Raises ValueError saying what is wrong. The message quotes nothing of the URL but its scheme:
    the rest may hold a password (even where a parser takes it for a host or a port).
    """
    expected = ", ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (reading the port is the check: it raises on a bad one)
    except ValueError:
        raise ValueError(f"not a URL, or its port is not a number; expected {expected}") from None
    if not parts.scheme:
        raise ValueError(f"not a URL (no scheme); expected {expected}")
    if parts.scheme not in schemes:  # urlsplit gives the scheme in lower case
        raise ValueError(f"scheme {parts.scheme!r} is not supported; expected {expected}")
    return parts


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning any problem into one line that names the variable."""
    env_file = os.environ.get("CCSYNC_SETTINGS_FILE")
    if env_file and not Path(env_file).is_file():
        raise ConfigurationError(f"CCSYNC_SETTINGS_FILE: {env_file} does not exist")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        first = exc.errors()[0]
        names = [str(part) for part in first.get("loc", ()) if part]
        where = names[0] if names else "settings"
        message = first.get("msg", "invalid").removeprefix("Value error, ")
        raise ConfigurationError(f"{where}: {message}" if names else message) from None
