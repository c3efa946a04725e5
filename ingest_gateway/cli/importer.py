"""``goalstream import FILE...``: historical data (Segment JSONL, Customer.io exports, plain
JSONL/CSV events and customers) read line by line, decoded into canonical records by the
dialects' own pure decode functions, and produced to Kafka in bounded batches.

What flows through: each input line (or CSV row) -> ``decode_line`` -> zero or more
``model.Record`` (or a refusal with the same reason the HTTP API would give, because the
same functions decide: ``segment.decode_message``, ``customerio.Decoder``) -> a batch of at
most ``--batch`` records -> ``RecordProducer.publish`` (acks=all) -> the checkpoint file is
advanced to the byte offset after the last line of the acknowledged batch.

Where the batches go: when a ``goalstream up`` runs on the data dir (its run file,
``runfile.running``), to its gateway's ``POST /admin/v1/records`` with the run's operator
token (``StackSink``): the stack spools a batch (fsynced) before it answers 2xx, as it does
for an SDK's request, so the checkpoint never moves past a batch that an embedded,
memory-only broker could still lose in a crash; and its admission applies (503 +
Retry-After while the backlog is full: the import waits and sends again). Otherwise the
batches go straight to ``--kafka`` with ``RecordProducer`` (acks=all: an acknowledged batch
is durable there). Either way a batch not acknowledged is read again on the next run, and
the events sink's exact dedup by (workspace, message_id) makes that re-read harmless.

Ids: a line's own id (Segment ``messageId``, Customer.io ``id``, plain ``id``/``message_id``)
is kept; a line without one gets a UUID derived from sha256(workspace, the line's bytes) (and
the record's index within the line), so a re-run makes the same ids and stores nothing twice.

Memory is constant: one line, one batch and the refusal summary (bounded) are held at a time.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from schemas import model

from .. import errors
from ..dialects import customerio, segment
from ..dialects.base import parse_json

FORMATS = ("segment", "customerio", "events", "customers")
SOURCE = {"segment": "segment", "customerio": "customerio", "events": "import", "customers": "import"}
MAX_LINE_BYTES = segment.MAX_MESSAGE_BYTES  # the API's per-message limit
FIRST_LINES_PER_REASON = 5
MAX_REASONS = 100  # distinct refusal reasons kept for the summary (the refusals file has all)


class ImportError_(Exception):
    """A file cannot be imported at all (unknown format, unreadable): one clear message."""


# -- opening and format detection -------------------------------------------------------


def open_binary(path: Path):
    """The file's bytes, gunzipped when it ends in ``.gz`` (streamed, never whole)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _suffix(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def detect(path: Path, first_line: bytes) -> tuple[str, str]:
    """(format, container) from the extension and the first line; container is json or csv."""
    ext = _suffix(path)
    head = first_line.strip()
    container = "csv" if ext in ("csv", "tsv") else "json"
    if ext not in ("csv", "tsv", "jsonl", "ndjson", "json") and head:
        container = "json" if head[:1] == b"{" else "csv"
    if container == "json":
        try:
            obj = orjson.loads(head) if head else {}
        except orjson.JSONDecodeError:
            raise ImportError_(f"{path}: the first line is not JSON; give --format and check the file") from None
        if not isinstance(obj, dict):
            raise ImportError_(f"{path}: the first line is not a JSON object")
        return detect_json(obj), container
    return detect_csv_header(next(csv.reader([head.decode("utf-8-sig", "replace")]), [])), container


def detect_json(obj: dict[str, Any]) -> str:
    if obj.get("type") in segment.TYPES and ("userId" in obj or "anonymousId" in obj or "messageId" in obj):
        return "segment"
    if obj.get("type") in ("person", "object", "delivery") or "identifiers" in obj:
        return "customerio"
    if "name" in obj and "data" in obj or "cio_id" in obj:
        return "customerio"
    if "event" in obj or "name" in obj:
        return "events"
    return "customers"


def detect_csv_header(header: list[str]) -> str:
    cols = {c.strip().lower() for c in header}
    if "cio_id" in cols or any(c.startswith("data.") for c in cols) or {"data"} <= cols:
        return "customerio"
    if "event" in cols or "name" in cols:
        return "events"
    return "customers"


