"""Reading dead letters back out of ClickHouse and sending them again.

Flow: ClickHouse ``deadletters`` (stored by the processors from ``goalstream.deadletter``)
-> ``goalstream deadletter list|replay`` -> the record's original topic, byte for byte
(key, value, headers), so the processors take it as if it had just arrived. Only records
that came from a goalstream topic can be replayed; a request the gateway refused (stage
``gateway:<dialect>``) was invalid input and is listed for people to look at, not resent.
A failed webhook delivery (stage ``dispatcher``) goes back onto its propensity or
recommendations topic carrying its endpoint, so it is delivered again to that endpoint.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterable

from schemas import topics
from schemas.kafka import RecordProducer

REPLAYABLE = {topics.EVENTS, topics.CUSTOMERS, topics.PROPENSITY, topics.RECOMMENDATIONS}
# Marks a replayed message with its dead letter's id: the dispatcher makes a new delivery
# of it (to the one endpoint it failed for) instead of taking it for one it has seen.
REPLAY_HEADER = "goalstream-replay"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def select_sql(*, ids: Iterable[str] | None, stage: str | None, limit: int, with_payload: bool) -> str:
    """The one read-only query both commands use (it runs through ``goalstream sql``'s path)."""
    where = []
    if ids:
        where.append(f"id IN ({', '.join(_quote(i) for i in ids)})")
    if stage:
        where.append(f"stage = {_quote(stage)}")
    cols = "id, failed_at, stage, reason, source_topic, source_partition, source_offset"
    if with_payload:
        cols += ", base64Encode(ifNull(key, '')) AS key_b64, isNull(key) AS key_null, base64Encode(ifNull(value, '')) AS value_b64, " \
                "mapApply((k, v) -> (k, base64Encode(v)), headers) AS headers_b64"
    return (
        f"SELECT {cols} FROM deadletters FINAL"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY failed_at, id LIMIT {int(limit)}"
    )


@dataclass
class Send:
    id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class Plan:
    sends: list[Send] = field(default_factory=list)
    skipped: list[tuple[dict[str, Any], str]] = field(default_factory=list)


def plan(rows: Iterable[dict[str, Any]]) -> Plan:
    out = Plan()
    for row in rows:
        if row["source_topic"] not in REPLAYABLE:
            out.skipped.append((row, f"from {row['stage']}, not from a goalstream topic: fix and resend the request"))
            continue
        out.sends.append(
            Send(
                id=row["id"],
                topic=row["source_topic"],
                key=None if int(row["key_null"]) else base64.b64decode(row["key_b64"]),
                value=base64.b64decode(row["value_b64"]),
                headers=[(k, base64.b64decode(v)) for k, v in row["headers_b64"].items() if k != REPLAY_HEADER]
                + [(REPLAY_HEADER, str(row["id"]).encode())],
            )
        )
    return out


async def send(bootstrap: str, sends: list[Send], progress: Any = None) -> int:
    """``progress``: an object with ``update(n)`` (the CLI's bar), told of each one sent."""
    producer = RecordProducer(bootstrap, idempotence=False)
    try:
        await producer.start()
        for item in sends:
            await producer.send_raw(item.topic, item.value, item.key, item.headers)
            if progress is not None:
                progress.update(1)
    finally:
        await producer.stop()
    return len(sends)
