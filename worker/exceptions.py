"""Every failure ccsync knows, named by what the consumer must do about it.

    CcsyncError
    ├── ConfigurationError      stop at start: a setting is missing or contradictory
    ├── BrokerUnreachable       stop: RabbitMQ could not be reached in time, or refused us
    ├── InputError              stop: a file or value given to a command cannot be used
    ├── NoQueueBound            stop: a published event would be dropped (nothing consumes it)
    ├── InvalidEvent            dead-letter at once as ``invalid-event``
    ├── RelationshipBusy        another worker holds the customer: try again soon, no attempt used
    └── ApiError                ``status``: the HTTP status, when there was one
        ├── ApiRejected         dead-letter at once as ``api-rejected`` (the API said no: 4xx)
        └── TransientFailure    retry with backoff; dead-letter as ``retries-exhausted`` at last
            ├── ApiUnavailable      5xx, timeouts, refused or dropped connections
            ├── RateLimited         429: wait at least ``retry_after`` seconds
            ├── TokenRejected       401 even with a freshly renewed token
            ├── TokenUnavailable    the token endpoint did not give a token
            ├── LedgerUnavailable   Redis (the ledger of applied events) cannot be reached
            └── LeaseExpired        the call's lease ran out before it was sent: nothing was
                                    sent; try again soon, no attempt used

A handler catches ``TransientFailure`` to retry and ``ApiRejected``/``InvalidEvent`` to dead-letter;
anything else escaping is a bug, and the message is redelivered until the delivery limit.
A command (``worker.cli``) turns every ``CcsyncError`` into one line and a non-zero exit.
"""

from __future__ import annotations


class CcsyncError(Exception):
    """Base of every error ccsync raises on purpose."""


class ConfigurationError(CcsyncError):
    """A setting is missing or contradictory; the message names the variable."""


class BrokerUnreachable(CcsyncError):
    """RabbitMQ did not answer in time, or refused the connection; the message names the broker's
    URL with its password masked, and the last error."""


class InputError(CcsyncError):
    """A file or value given to a command cannot be used; the message names it and why."""


class NoQueueBound(CcsyncError):
    """A published event would be dropped: no queue is bound to the exchange for its key."""


class InvalidEvent(CcsyncError):
    """The message is not a valid event of this system: dead-letter it, never retry."""


class ApiError(CcsyncError):
    """CloudCockpit answered or failed to; ``status`` is the HTTP status when there was one."""

    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


class ApiRejected(ApiError):
    """CloudCockpit refused the change (400, 403, 404, other 4xx): retrying cannot help."""


class TransientFailure(ApiError):
    """A failure that may pass: retry later."""

    retry_after: float | None = None


class ApiUnavailable(TransientFailure):
    """5xx, timeout, or no usable connection.

    ``unsettled``: the request was sent and nothing proves it was not applied (no answer came,
    or a 5xx did), so the server may still apply it.
    """

    unsettled: bool = False


class RateLimited(TransientFailure):
    """429: the API asked us to come back after ``retry_after`` seconds."""

    def __init__(self, error: str, status: int | None, *, retry_after: float | None) -> None:
        super().__init__(error, status)
        self.retry_after = retry_after


class TokenRejected(TransientFailure):
    """401 although the token was just renewed: the credentials themselves are wrong or revoked."""


class TokenUnavailable(TransientFailure):
    """The token endpoint failed; nothing can be called until it answers."""


class LedgerUnavailable(TransientFailure):
    """Redis cannot be reached: without the ledger nothing may be applied blindly."""


class LeaseExpired(TransientFailure):
    """The relationship's lease would end before the call could be answered (a token renewal or
    a connection took too long): it was not sent, so it cannot land after a newer event."""


class RelationshipBusy(CcsyncError):
    """Another worker is applying an event of the same relationship right now."""
