"""The gateway's one error root, and the one table that maps errors to HTTP status.

A dialect or an admin endpoint raises these; the app's middleware asks the dialect that
owns the path to render them in the vendor's own error shape (the admin API's is
Traitly's), with the status ``STATUS`` gives the class (or its nearest listed base).
Nothing else picks a status. ``retriable`` tells the client (and our logs) whether
sending the same request again may succeed; those answer with ``retry_after`` when set.
"""

from __future__ import annotations


class GatewayError(Exception):
    retriable = False

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None, detail: object = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.detail = detail  # dialect-specific extra (e.g. Retainly's field errors)

    @property
    def status(self) -> int:
        return status_of(type(self))


class InvalidRequest(GatewayError):
    """Missing or malformed parameters; the body did not validate."""


class InvalidJSON(InvalidRequest):
    """The body is not JSON (or not the JSON shape the endpoint takes)."""


class InexactJSON(InvalidJSON):
    """Valid JSON that cannot be stored as sent: an integer beyond 64 bits, a key given
    twice in one object, a NUL character."""


class LimitExceeded(InvalidRequest):
    """A documented limit (size, count, length) is exceeded."""


class Unauthenticated(GatewayError):
    """No credential, or one that matches no workspace."""


class Forbidden(GatewayError):
    """The credential is known but may not do this."""


class Suppressed(Forbidden):
    """The record is about a person a regulation suppressed (``goalstream forget --suppress``)."""


class NotFound(GatewayError):
    """No such path, or no such resource."""


class MethodNotAllowed(GatewayError):
    """The path exists but not with this method."""


class NotAcceptable(GatewayError):
    """The client asked for a response format other than JSON."""


class PayloadTooLarge(LimitExceeded):
    """The request body exceeds the gateway's or the dialect's size limit."""


class UnsupportedEncoding(InvalidRequest):
    """A ``Content-Encoding`` the gateway does not decode (only gzip and deflate are)."""


class RecordTooLarge(PayloadTooLarge):
    """One record is larger than Kafka takes in one message: permanent, unlike a 503."""


class Unprocessable(InvalidRequest):
    """Well-formed but semantically invalid (vendors that answer 422)."""


class TooManyRequests(GatewayError):
    retriable = True


class Unavailable(GatewayError):
    """Kafka did not acknowledge, or the stack is draining: try again after Retry-After."""

    retriable = True


class Internal(GatewayError):
    retriable = True


STATUS: dict[type[GatewayError], int] = {
    GatewayError: 500,  # a class left out below answers as its nearest listed base
    InvalidRequest: 400,
    InvalidJSON: 400,
    InexactJSON: 400,
    LimitExceeded: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    PayloadTooLarge: 413,
    RecordTooLarge: 413,
    UnsupportedEncoding: 415,
    Unprocessable: 422,
    TooManyRequests: 429,
    Internal: 500,
    Unavailable: 503,
}


def status_of(cls: type[GatewayError]) -> int:
    """The HTTP status of an error class: its own entry in ``STATUS``, else its nearest base's."""
    return next(STATUS[base] for base in cls.__mro__ if base in STATUS)
