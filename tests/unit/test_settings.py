"""Configuration (contract section 5): defaults, parsing, contradictions, secrets, settings file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.exceptions import ConfigurationError
from worker.settings import Settings, load_settings, redis_cluster_url

DOCS = Path(__file__).resolve().parents[2] / "docs"
API_DOC = DOCS / "cloudcockpit-api.md"
CONTRACT = DOCS / "contract.md"

TOKEN = "static-tok-9f8e7d6c5b4a"
CLIENT_SECRET = "cc-secret-Zq81~xx.Yw"
SENTRY_DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"


pytestmark = pytest.mark.usefixtures("clean_environment")


def configuration_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message, "a configuration problem is reported in one line"
    return message


# --- defaults --------------------------------------------------------------------------------


def test_given_no_variables_then_the_defaults_of_contract_section_5_apply() -> None:
    settings = load_settings()

    assert settings.broker_url == "amqp://guest:guest@localhost:5672//"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.base_url == "https://api.cloudcockpit.com"
    assert settings.tenant is None
    assert settings.token is None
    assert settings.client_id is None
    assert settings.client_secret is None
    assert settings.sentry_dsn is None


def test_given_no_variables_then_token_url_and_scope_are_the_documented_ones() -> None:
    settings = load_settings()
    documented = API_DOC.read_text(encoding="utf-8")

    assert settings.token_url == (
        "https://login.microsoftonline.com/4e806121-ff28-4286-ab4e-3be0a08f9ce0/oauth2/v2.0/token"
    )
    assert settings.scope == "api://b92a36a4-feb8-4f47-a69c-29a180aa6d0a/.default"
    assert f"`{settings.token_url}`" in documented
    assert f"scope={settings.scope}" in documented


def documented_defaults() -> dict[str, str]:
    """Variable -> the default column of the contract's configuration table (section 5); the
    ``OTEL_*`` rows are the OpenTelemetry SDK's, not ``Settings``'."""
    section = CONTRACT.read_text("utf-8").split("## 5.", 1)[1].split("\n## ", 1)[0]
    defaults: dict[str, str] = {}
    for row in section.splitlines():
        if row.startswith("| `"):
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                if not name.startswith("OTEL_"):
                    defaults[name] = cells[1]
    assert "CCSYNC_BROKER_URL" in defaults, "the contract's table could not be read"
    return defaults


def _as_documented(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_as_documented(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_given_no_variables_then_each_default_is_the_one_the_contract_documents() -> None:
    settings = load_settings()
    fields = {info.validation_alias: name for name, info in Settings.model_fields.items()}

    for variable, default in documented_defaults().items():
        value = getattr(settings, fields[variable])
        literal = re.fullmatch(r"`([^`]*)`", default)
        if default.startswith("none"):
            assert value is None, f"{variable}: documented without a default"
        elif literal:
            assert _as_documented(value) == literal[1], f"{variable}: documented {default}"
        else:  # described in words: the token URL and scope, checked against the API doc above
            assert variable in ("CLOUDCOCKPIT_TOKEN_URL", "CLOUDCOCKPIT_SCOPE"), variable


def test_given_no_retry_delays_then_the_default_is_a_growing_ladder_of_positive_delays() -> None:
    delays = load_settings().retry_delays

    assert len(delays) >= 1
    assert all(delay > 0 for delay in delays)
    assert list(delays) == sorted(delays)


def test_given_no_variables_then_the_worker_waits_30_seconds_for_the_broker() -> None:
    assert load_settings().broker_connect_timeout == 30


def test_given_each_variable_set_then_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "CCSYNC_BROKER_URL": "amqp://ccsync@rabbit:5672/prod",
        "CCSYNC_REDIS_URL": "redis://redis:6379/3",
        "CLOUDCOCKPIT_BASE_URL": "http://127.0.0.1:8080",
        "CLOUDCOCKPIT_TENANT": "portal.example.com",
        "CLOUDCOCKPIT_CLIENT_ID": "client-1",
        "CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET,
        "CLOUDCOCKPIT_TOKEN_URL": "http://127.0.0.1:8080/oauth2/v2.0/token",
        "CLOUDCOCKPIT_SCOPE": "api://sandbox/.default",
        "SENTRY_DSN": SENTRY_DSN,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert settings.broker_url == values["CCSYNC_BROKER_URL"]
    assert settings.redis_url == values["CCSYNC_REDIS_URL"]
    assert settings.base_url == values["CLOUDCOCKPIT_BASE_URL"]
    assert settings.tenant == values["CLOUDCOCKPIT_TENANT"]
    assert settings.client_id == "client-1"
    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == CLIENT_SECRET
    assert settings.token_url == values["CLOUDCOCKPIT_TOKEN_URL"]
    assert settings.scope == values["CLOUDCOCKPIT_SCOPE"]
    assert settings.sentry_dsn is not None
    assert settings.sentry_dsn.get_secret_value() == SENTRY_DSN


# --- CCSYNC_RETRY_DELAYS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("1,2,3", (1.0, 2.0, 3.0)),
        (" 1 , 2 ,3 ", (1.0, 2.0, 3.0)),
        ("0.5,30", (0.5, 30.0)),
        ("0", (0.0,)),
        ("5", (5.0,)),
    ],
)
def test_given_retry_delays_as_comma_separated_seconds_then_they_are_parsed(
    monkeypatch: pytest.MonkeyPatch, text: str, delays: tuple[float, ...]
) -> None:
    monkeypatch.setenv("CCSYNC_RETRY_DELAYS", text)

    assert load_settings().retry_delays == delays


@pytest.mark.parametrize("text", ["1,x,3", "1;2;3", "abc", "1 2", "[1, 2]"])
def test_given_retry_delays_not_numbers_then_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    assert "CCSYNC_RETRY_DELAYS" in configuration_error(monkeypatch, CCSYNC_RETRY_DELAYS=text)


@pytest.mark.parametrize("text", ["nan", "1,inf", "NaN,2", "-inf"])
def test_given_a_retry_delay_that_is_not_a_finite_number_then_configuration_error(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Given "nan" or "inf" seconds, which cannot be waited, Then the worker refuses them."""
    assert "CCSYNC_RETRY_DELAYS" in configuration_error(monkeypatch, CCSYNC_RETRY_DELAYS=text)


