"""Dead letters end to end: kept in ClickHouse (the embedded broker keeps nothing),
listed, and replayed onto their source topic with ``goalstream deadletter``."""

from __future__ import annotations

import asyncio
import json
import subprocess

from schemas import codec, model, topics
from schemas.kafka import RecordProducer
from tests.conftest import GOALSTREAM, wait_for


def goalstream(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GOALSTREAM), *args], cwd=stack.workdir, capture_output=True, text=True, timeout=120)


def produce(stack, topic: str, value: bytes, key: bytes, headers) -> None:
    async def go():
        p = RecordProducer(f"127.0.0.1:{stack.kafka_port}", idempotence=False)
        await p.start()
        try:
            await p.send_raw(topic, value, key, list(headers))
        finally:
            await p.stop()

    asyncio.run(go())


def test_an_undecodable_record_is_kept_listed_and_replayable(stack):
    produce(stack, topics.EVENTS, b"\x00not avro", b"acme:dl-1", [("goalstream-schema", b"goalstream.Event"), ("goalstream-schema-version", b"99")])
    rows = wait_for(lambda: stack.sql("SELECT id, stage, reason, source_topic, hex(value) FROM deadletters WHERE source_topic = 'goalstream.events'", "JSONEachRow").strip())
    row = json.loads(rows.splitlines()[0])
    assert row["stage"] == "events-sink" and "unknown schema goalstream.Event version 99" in row["reason"]
    assert row["hex(value)"] == b"\x00not avro".hex().upper()

    listed = goalstream(stack, "deadletter", "list", "--stage", "events-sink")
    assert listed.returncode == 0 and row["id"] in listed.stdout

    # Sent again, byte for byte: it fails again the same way, which makes a second row.
    out = goalstream(stack, "deadletter", "replay", "--id", row["id"])
    assert out.returncode == 0, out.stderr
    assert "replayed 1 of 1" in out.stdout
    wait_for(lambda: stack.sql("SELECT count() FROM deadletters FINAL WHERE stage = 'events-sink'").strip() == "2")


def test_a_replayed_dead_letter_reaches_its_table(stack):
    # As if ClickHouse had refused this event once: a DeadLetter carrying its exact bytes.
    rec = model.event(workspace="acme", customer_id="dl-2", name="replayed", properties={"n": 1}, source="traitly")
    value, headers = codec.encode(rec.schema, rec.value)
    letter = {
        "id": "dl-test-2", "reason": "ClickHouse refused the record: test", "stage": "events-sink",
        "source_topic": topics.EVENTS, "source_partition": 0, "source_offset": 7, "key": rec.key, "value": value,
        "headers": dict(headers), "failed_at": model.now_ms(),
    }
    dl_value, dl_headers = codec.encode(model.DEAD_LETTER, letter)
    produce(stack, topics.DEADLETTER, dl_value, rec.key, dl_headers)
    wait_for(lambda: stack.sql("SELECT count() FROM deadletters WHERE id = 'dl-test-2'").strip() == "1")
    assert stack.sql(f"SELECT count() FROM events WHERE message_id = '{rec.message_id}'").strip() == "0"

    dry = goalstream(stack, "deadletter", "replay", "--id", "dl-test-2", "--dry-run")
    assert dry.returncode == 0 and "would send dl-test-2 to goalstream.events" in dry.stdout
    out = goalstream(stack, "deadletter", "replay", "--id", "dl-test-2")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: stack.sql(f"SELECT name FROM events WHERE message_id = '{rec.message_id}'").strip() == "replayed")


def test_replay_needs_a_selection(stack):
    out = goalstream(stack, "deadletter", "replay")
    assert out.returncode == 2 and "--id or --stage" in out.stderr
