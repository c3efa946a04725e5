"""Logging filters on the process's log handlers: every record passes through them on its
way to stderr, after the logger has accepted it and before it is formatted.

In order, ``install`` puts three filters on each root handler:

1. ``BadRequestFilter``: aiohttp's HTTP parser errors. aiohttp (``web_protocol``
   ``handle_error``) logs every malformed request on the ``aiohttp.server`` logger at
   ERROR with the parser exception as ``exc_info``, and the exception's message quotes
   the raw bytes it choked on: the request line with its query string (trigger.ly's
   ``api_token``), the header with its credential. No middleware sees these requests,
   so the record itself is rewritten: one INFO line naming the peer and the error kind,
   no raw request, no traceback.
2. ``RateLimitFilter``: at most N records per (logger, message template) per interval;
   the rest are counted and reported as one "suppressed K similar messages" line, so a
   flood of bad requests cannot fill the disk.
3. ``Redactor``: every configured secret (each workspace credential, webhook signing
   secrets, admin/operator tokens, the running stack's per-run token), and whatever
   looks like a credential by position (``api_token=...`` in a query string, the value
   of an ``Authorization`` header, ``"writeKey": "..."``), is replaced in the final
   message, the formatted traceback and the stack info. Hashed credentials
   (``sha256:...``) cannot be matched by value; the positional rules cover those.

Formatting (``TextFormatter``, the default, or ``JsonFormatter``: one JSON object per line)
comes after the filters, so what either prints has been redacted: the redactor also goes
through a record's extra fields (request id, route, reason...), which JSON prints as keys.

The secrets come from the entry point (``config_secrets``); the stack adds its per-run
token with ``add_secrets`` once it has made one. Nothing here reads the environment.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from typing import Any, Callable, Iterable

from pydantic import BaseModel, SecretStr

REDACTED = "[redacted]"
ACCESS_LOGGER = "goalstream.access"  # ingest_gateway.requestlog's; not rate-limited
# Names that carry a credential wherever they appear: api_token, writeKey, api-key,
# api_secret, admin_token, password... (the name is kept, the value goes).
_CRED_END = r"[\w.-]*(?:token|key|secret|password|passwd|signature)"
_CRED_NAME = _CRED_END + r"[\w.-]*"
_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    # Header lines, raw or as a bytes repr: "Authorization: Token tk_..", "secret: ..";
    # the scheme is kept. (Names must end in the word: "KeyError: 'x'" stays.)
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|" + _CRED_END + r")"
            r"(\s*:\s*)((?:basic|bearer|token|digest)\s+)?[^\s'\"\\,;]+"
        ),
        lambda m: f"{m[1]}{m[2]}{m[3] or ''}{REDACTED}",
    ),
    # name=value in query strings, forms and key=value log text.
    (re.compile(r"(?i)\b(" + _CRED_NAME + r")=[^&\s'\"<>\\]+"), r"\1=" + REDACTED),
    # "name": "value" in JSON, 'name': 'value' in a Python repr.
    (re.compile(r"(?i)([\"']" + _CRED_NAME + r"[\"']\s*:\s*[\"'])[^\"']*"), r"\1" + REDACTED),
    # Standard Webhooks signing secrets, configured or not.
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), "whsec_" + REDACTED),
)

# What each rule above cannot match without; and the words every name rule needs (any
# _CRED_END, or authorization/cookie), case-insensitively.
_NEEDS = (":", "=", ":", "whsec_")
_HINT = re.compile(r"(?i)token|key|secret|passw|signature|authorization|cookie")


def config_secrets(config: BaseModel) -> list[str]:
    """Every ``SecretStr`` in the config, found by walking it (new credential fields and
    operator tokens are covered without listing them here). Hashed ones are skipped:
    their clear text never appears in the config."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            if raw and not raw.startswith("sha256:"):
                found.append(raw)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return found


class Redactor(logging.Filter):
    """Replaces known secrets and credential-shaped values in a record's final text."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._formatter = logging.Formatter()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for s in secrets:
            if not s:
                continue
            # As sent and as it shows up quoted in a URL or escaped in a repr.
            variants.update({s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s), repr(s)[1:-1]})
        with self._lock:
            self._secrets |= variants
            if self._secrets:
                alternatives = sorted(self._secrets, key=len, reverse=True)  # longest first
                self._pattern = re.compile("|".join(re.escape(v) for v in alternatives))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        # The positional rules are costly (~70 us on a short line) and every access line
        # passes here: a rule runs only if the text holds what it cannot match without
        # (a credential-ish word, and its ":" or "="; "whsec_"), which skips most lines.
        named = _HINT.search(text) is not None
        for (rule, replacement), needs in zip(_RULES, _NEEDS):
            if (named or needs == "whsec_") and needs in text:
                text = rule.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in extra_fields(record).items():
            # Extra fields are printed as they are by the JSON formatter: strings (and
            # anything that is not a plain number) are redacted like the message.
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
            elif value is not None and not isinstance(value, (bool, int, float)):
                setattr(record, name, self.redact(str(value)))
        try:
            message = record.getMessage()
        except Exception:  # a bad format call: keep what there is, safely
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None  # the formatter uses exc_text, now redacted
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


# What every LogRecord has; anything else on a record came from ``extra=`` (or a filter).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName", "_goalstream_summary"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the request id when the record has one (the
    access line carries its own fields in its message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid and "request_id=" not in record.getMessage():
            first, nl, rest = text.partition("\n")
            text = f"{first} request_id={rid}{nl}{rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, every extra field, and ``exc_info`` (the formatted traceback) if any.
    orjson (already a dependency) escapes newlines, so a traceback stays on one line."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime

        import orjson

        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in extra_fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return orjson.dumps(entry, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    """``"json"`` or ``"text"`` (settings.log_format)."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def _http_processing_error() -> type[BaseException] | None:
    try:
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return None
    return HttpProcessingError