@pytest.mark.parametrize(
    ("text", "fault"),
    [("-1", "negative"), ("1,-2,3", "negative")]
    + [(text, "empty item") for text in [",", "1,,3", "1,2,", ",5", " , "]],
)
def test_given_a_negative_or_empty_retry_delay_then_configuration_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, text: str, fault: str
) -> None:
    """Given "-1", or "," (which once meant no retry at all), Then the worker refuses it,
    naming the variable and what is wrong."""
    message = configuration_error(monkeypatch, CCSYNC_RETRY_DELAYS=text)

    assert "CCSYNC_RETRY_DELAYS" in message
    assert fault in message


# --- URLs and timeouts -----------------------------------------------------------------------

URL_PASSWORD = "url-pw-4c3b2a"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("CCSYNC_BROKER_URL", "amqp://ccsync:pw@rabbit:5672/prod"),
        ("CCSYNC_BROKER_URL", "amqps://rabbit.example.com//"),
        ("CCSYNC_REDIS_URL", "rediss://:pw@redis:6380/1"),
        ("CCSYNC_REDIS_URL", "unix:///run/redis.sock?db=2"),
        ("CCSYNC_REDIS_URL", "redis+cluster://:pw@node1:7000,node2:7001,node3"),
        ("CCSYNC_REDIS_URL", "redis+cluster://node1:7000/0"),
        ("CLOUDCOCKPIT_BASE_URL", "https://api.example.com"),
        ("CLOUDCOCKPIT_TOKEN_URL", "http://127.0.0.1:8080/oauth2/v2.0/token"),
    ],
)
def test_given_a_url_of_a_supported_scheme_then_it_is_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    field = {info.validation_alias: name for name, info in Settings.model_fields.items()}

    assert getattr(load_settings(), field[variable]) == url


