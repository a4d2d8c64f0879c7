"""The one redaction: every secret ccsync knows of, kept out of every text it writes anywhere.

Logs, Sentry events, health and probe answers, the console's pages and API answers, and dead-letter
exports all pass their text through a ``Redaction`` made from the settings (``from_settings``):

- every secret setting: ``CLOUDCOCKPIT_TOKEN``, ``CLOUDCOCKPIT_CLIENT_SECRET``, ``SENTRY_DSN``,
  ``CCSYNC_INGEST_TOKEN``, ``CCSYNC_INGEST_SECRET`` (and its key alone), ``CCSYNC_CONSOLE_TOKEN``,
  and the password of every broker and Redis URL (as written, and percent-decoded);
- in each of the forms a secret takes in transit: as it is, percent-encoded (any hex case, ``+``
  for a space), JSON-escaped (``\\"``, ``\\\\``, ``\\/``, ``\\uXXXX``), and both (JSON holding a
  percent-encoded form);
- the ``user:password@`` of any URL, whoever's it is.

The rule for short secrets: a secret of ``MIN_ANYWHERE_CHARS`` characters or more is masked
wherever it appears, inside words too. A shorter one (``guest``, a four-digit PIN) is masked
only where it stands as a value: the whole text, or a field's value (after ``=``, ``:``, a quote
or ``Bearer ``, and up to the end, a space, a quote or one of ``&;,@)]}``). Masking such a
secret inside ordinary words would mangle every text and say which words the secret is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Self
from urllib.parse import unquote, unquote_plus

from worker.settings import WEBHOOK_SECRET_PREFIX, Settings

#: What a removed secret is shown as.
MASK: Final = "***"
#: Secrets at least this long are masked anywhere; shorter ones only where they stand as a value.
MIN_ANYWHERE_CHARS: Final = 6

# user:password@ in any URL a text might quote.
_URL_CREDENTIALS: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
# Where a short secret's value starts and ends (fixed-width look-behinds, one per introducer).
_VALUE_START: Final = r"(?:(?<=[=:\"'])|(?<=[=:] )|(?<=[Bb]earer ))"
_VALUE_END: Final = r"(?=$|[\s\"'&;,@)\]}]|\\\")"
_JSON_ESCAPES: Final = {'"': r"\"", "\\": r"\\", "/": r"\/"}
_JSON_ESCAPE: Final = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/]))')


def mask_url_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``."""
    return _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)


def _character(char: str) -> str:
    """A pattern for one character of a secret, in any of the forms it takes in transit."""
    forms = [re.escape(char)]
    forms += ["".join(f"%{byte:02x}" for byte in char.encode())]
    if char == " ":
        forms.append(r"\+")
    if char in _JSON_ESCAPES:
        forms.append(re.escape(_JSON_ESCAPES[char]))
    units = char.encode("utf-16-be")
    forms.append("".join(rf"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)))
    # Hex digits of %XX and \uXXXX come in either case; the character itself exactly.
    return "(?:" + "|".join([forms[0], *(f"(?i:{form})" for form in forms[1:])]) + ")"


def _decoded_forms(text: str) -> Iterator[str]:
    """``text``, and what it says once JSON-unescaped and percent-decoded (the forms in which a
    secret may hide in it), each only when it differs."""
    yield text
    if "\\" in text:
        unescaped = _JSON_ESCAPE.sub(lambda m: chr(int(m[1], 16)) if m[1] else m[2], text)
        # Joins the surrogate pairs of a character beyond the BMP (JSON's \ud83d\ude00).
        text = unescaped.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        yield text
    if "%" in text or "+" in text:
        yield unquote(text)
        yield unquote_plus(text)


def _secret_pattern(secret: str) -> str:
    pattern = "".join(_character(char) for char in secret)
    if len(secret) >= MIN_ANYWHERE_CHARS:
        return pattern
    # A field's value, or the whole text.
    return rf"(?:{_VALUE_START}{pattern}{_VALUE_END}|^\s*{pattern}\s*$)"


def _url_password(url: str) -> str | None:
    # The last '@' of the location ends the credentials: a password may hold '@' itself.
    _, _, rest = url.partition("://")
    credentials, at, _ = rest.partition("/")[0].rpartition("@")
    if not at or ":" not in credentials:
        return None
    return credentials.split(":", 1)[1] or None


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value ``settings`` hold, each once, the percent-decoded URL passwords too."""
    values = [
        secret.get_secret_value()
        for secret in (
            settings.token,
            settings.client_secret,
            settings.sentry_dsn,
            settings.ingest_token,
            settings.ingest_secret,
            settings.console_token,
        )
        if secret is not None
    ]
    if settings.ingest_secret is not None:
        # The key alone, as a client library might quote it.
        values.append(settings.ingest_secret.get_secret_value().removeprefix(WEBHOOK_SECRET_PREFIX))
    for url in (*settings.broker_urls, settings.redis_url):
        password = _url_password(url)
        if password:
            # Clients use the decoded password; the URL holds its percent-encoded form.
            values += [password, unquote(password)]
    return list(dict.fromkeys(value for value in values if value))


class Redaction:
    """Texts, bytes and JSON-able structures without any of ``secrets`` (see the module's rules)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is removed whole.
        ordered = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(_secret_pattern(secret) for secret in ordered)) if ordered else None
        )
        self._secrets = ordered

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The redaction of every secret ``settings`` hold."""
        return cls(settings_secrets(settings))

    def text(self, text: str) -> str:
        if "://" in text:
            text = mask_url_credentials(text)
        # The pattern is slow (it tries every form at every position): it runs only on the few
        # texts that hold a secret once decoded.
        if self._pattern is None or not any(
            secret in form for form in _decoded_forms(text) for secret in self._secrets
        ):
            return text
        return self._pattern.sub(MASK, text)

    def bytes(self, data: bytes) -> bytes:
        """``data`` with every secret masked; bytes that are not UTF-8 are kept as they are."""
        return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def tree(self, value: Any) -> Any:
        """A JSON-able structure with every string (keys too) redacted; tuples become lists."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.tree(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(item) for item in value]
        return value