# What the parser error says, in words that quote nothing from the request.
_KINDS = {
    "LineTooLong": "request line or header too long",
    "InvalidHeader": "invalid header",
    "BadHttpMethod": "bad method in the request line",
    "BadStatusLine": "bad request line",
    "InvalidURLError": "invalid URL",
    "ContentLengthError": "body shorter than Content-Length",
    "TransferEncodingError": "bad transfer encoding",
    "ContentEncodingError": "bad content encoding",
}
# The first line of an llhttp message ("Invalid header value char", "Duplicate
# 'Content-Length' header found.") is kept only if it is short and plain words.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 '._-]{0,79}")


def describe_parser_error(exc: BaseException) -> str:
    """``"BadHttpMessage (invalid header value char)"``, without a byte of the request."""
    name = type(exc).__name__
    kind = _KINDS.get(name)
    if kind is None:
        first = str(getattr(exc, "message", "") or "").split("\n", 1)[0].strip().rstrip(":.")
        kind = first.lower() if _PLAIN.fullmatch(first) and "b'" not in first else "malformed request"
    return f"{name} ({kind})"


class BadRequestFilter(logging.Filter):
    """aiohttp's parser errors -> one line, no raw request, no traceback, at INFO."""

    level = logging.INFO

    def __init__(self) -> None:
        super().__init__()
        self._error = _http_processing_error()

    def filter(self, record: logging.LogRecord) -> bool:
        if self._error is None or not record.name.startswith("aiohttp") or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if not isinstance(exc, self._error):
            return True
        level = min(record.levelno, self.level)  # aiohttp logs the first bad method at DEBUG
        if not logging.getLogger(record.name).isEnabledFor(level):
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        peer = args[0] if args else "?"
        record.msg = "bad HTTP request from %s: %s"
        record.args = (peer, describe_parser_error(exc))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return True


class RateLimitFilter(logging.Filter):
    """At most ``limit`` records per (logger, message template) per ``interval_s``.

    What is held back is counted; once the interval has passed, the next record of any
    kind (or the process's exit) reports it as one "suppressed K similar messages" line
    through ``emit`` (the handler's own ``handle``). Templates are bounded in number
    (``max_keys``, least recently seen forgotten first) because a module that logs an
    f-string makes a new template per message."""

    def __init__(
        self,
        limit: int,
        interval_s: float,
        emit: Callable[[logging.LogRecord], Any],
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.limit, self.interval_s, self.max_keys = limit, interval_s, max_keys
        self._emit, self._clock = emit, clock
        self._lock = threading.Lock()
        # key -> [window start, records seen in the window, logger name, level]
        self._windows: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self._next_sweep = clock() + interval_s

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_goalstream_summary", False) or record.name == ACCESS_LOGGER:
            return True  # the access log is one line per request by design (README "Logs")
        now = self._clock()
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, template)
        due: list[logging.LogRecord] = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] >= self.interval_s:
                due.append(self._summary(key, window, now))
                window = None
            if window is None:
                window = self._windows[key] = [now, 0, record.name, record.levelno]
                while len(self._windows) > self.max_keys:
                    old_key, old = self._windows.popitem(last=False)
                    due.append(self._summary(old_key, old, now))
            else:
                self._windows.move_to_end(key)
            window[1] += 1
            allowed = window[1] <= self.limit
            if now >= self._next_sweep:
                self._next_sweep = now + self.interval_s
                for k in [k for k, w in self._windows.items() if k != key and now - w[0] >= self.interval_s]:
                    due.append(self._summary(k, self._windows.pop(k), now))
        for summary in due:
            if summary is not None:
                self._emit(summary)
        return allowed

    def _summary(self, key: tuple[str, str], window: list[Any], now: float) -> logging.LogRecord | None:
        suppressed = window[1] - self.limit
        if suppressed <= 0:
            return None
        record = logging.LogRecord(
            window[2], max(window[3], logging.WARNING), __file__, 0,
            "suppressed %d similar messages in the last %.0fs: %r", (suppressed, now - window[0], key[1][:200]), None,
        )
        record._goalstream_summary = True
        return record

    def flush(self) -> None:
        """Report what is still held back (at exit)."""
        now = self._clock()
        with self._lock:
            due = [self._summary(k, w, now) for k, w in self._windows.items()]
            self._windows.clear()
        for summary in due:
            if summary is not None:
                self._emit(summary)


_redactors: list[Redactor] = []


def install(
    handlers: Iterable[logging.Handler],
    secrets: Iterable[str],
    *,
    rate_limit: int = 20,
    rate_interval_s: float = 60.0,
) -> Redactor:
    """Put the three filters on each handler (see the module docstring); returns the
    redactor so the caller can add secrets made later (``add_secrets`` does it for all).
    A handler that has them already (``main`` run twice in one process) only learns the
    new secrets."""
    secrets = list(secrets)
    redactor = Redactor(secrets)
    _redactors.append(redactor)
    for handler in handlers:
        existing = [f for f in handler.filters if isinstance(f, Redactor)]
        if existing:
            existing[0].add(secrets)
            continue
        handler.addFilter(BadRequestFilter())
        if rate_limit > 0:
            limiter = RateLimitFilter(rate_limit, rate_interval_s, handler.handle)
            handler.addFilter(limiter)
            atexit.register(limiter.flush)
        handler.addFilter(redactor)
    return redactor


def add_secrets(*secrets: str) -> None:
    """A secret made after logging was set up (the stack's per-run token): redact it too."""
    for redactor in _redactors:
        redactor.add(secrets)