# -- ids --------------------------------------------------------------------------------


def derived_id(workspace: str, line: bytes, index: int = 0) -> str:
    """The message id of a line that has none: the same for the same (workspace, line)."""
    h = hashlib.sha256(workspace.encode() + b"\0" + line.rstrip(b"\r\n") + b"\0" + str(index).encode()).digest()
    return str(uuid.UUID(bytes=h[:16], version=5))


# -- decoding ---------------------------------------------------------------------------


def _unix_to_iso(value: Any) -> Any:
    """Plain files may give unix seconds (or ms) or ISO text; the Segment decoder takes ISO."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = value / 1000 if value > 1e11 else value
        return model.from_ms(secs * 1000).isoformat()
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return _unix_to_iso(float(value))
    return value


def _csv_value(text: str) -> Any:
    """A CSV cell: JSON when it parses as a JSON object/array/bool, else the text (numbers stay text: a zip code "00123" must)."""
    t = text.strip()
    if t and (t[0] in "{[" or t in ("true", "false")):
        try:
            return orjson.loads(t)
        except orjson.JSONDecodeError:
            return text
    return text


def _resolve_identity(kind: str, value: str) -> Any:
    async def same() -> str:
        return value  # no look-up: an email names the customer of that email as id

    return same()


def _run(coro):
    """Run a Decoder coroutine that never awaits real I/O (the resolver is immediate)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("decoder awaited I/O")


def _plain_event(row: dict[str, Any]) -> dict[str, Any]:
    props = row.get("properties")
    if isinstance(props, str) and props.strip():
        props = parse_json(props.encode(), what="the properties column", param="properties")
    props = dict(props or {}) if isinstance(props, dict) or props in (None, "") else props
    if isinstance(props, dict):
        for k, v in row.items():
            if k.startswith("prop_"):
                props[k[5:]] = _csv_value(v) if isinstance(v, str) else v
    msg: dict[str, Any] = {
        "type": "track",
        "userId": row.get("customer_id") or row.get("user_id") or None,
        "anonymousId": row.get("anonymous_id") or None,
        "event": row.get("name") if row.get("name") not in (None, "") else row.get("event"),
        "properties": props,
        "messageId": row.get("message_id") or row.get("id") or None,
        "timestamp": _unix_to_iso(row.get("timestamp")) or None,
    }
    return msg


def _plain_customer(row: dict[str, Any]) -> dict[str, Any]:
    attrs = row.get("attributes")
    if isinstance(attrs, str) and attrs.strip():
        attrs = parse_json(attrs.encode(), what="the attributes column", param="attributes")
    attrs = dict(attrs or {}) if isinstance(attrs, dict) or attrs in (None, "") else attrs
    if isinstance(attrs, dict):
        for k, v in row.items():
            if k.startswith("attr_"):
                attrs[k[5:]] = _csv_value(v) if isinstance(v, str) else v
            elif k not in ("customer_id", "id", "user_id", "attributes", "message_id", "created_at") and v not in (None, ""):
                attrs.setdefault(k, _csv_value(v) if isinstance(v, str) else v)
        created = row.get("created_at")
        if created not in (None, ""):
            attrs["createdAt"] = _unix_to_iso(created)
    return {
        "type": "identify",
        "userId": row.get("customer_id") or row.get("id") or row.get("user_id") or None,
        "traits": attrs,
        "messageId": row.get("message_id") or None,
    }


