"""goalstream import's pure parts: format detection, decoding (same refusals as the API),
derived ids, CSV row reading, checkpoints and resume, all without Kafka (a fake publisher
stands in for the producer; the integration test uses the real stack)."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from ingest_gateway import errors
from ingest_gateway.cli import importer


def _write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


SEG = (
    '{"type":"track","userId":"u1","event":"Signed Up","messageId":"m1","timestamp":"2024-01-02T03:04:05Z"}\n'
    '{"type":"identify","userId":"u1","traits":{"email":"a@b.c"}}\n'
    '{"type":"track","userId":"u2"}\n'
    "not json\n"
)


def test_detect_formats(tmp_path):
    assert importer.detect(tmp_path / "x.jsonl", b'{"type":"track","userId":"u"}') == ("segment", "json")
    assert importer.detect(tmp_path / "x.jsonl.gz", b'{"type":"person","action":"identify","identifiers":{"id":"1"}}') == ("customerio", "json")
    assert importer.detect(tmp_path / "x.csv", b"id,email,cio_id,created_at") == ("customerio", "csv")
    assert importer.detect(tmp_path / "x.csv", b"customer_id,name,timestamp") == ("events", "csv")
    assert importer.detect(tmp_path / "x.csv", b"customer_id,plan") == ("customers", "csv")
    assert importer.detect(tmp_path / "x.txt", b'{"customer_id":"1","event":"e"}') == ("events", "json")


def test_refusals_match_the_api():
    with pytest.raises(errors.InvalidRequest) as exc:
        importer.decode_line("segment", "json", "acme", b'{"type":"track","userId":"u2"}\n', None, 0)
    assert exc.value.detail == "event_not_defined"  # what POST /v1/track answers
    with pytest.raises(errors.InvalidJSON):
        importer.decode_line("segment", "json", "acme", b"not json\n", None, 0)
    with pytest.raises(errors.LimitExceeded):
        importer.decode_line("segment", "json", "acme", b'{"a":"' + b"x" * 40000 + b'"}', None, 0)


def test_ids_kept_or_derived_deterministically():
    line = b'{"type":"track","userId":"u1","event":"E"}\n'
    a = importer.decode_line("segment", "json", "acme", line, None, 1)[0].message_id
    b = importer.decode_line("segment", "json", "acme", line, None, 2)[0].message_id
    assert a == b == importer.derived_id("acme", line)
    assert importer.derived_id("other", line) != a
    own = importer.decode_line("segment", "json", "acme", b'{"type":"track","userId":"u","event":"E","messageId":"m9"}', None, 1)
    assert own[0].message_id == "m9"
    cio = importer.decode_line("customerio", "csv", "acme", b"x", {"customer_id": "c1", "name": "Paid", "id": "ev-1", "timestamp": "1700000000", "data": '{"v":1}'}, 1)
    assert cio[0].message_id == "ev-1" and cio[0].value["timestamp"] == 1_700_000_000_000


def test_customerio_people_and_plain_rows():
    recs = importer.decode_line("customerio", "csv", "acme", b"r1", {"id": "c1", "email": "c1@x.io", "created_at": "1700000000", "cio_id": "abc"}, 5)
    assert recs[0].value["customer_id"] == "c1" and recs[0].value["created_at"] == 1_700_000_000_000
    assert "cio_id" not in json.loads(recs[0].value["attributes"])
    ev = importer.decode_line("events", "csv", "acme", b"r2", {"customer_id": "u", "name": "Bought", "timestamp": "1700000000", "prop_plan": "pro", "prop_n": "3"}, 5)
    assert ev[0].value["name"] == "Bought" and json.loads(ev[0].value["properties"]) == {"plan": "pro", "n": "3"}
    cu = importer.decode_line("customers", "json", "acme", b'{"customer_id":"u","attributes":{"plan":"pro"}}', None, 5)
    assert cu[0].value["customer_id"] == "u" and json.loads(cu[0].value["attributes"]) == {"plan": "pro"}


def test_csv_rows_with_multiline_cells_and_offsets(tmp_path):
    p = _write(tmp_path / "e.csv", 'customer_id,name,prop_note\nu1,A,"two\nlines"\nu2,B,x\n')
    lines = list(importer.read_lines(p, "csv"))
    assert [(l.number, l.row["customer_id"]) for l in lines] == [(2, "u1"), (4, "u2")]
    assert lines[0].row["prop_note"] == "two\nlines"
    again = list(importer.read_lines(p, "csv", lines[0].end, 4))
    assert [l.row["customer_id"] for l in again] == ["u2"]


class FakeProducer:
    def __init__(self, fail_after: int | None = None):
        self.sent: list = []
        self.fail_after = fail_after

    async def publish(self, records, batched=False):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker gone")
        self.sent.extend(records)
        return {}


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz"])
def test_import_checkpoint_and_resume(tmp_path, name):
    p = _write(tmp_path / name, SEG + "".join(f'{{"type":"track","userId":"u","event":"E{i}"}}\n' for i in range(10)))
    data = tmp_path / "var"
    prod = FakeProducer(fail_after=4)
    with pytest.raises(ConnectionError):
        asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=data, batch_size=2))
    assert len(prod.sent) == 4
    prod.fail_after = None
    s = asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=data, batch_size=2))
    ids = [r.message_id for r in prod.sent]
    assert len(ids) == 12 and len(set(ids)) == 12  # nothing sent twice, nothing lost
    assert s.refused == 2 and s.lines == 14
    refusals = [json.loads(x) for x in (data / "import").glob("*.refusals.jsonl").__next__().read_text().splitlines()]
    assert [r["line"] for r in refusals] == [3, 4]
    # a third run finds the checkpoint at the end; --restart sends the same ids again
    s3 = asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=data))
    assert s3.records == 12 and len(prod.sent) == 12
    asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=data, restart=True))
    assert [r.message_id for r in prod.sent[12:]] == ids


def test_interrupt_stops_after_the_batch(tmp_path):
    p = _write(tmp_path / "s.jsonl", "".join(f'{{"type":"track","userId":"u","event":"E{i}"}}\n' for i in range(10)))
    stop = asyncio.Event()
    stop.set()
    prod = FakeProducer()
    with pytest.raises(importer.Interrupted):
        asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=tmp_path, batch_size=3, stop=stop))
    assert len(prod.sent) == 3
    asyncio.run(importer.import_file(p, fmt=None, workspace="acme", producer=prod, data_dir=tmp_path, batch_size=3))
    assert len(prod.sent) == 10


def test_broken_pipe_is_quiet(monkeypatch):
    from ingest_gateway import cli

    def boom(argv=None):
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_main", boom)
    monkeypatch.setattr(cli.os, "dup2", lambda a, b: None)
    assert cli.main([]) == 141