@pytest.mark.parametrize(
    ("variable", "url", "expected"),
    [
        ("CCSYNC_BROKER_URL", f"foo://u:{URL_PASSWORD}@rabbit//", "scheme 'foo'"),
        ("CCSYNC_BROKER_URL", f"redis://:{URL_PASSWORD}@redis:6379/0", "amqp://, amqps://"),
        ("CCSYNC_BROKER_URL", f"amqp://u:{URL_PASSWORD}@rabbit:56x2//", "port"),
        ("CCSYNC_BROKER_URL", f"u:{URL_PASSWORD}@rabbit", "amqp://"),
        ("CCSYNC_REDIS_URL", f"http://:{URL_PASSWORD}@redis:6379/0", "redis://"),
        ("CCSYNC_REDIS_URL", f"redis+cluster://:{URL_PASSWORD}@n1:7000/3", "database 0 only"),
        ("CCSYNC_REDIS_URL", f"redis+cluster://:{URL_PASSWORD}@n1:70x0,n2", "a node without"),
        ("CCSYNC_REDIS_URL", f"redis+cluster://:{URL_PASSWORD}@n1:7000,,n2", "a node without"),
        ("CLOUDCOCKPIT_BASE_URL", "notaurl", "no scheme"),
        ("CLOUDCOCKPIT_BASE_URL", "https://", "host"),
        ("CLOUDCOCKPIT_BASE_URL", "ftp://api.example.com", "https://"),
        ("CLOUDCOCKPIT_TOKEN_URL", "login.example.com/token", "no scheme"),
    ],
)
def test_given_a_url_ccsync_cannot_use_then_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, expected: str
) -> None:
    message = configuration_error(monkeypatch, **{variable: url})

    assert message.startswith(f"{variable}: ")
    assert expected in message
    assert URL_PASSWORD not in message


def test_each_accepted_broker_scheme_is_a_transport_kombu_knows() -> None:
    from kombu.transport import TRANSPORT_ALIASES

    from worker.settings import BROKER_SCHEMES

    assert set(BROKER_SCHEMES) <= set(TRANSPORT_ALIASES)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_given_a_broker_connect_timeout_that_is_not_positive_seconds_then_configuration_error(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    message = configuration_error(monkeypatch, CCSYNC_BROKER_CONNECT_TIMEOUT=text)

    assert message.startswith("CCSYNC_BROKER_CONNECT_TIMEOUT: ")


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client_env",
    [
        {"CLOUDCOCKPIT_CLIENT_ID": "client-1", "CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET},
        {"CLOUDCOCKPIT_CLIENT_ID": "client-1"},
        {"CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET},
    ],
    ids=["id-and-secret", "id-only", "secret-only"],
)
def test_given_a_static_token_and_client_credentials_then_configuration_error(
    monkeypatch: pytest.MonkeyPatch, client_env: dict[str, str]
) -> None:
    message = configuration_error(monkeypatch, CLOUDCOCKPIT_TOKEN=TOKEN, **client_env)

    assert "CLOUDCOCKPIT_TOKEN" in message
    assert "CLOUDCOCKPIT_CLIENT_ID" in message
    assert TOKEN not in message
    assert CLIENT_SECRET not in message


def test_given_a_client_id_without_secret_then_configuration_error_naming_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = configuration_error(monkeypatch, CLOUDCOCKPIT_CLIENT_ID="client-1")

    assert "CLOUDCOCKPIT_CLIENT_SECRET" in message


def test_given_a_client_secret_without_id_then_configuration_error_naming_the_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = configuration_error(monkeypatch, CLOUDCOCKPIT_CLIENT_SECRET=CLIENT_SECRET)

    assert "CLOUDCOCKPIT_CLIENT_ID" in message
    assert CLIENT_SECRET not in message


def test_given_no_credentials_when_required_then_configuration_error_naming_the_variables() -> None:
    settings = load_settings()

    with pytest.raises(ConfigurationError) as caught:
        settings.require_api_credentials()

    assert "CLOUDCOCKPIT_TOKEN" in str(caught.value)
    assert "CLOUDCOCKPIT_CLIENT_ID" in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"CLOUDCOCKPIT_TOKEN": TOKEN},
        {"CLOUDCOCKPIT_CLIENT_ID": "client-1", "CLOUDCOCKPIT_CLIENT_SECRET": CLIENT_SECRET},
    ],
    ids=["static-token", "client-credentials"],
)
def test_given_either_kind_of_credentials_when_required_then_no_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    load_settings().require_api_credentials()  # raises if the credentials were not recognised


# --- secrets ---------------------------------------------------------------------------------


def test_given_secrets_set_then_repr_and_str_of_settings_never_show_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDCOCKPIT_TOKEN", TOKEN)
    monkeypatch.setenv("SENTRY_DSN", SENTRY_DSN)
    with_token = load_settings()
    monkeypatch.delenv("CLOUDCOCKPIT_TOKEN")
    monkeypatch.setenv("CLOUDCOCKPIT_CLIENT_ID", "client-1")
    monkeypatch.setenv("CLOUDCOCKPIT_CLIENT_SECRET", CLIENT_SECRET)
    with_client = load_settings()

    for settings in (with_token, with_client):
        shown = repr(settings) + str(settings) + repr(settings.model_dump())
        assert TOKEN not in shown
        assert CLIENT_SECRET not in shown
        assert SENTRY_DSN not in shown
        assert "0123456789abcdef0123456789abcdef" not in shown
    assert with_token.token is not None
    assert with_token.token.get_secret_value() == TOKEN