def _customerio_row(dec: customerio.Decoder, row: dict[str, Any]) -> list[model.Record]:
    """A Customer.io export row/line: a v2 person operation, an event, or a person."""
    if "type" in row and ("action" in row or "identifiers" in row):
        return _run(dec.v2_operation(row))
    if row.get("name") not in (None, "") and ("data" in row or "customer_id" in row or any(k.startswith("data.") for k in row)):
        data = row.get("data")
        if isinstance(data, str):
            data = parse_json(data.encode(), what="the data column", param="data") if data.strip() else {}
        data = dict(data or {}) if isinstance(data, dict) else data
        if isinstance(data, dict):
            for k, v in row.items():
                if k.startswith("data."):
                    data[k[5:]] = _csv_value(v) if isinstance(v, str) else v
        cid = row.get("customer_id") or row.get("person_id") or ""
        ts = row.get("timestamp")
        if isinstance(ts, str) and ts.strip().isdigit():
            ts = int(ts)
        return dec.event(
            customer_id=customerio.check_id(cid, "customer_id") if cid else "",
            anonymous_id=row.get("anonymous_id") or "",
            name=row.get("name"),
            data=data,
            timestamp=ts if ts not in ("",) else None,
            message_id=row.get("id") or None,
            kind=row.get("type"),
        )
    attrs = {k: (_csv_value(v) if isinstance(v, str) else v) for k, v in row.items() if v not in (None, "")}
    cid = attrs.pop("id", None) or attrs.pop("customer_id", None)
    attrs.pop("cio_id", None)  # Customer.io's own id: goalstream assigns none (kept out of attributes)
    if cid in (None, "") and attrs.get("email"):
        cid = attrs["email"]
    if isinstance(attrs.get("created_at"), str) and attrs["created_at"].strip().isdigit():
        attrs["created_at"] = int(attrs["created_at"])
    return dec.identify(customerio.check_id(cid, "id"), attrs)


def decode_row(fmt: str, workspace: str, row: dict[str, Any], received_ms: int) -> list[model.Record]:
    """One parsed line/row -> its records (raises errors.GatewayError with the API's reason)."""
    source = SOURCE[fmt]
    if fmt == "segment":
        return [segment.decode_message(workspace, row, received_ms, source=source)]
    if fmt == "events":
        return [segment.decode_message(workspace, _plain_event(row), received_ms, source=source)]
    if fmt == "customers":
        return [segment.decode_message(workspace, _plain_customer(row), received_ms, source=source)]
    dec = customerio.Decoder(workspace=workspace, source=source, received=received_ms, resolve=_resolve_identity)
    return _customerio_row(dec, row)


def decode_line(fmt: str, container: str, workspace: str, raw: bytes, row: dict[str, Any] | None, received_ms: int) -> list[model.Record]:
    """Decode one line (JSON: ``raw``; CSV: ``row`` already split) and fix its ids."""
    if len(raw) > MAX_LINE_BYTES:
        raise errors.LimitExceeded(f"Exceed payload limit: the line is {len(raw)} bytes; at most {MAX_LINE_BYTES} (32 KB) per message")
    if row is None:
        row = parse_json(raw.strip(), what="the line")
        if not isinstance(row, dict):
            raise errors.InvalidJSON("the line must be a JSON object")
    records = decode_row(fmt, workspace, row, received_ms)
    own = {row.get(k) for k in ("messageId", "message_id", "id")} - {None, ""}
    for i, rec in enumerate(records):
        if rec.value["message_id"] not in own or i > 0:  # the second record of a line (Customer.io's alias merge) needs its own
            rec.value["message_id"] = derived_id(workspace, raw, i)
    return records


def reason_of(exc: errors.GatewayError) -> str:
    # The code the Segment API answers with (its table covers every error class), then the message.
    code = exc.detail if isinstance(exc.detail, str) else segment.CODES.get(type(exc)) or (
        "invalid_request" if isinstance(exc, errors.InvalidRequest) else type(exc).__name__)
    return f"{code}: {exc.message}"


# -- reading ----------------------------------------------------------------------------


@dataclass
class Line:
    number: int  # 1-based, of the file (CSV: the row's first line)
    raw: bytes
    row: dict[str, Any] | None
    end: int  # byte offset (of the decompressed stream) after this line


