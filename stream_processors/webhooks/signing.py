"""Standard Webhooks signing: what the dispatcher puts on each outgoing webhook (issue 5).

What flows through: the dispatcher hands in the endpoint's secret(s) (``whsec_<base64 key>``),
the message id (``msg_<record message_id hex>``), the attempt's unix timestamp and the exact body
bytes it is about to POST; out come the three ``webhook-*`` headers of the Standard Webhooks
specification (https://github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md):

    webhook-id:        msg_...
    webhook-timestamp: 1674087231
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.".encode() + body)> [v1,...]

One ``v1,`` signature per secret, space separated, so an endpoint can rotate its secret without
downtime: during the rotation both the old and the new secret sign, and the receiver accepts the
message when any one signature matches.

``verify`` is the receiver's side of the same scheme (constant-time comparison, timestamp
tolerance); goalstream itself never receives these webhooks, the tests use it as "the receiver".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
# The spec: a symmetric secret is random, at least 24 bytes (192 bits), at most 512 bits.
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
DEFAULT_TOLERANCE_S = 300  # the reference libraries' 5 minutes

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

# Printable ASCII minus space; "." is excluded separately because it is the field delimiter of the
# signed content: an id containing "." could make two different (id, timestamp) pairs sign the
# same bytes.
_ID_CHARS = re.compile(r"[\x21-\x7e]+")
_TIMESTAMP = re.compile(r"[0-9]{1,19}")


class InvalidSecret(ValueError):
    """A secret that is not ``whsec_`` + standard base64 of a 24..64 byte key: a configuration error."""


class InvalidMessageId(ValueError):
    """A webhook id that is empty, non-ASCII, or contains ``.`` or whitespace."""


class InvalidSignature(Exception):
    """The receiver's verdict: headers missing/malformed, timestamp out of tolerance, or no signature matched."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside ``whsec_<base64>``; raises InvalidSecret saying what is wrong."""
    if not isinstance(secret, str):
        raise InvalidSecret(f"webhook secret must be a str, got {type(secret).__name__}")
    if not secret.startswith(SECRET_PREFIX):
        # Required rather than optional (the reference libraries accept a bare key): the prefix is
        # what tells a signing secret apart from any other base64 string pasted into the config.
        raise InvalidSecret(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX):]
    # Unpadded base64 is common in copied secrets; restore the padding, then decode strictly so a
    # typo (a character outside the base64 alphabet) is an error instead of being skipped.
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret(f"webhook secret after {SECRET_PREFIX!r} is not valid base64: {exc}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidSecret(
            f"webhook secret key is {len(key)} bytes; the Standard Webhooks spec wants {MIN_KEY_BYTES}..{MAX_KEY_BYTES}"
        )
    return key


def msg_id(value: str) -> str:
    """Validate a webhook id (the dispatcher derives ``"msg_" + <record message_id hex>``); returns it."""
    return _validate_msg_id(value)


def _validate_msg_id(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessageId("webhook id must be a non-empty str")
    if not _ID_CHARS.fullmatch(value):
        raise InvalidMessageId(f"webhook id must be printable ASCII without whitespace: {value!r}")
    if "." in value:
        raise InvalidMessageId(f"webhook id must not contain '.' (the signed-content delimiter): {value!r}")
    return value


def _validate_timestamp(timestamp: int) -> int:
    # bool is an int subclass; True as a timestamp is a bug upstream, not second 1 of 1970.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"webhook timestamp must be a non-negative int (unix seconds), got {timestamp!r}")
    return timestamp


def _signed_content(msg_id_: str, timestamp: int, body: bytes) -> bytes:
    # Concatenated as bytes, not via str: the body is signed exactly as it goes on the wire.
    return f"{msg_id_}.{timestamp}.".encode() + body


def _signature(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` per secret, space separated, in the given order."""
    if isinstance(secrets, (str, bytes)):
        # A bare str is a Sequence[str] of characters: catch the easy mistake before it signs with "w".
        raise TypeError("secrets must be a sequence of secrets, e.g. [secret], not a single str")
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"body must be the bytes that will be sent, got {type(body).__name__}")
    content = _signed_content(_validate_msg_id(msg_id), _validate_timestamp(timestamp), bytes(body))
    keys = [decode_secret(s) for s in secrets]  # all secrets checked before any signature is made
    return " ".join("v1," + base64.b64encode(_signature(k, content)).decode("ascii") for k in keys)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt of ``body``."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secrets, msg_id, timestamp, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    # HTTP header names are case-insensitive; plain dicts from tests or frameworks may use any case.
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if not value:
        raise InvalidSignature(f"missing {name} header")
    return value


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """A receiver's check of one webhook; returns None when valid, raises InvalidSignature otherwise.

    A malformed ``secret`` raises InvalidSecret (the receiver's configuration is wrong, not the message).
    """
    key = decode_secret(secret)
    id_ = _header(headers, HEADER_ID)
    ts_text = _header(headers, HEADER_TIMESTAMP).strip()
    sig_text = _header(headers, HEADER_SIGNATURE)

    if not _TIMESTAMP.fullmatch(ts_text):
        raise InvalidSignature(f"{HEADER_TIMESTAMP} is not an integer unix timestamp: {ts_text!r}")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    # Both directions: an old timestamp is a replay, a future one would extend a replay window.
    if timestamp < current - tolerance_s:
        raise InvalidSignature(f"{HEADER_TIMESTAMP} {timestamp} is too old (tolerance {tolerance_s} s)")
    if timestamp > current + tolerance_s:
        raise InvalidSignature(f"{HEADER_TIMESTAMP} {timestamp} is too new (tolerance {tolerance_s} s)")

    expected = _signature(key, _signed_content(id_, timestamp, bytes(body)))
    for candidate in sig_text.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue  # other schemes (v1a = ed25519) may ride along; they are not ours to check
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # compare_digest: the comparison time must not reveal how many leading bytes matched.
        if hmac.compare_digest(expected, given):
            return
    raise InvalidSignature("no v1 signature in webhook-signature matches")