# --- CCSYNC_SETTINGS_FILE --------------------------------------------------------------------


def test_given_a_settings_file_then_it_adds_values_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_file = tmp_path / "ccsync.env"
    settings_file.write_text(
        "CLOUDCOCKPIT_TENANT=file.example.com\n"
        "CCSYNC_RETRY_DELAYS=5,6\n"
        "CLOUDCOCKPIT_BASE_URL=https://from-file.example.com\n"
        f"CLOUDCOCKPIT_TOKEN={TOKEN}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CCSYNC_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("CLOUDCOCKPIT_BASE_URL", "https://from-env.example.com")

    settings = load_settings()

    assert settings.tenant == "file.example.com"
    assert settings.retry_delays == (5.0, 6.0)
    assert settings.token is not None
    assert settings.token.get_secret_value() == TOKEN
    assert settings.base_url == "https://from-env.example.com"


def test_given_a_bad_value_in_the_settings_file_then_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_file = tmp_path / "ccsync.env"
    settings_file.write_text("CCSYNC_RETRY_DELAYS=soon\n", encoding="utf-8")

    message = configuration_error(monkeypatch, CCSYNC_SETTINGS_FILE=str(settings_file))

    assert "CCSYNC_RETRY_DELAYS" in message


def test_given_a_settings_file_that_does_not_exist_then_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A mistyped path must stop the worker, not run it silently on defaults (guest@localhost)."""
    missing = tmp_path / "no-such-file.env"

    message = configuration_error(monkeypatch, CCSYNC_SETTINGS_FILE=str(missing))

    assert "CCSYNC_SETTINGS_FILE" in message


def test_given_no_settings_file_variable_then_a_dotenv_in_the_working_directory_is_not_read(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("CLOUDCOCKPIT_TENANT=stray.example.com\n", encoding="utf-8")

    assert load_settings().tenant is None


def test_given_settings_built_directly_then_the_http_read_timeout_follows_the_setting() -> None:
    settings = Settings(CCSYNC_HTTP_TIMEOUT="7.5")

    assert settings.timeouts.read == 7.5
    assert settings.timeouts.connect > 0


def test_given_a_cluster_url_then_its_nodes_and_credentials_are_read() -> None:
    parsed = redis_cluster_url("redis+cluster://ops:p%40ss@node1:7000,[::1]:7001,node3")

    assert parsed.nodes == (("node1", 7000), ("::1", 7001), ("node3", 6379))
    assert (parsed.username, parsed.password) == ("ops", "p@ss")


# --- the console's proxies and hosts, the metrics' interface -----------------------------------


def test_given_no_variables_then_nothing_is_trusted_and_metrics_stay_on_loopback() -> None:
    settings = load_settings()
    assert settings.console_trusted_proxies is None
    assert settings.console_allowed_hosts == ("127.0.0.1", "localhost")
    assert settings.metrics_host == "127.0.0.1"


def test_given_trusted_proxies_and_hosts_then_they_are_read_as_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCSYNC_CONSOLE_TRUSTED_PROXIES", " 10.0.0.5, 192.168.0.0/24 ")
    monkeypatch.setenv("CCSYNC_CONSOLE_ALLOWED_HOSTS", "console.example.com")
    settings = load_settings()
    assert settings.console_trusted_proxies == ("10.0.0.5", "192.168.0.0/24")
    assert settings.console_allowed_hosts == ("console.example.com",)


@pytest.mark.parametrize("value", ["proxy.example.com", "10.0.0.5,", "*"])
def test_given_a_trusted_proxy_that_is_no_address_then_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CCSYNC_CONSOLE_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigurationError, match="CCSYNC_CONSOLE_TRUSTED_PROXIES"):
        load_settings()


def test_given_an_api_rate_limit_then_it_is_read_in_calls_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCSYNC_API_RATE_LIMIT", "12.5")
    assert load_settings().api_rate_limit == 12.5


@pytest.mark.parametrize("text", ["0", "-1", "inf", "fast"])
def test_given_an_api_rate_limit_not_a_positive_number_then_configuration_error(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    assert "CCSYNC_API_RATE_LIMIT" in configuration_error(monkeypatch, CCSYNC_API_RATE_LIMIT=text)