def read_lines(path: Path, container: str, start: int = 0, first_number: int = 1) -> Iterator[Line]:
    """The file's lines from byte ``start`` on; CSV rows keyed by the header (always re-read)."""
    with open_binary(path) as f:
        if container == "json":
            pos = 0
            number = first_number
            if start:
                f.seek(start)  # gzip seeks by reading forward: still streamed
                pos = start
            for raw in f:
                pos += len(raw)
                if raw.strip():
                    yield Line(number, raw, None, pos)
                number += 1
            return
        header_raw = f.readline()
        header = [h.strip() for h in next(csv.reader([header_raw.decode("utf-8-sig")]), [])]
        pos = len(header_raw)
        number = 2
        if start > pos:
            f.seek(start)
            pos, number = start, first_number
        state = {"pos": pos, "lines": 0}
        buf: list[bytes] = []

        def text_lines() -> Iterator[str]:
            # csv.reader pulls one line per row (more for a quoted multi-line cell), so the
            # lines taken since the last row are exactly this row's bytes.
            for raw in f:
                state["pos"] += len(raw)
                state["lines"] += 1
                buf.append(raw)
                yield raw.decode("utf-8", "replace")

        here = number
        for cells in csv.reader(text_lines()):
            raw = b"".join(buf)
            buf.clear()
            row_number, here = here, number + state["lines"]
            if not cells or all(not c.strip() for c in cells):
                continue
            yield Line(row_number, raw, {h: c for h, c in zip(header, cells) if h}, state["pos"])


# -- checkpoints ------------------------------------------------------------------------


def checkpoint_path(data_dir: Path, path: Path, workspace: str, fmt: str) -> Path:
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{int(st.st_mtime)}\0{workspace}\0{fmt}"
    return data_dir / "import" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def load_checkpoint(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_checkpoint(p: Path, state: dict[str, Any]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, p)  # atomic: a crash leaves the old or the new offset, never half


# -- progress ---------------------------------------------------------------------------


class Progress:
    """tqdm on a terminal; otherwise one plain line every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, stream=None, interval: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.desc, self.interval = total, desc, interval
        self.t0 = self.last = time.monotonic()
        self.sent = self.errors = self.bytes = 0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, pos: int, sent: int, errs: int) -> None:
        delta = pos - self.bytes
        self.bytes, self.sent, self.errors = pos, sent, errs
        now = time.monotonic()
        rate = sent / max(now - self.t0, 1e-6)
        if self.bar is not None:
            self.bar.update(max(delta, 0))
            self.bar.set_postfix(records=sent, rps=f"{rate:,.0f}", errors=errs, refresh=False)
        elif now - self.last >= self.interval:
            self.last = now
            pct = f" {100 * pos / self.total:.0f}%" if self.total else ""
            print(f"{self.desc}: {pos:,} bytes{pct}, {sent:,} records, {rate:,.0f} records/s, {errs:,} refused", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the run ----------------------------------------------------------------------------


@dataclass
class Summary:
    lines: int = 0
    records: int = 0
    refused: int = 0
    reasons: "OrderedDict[str, list]" = field(default_factory=OrderedDict)  # reason -> [count, first numbers]

    def refuse(self, reason: str, number: int) -> None:
        self.refused += 1
        entry = self.reasons.get(reason)
        if entry is None:
            if len(self.reasons) >= MAX_REASONS:
                reason = "(other reasons: see the refusals file)"
                entry = self.reasons.setdefault(reason, [0, []])
            else:
                entry = self.reasons[reason] = [0, []]
        entry[0] += 1
        if len(entry[1]) < FIRST_LINES_PER_REASON:
            entry[1].append(number)


class Interrupted(Exception):
    pass


async def import_file(
    path: Path,
    *,
    fmt: str | None,
    workspace: str,
    producer: Any,
    data_dir: Path,
    restart: bool = False,
    dry_run: bool = False,
    batch_size: int = 1000,
    stop: asyncio.Event | None = None,
    out=None,
) -> Summary:
    out = out or sys.stderr
    with open_binary(path) as f:
        first = f.readline()
    detected, container = detect(path, first)
    fmt = fmt or detected
    if fmt not in FORMATS:
        raise ImportError_(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    cp_path = checkpoint_path(data_dir, path, workspace, fmt)
    cp = None if restart or dry_run else load_checkpoint(cp_path)
    start, number = (cp["offset"], cp["next_line"]) if cp else (0, 1)
    summary = Summary()
    if cp:
        summary.lines, summary.records, summary.refused = cp.get("lines", 0), cp.get("records", 0), cp.get("refused", 0)
        print(f"{path}: resuming at line {number} (byte {start:,}; --restart to read it from the start)", file=out)
    refusals_path = data_dir / "import" / (cp_path.stem + ".refusals.jsonl")
    refusals_path.parent.mkdir(parents=True, exist_ok=True)
    refusals = open(refusals_path, "ab" if cp else "wb")
    size = path.stat().st_size if not path.name.endswith(".gz") else 0
    progress = Progress(size, path.name, out)
    received = model.now_ms()
    batch: list[model.Record] = []
    last_end, last_next = start, number

    # One batch in flight while the next is decoded (the import otherwise waits on each ack:
    # measured 16% CPU), never more: memory stays at two batches. The checkpoint moves only
    # when a batch's ack came, to the state as it was after that batch's last line.
    inflight: tuple[asyncio.Future, dict[str, Any]] | None = None

    async def settle() -> None:
        nonlocal inflight
        if inflight is not None:
            task, state = inflight
            inflight = None
            await task
            save_checkpoint(cp_path, state)

    async def flush() -> None:
        nonlocal batch, inflight
        await settle()
        summary.records += len(batch)
        refusals.flush()
        state = {"file": str(path), "format": fmt, "workspace": workspace, "offset": last_end, "next_line": last_next,
                 "lines": summary.lines, "records": summary.records, "refused": summary.refused}
        if not dry_run:
            if batch:
                inflight = (asyncio.ensure_future(producer.publish(batch, batched=True)), state)
            else:
                save_checkpoint(cp_path, state)
        batch = []

    try:
        for line in read_lines(path, container, start, number):
            summary.lines += 1
            try:
                batch.extend(decode_line(fmt, container, workspace, line.raw, line.row, received))
            except errors.GatewayError as exc:
                reason = reason_of(exc)
                summary.refuse(reason, line.number)
                refusals.write(orjson.dumps({"line": line.number, "reason": reason,
                                             "text": line.raw.decode("utf-8", "replace").rstrip("\r\n")}) + b"\n")
            last_end, last_next = line.end, line.number + 1
            if len(batch) >= batch_size:
                await flush()
                progress.update(line.end, summary.records, summary.refused)
                if stop is not None and stop.is_set():
                    await settle()
                    raise Interrupted()
        await flush()
        await settle()
        progress.update(last_end, summary.records, summary.refused)
    finally:
        if inflight is not None:  # an error elsewhere: do not leave the send running unowned
            inflight[0].cancel()
        progress.close()
        refusals.close()
    summary.refusals_path = refusals_path  # type: ignore[attr-defined]
    return summary


def print_summary(path: Path, s: Summary, out=None, dry_run: bool = False) -> None:
    out = out or sys.stderr
    verb = "would send" if dry_run else "sent"
    print(f"{path}: {s.lines:,} lines read, {s.records:,} records {verb}, {s.refused:,} lines refused", file=out)
    for reason, (count, numbers) in s.reasons.items():
        more = ", ..." if count > len(numbers) else ""
        print(f"  {count:,} x {reason} (lines {', '.join(map(str, numbers))}{more})", file=out)
    if s.refused:
        print(f"  refused lines (JSONL: line, reason, text): {getattr(s, 'refusals_path', '')}", file=out)


class StackSink:
    """The running stack as the importer's sink: ``publish(records)`` POSTs them (JSONL) to
    its ``/admin/v1/records`` and returns once the stack made them durable (its 2xx).
    503/429 (backlog full, broker restarting, draining) and a connection that fails are
    retried after Retry-After (or a growing pause) for up to ``patience_s``; any other
    refusal is the batch's, and stops the import with the stack's message."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 120.0, patience_s: float = 600.0):
        self.url = url.rstrip("/") + "/admin/v1/records"
        self.token = token
        self.timeout_s, self.patience_s = timeout_s, patience_s
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                             headers={"Authorization": f"Bearer {self.token}"})

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    @staticmethod
    def body(records: list[model.Record]) -> bytes:
        import base64

        return b"\n".join(orjson.dumps({"schema": r.schema, "topic": r.topic, "key": base64.b64encode(r.key).decode(),
                                        "value": r.value}) for r in records)

    async def publish(self, records: list[model.Record], batched: bool = True) -> None:
        """``batched``: RecordProducer's option, meaningless here (the stack batches)."""
        import aiohttp

        body = self.body(records)
        deadline = time.monotonic() + self.patience_s
        pause = 0.5
        while True:
            try:
                async with self.session.post(self.url, data=body, headers={"Content-Type": "application/x-ndjson"}) as resp:
                    if resp.status < 300:
                        return
                    text = await resp.text()
                    if resp.status not in (429, 503):
                        try:
                            text = orjson.loads(text)["error"]["message"]
                        except Exception:
                            pass
                        raise ImportError_(f"the stack refused a batch ({resp.status}): {text[:500]}")
                    try:
                        pause = float(resp.headers.get("Retry-After", pause))
                    except ValueError:
                        pass
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
                pause = min(pause * 2, 10.0)
            else:
                why = f"the stack answered {resp.status} (busy)"
            if time.monotonic() + pause > deadline:
                raise ImportError_(f"the stack did not take a batch for {self.patience_s:.0f} s: {why}")
            await asyncio.sleep(pause)


async def run(paths: list[Path], *, fmt: str | None, workspace: str, bootstrap: str | None, data_dir: Path,
              restart: bool, dry_run: bool, batch_size: int, stack: dict[str, Any] | None = None) -> int:
    """``stack``: the running stack's run file (its URL and token), else None (``bootstrap``)."""
    from schemas.kafka import RecordProducer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ninterrupted: stopping after the batch in flight...", file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    producer = None
    if not dry_run:
        if stack is not None:
            producer = StackSink(stack["url"], stack["token"])
            batch_size = min(batch_size, 10_000)  # the endpoint's bound per request (MAX_IMPORT_RECORDS)
        else:
            producer = RecordProducer(bootstrap or "127.0.0.1:9092", timeout_s=60.0, linger_ms=5)
        await asyncio.wait_for(producer.start(), 60)
    rc = 0
    try:
        for p in paths:
            if stop.is_set():
                break
            t0 = time.monotonic()
            try:
                s = await import_file(p, fmt=fmt, workspace=workspace, producer=producer, data_dir=data_dir,
                                      restart=restart, dry_run=dry_run, batch_size=batch_size, stop=stop)
            except Interrupted:
                print(f"{p}: stopped; everything up to the checkpoint is stored. Run the same command again to resume "
                      f"(or add --restart to start over).", file=sys.stderr)
                return 130
            except (ImportError_, OSError) as exc:
                print(f"goalstream import: {exc}", file=sys.stderr)
                rc = 2
                continue
            dt = time.monotonic() - t0
            print_summary(p, s, dry_run=dry_run)
            print(f"  {dt:.1f} s, {s.records / max(dt, 1e-6):,.0f} records/s", file=sys.stderr)
            if s.refused:
                rc = rc or 1
    finally:
        if producer is not None:
            await asyncio.wait_for(producer.stop(), 60)
    return rc


# -- progress for the other long one-shot commands (train, deadletter/webhooks replay) -------


class Spinner:
    """A spinner with elapsed seconds on a terminal while ``desc`` runs; off a terminal one
    line at the start and one every ``interval`` seconds, so a log shows it is still alive."""

    FRAMES = "|/-\\"

    def __init__(self, desc: str, stream=None, interval: float = 10.0):
        import threading

        self.desc, self.stream, self.interval = desc, stream or sys.stderr, interval
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        t0, i = time.monotonic(), 0
        if not self.tty:
            print(f"{self.desc}...", file=self.stream, flush=True)
        while not self._done.wait(0.1 if self.tty else self.interval):
            elapsed = time.monotonic() - t0
            if self.tty:
                i += 1
                self.stream.write(f"\r{self.desc} {self.FRAMES[i % 4]} {elapsed:.0f}s")
                self.stream.flush()
            else:
                print(f"{self.desc}: still running ({elapsed:.0f}s)", file=self.stream, flush=True)
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def __enter__(self) -> "Spinner":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(1)


def counter(total: int, desc: str, stream=None):
    """A count bar (tqdm) on a terminal, else a Progress printing plain lines."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=stream, unit="")

    class _Plain:
        def __init__(self) -> None:
            self.n, self.last = 0, time.monotonic()

        def update(self, k: int = 1) -> None:
            self.n += k
            if time.monotonic() - self.last >= 5 or self.n == total:
                self.last = time.monotonic()
                print(f"{desc}: {self.n}/{total}", file=stream, flush=True)

        def close(self) -> None:
            pass

    return _Plain()
