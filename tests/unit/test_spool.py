"""The write-ahead spool (ingest_gateway/spool.py): records in, fsynced in groups, reported
once each in seq order, read back after a crash (torn tails cut off, corruption skipped),
released segment by segment, one owner per directory, and a failed disk refusing more."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

import pytest

from ingest_gateway import spool as spool_mod
from ingest_gateway.spool import Entry, Spool, SpoolError, SpoolLocked


def rec(i: int, *, key: bool = True, headers: bool = True):
    return (
        "events.raw" if i % 2 else "événements",
        f"k{i}".encode() if key else None,
        f"value-{i}".encode() * (1 + i % 5),
        [("content-type", b"avro"), ("n", str(i).encode())] if headers else [],
    )


def same(entry: Entry, item) -> bool:
    topic, key, value, headers = item
    return (entry.topic, entry.key, entry.value, entry.headers) == (topic, key, value, tuple(tuple(h) for h in headers))


def segments(d):
    return sorted(p for p in d.iterdir() if p.suffix == ".wal")


async def opened(d, **kw) -> Spool:
    s = Spool(d, **kw)
    assert await s.open() == []
    return s


async def test_round_trip(tmp_path):
    items = [rec(i, key=i % 3 != 0, headers=i % 4 != 0) for i in range(20)] + [("t", None, b"", [])]
    s = await opened(tmp_path / "spool")
    assert await s.append([]) == []
    entries = await s.append(items)
    assert [e.seq for e in entries] == list(range(1, 22))
    assert all(same(e, it) for e, it in zip(entries, items, strict=True))
    assert s.last_seq == 21 and s.released_seq == 0
    assert await s.read(0) == entries
    assert await s.read(10) == entries[10:]
    assert await s.read(10, limit=3) == entries[10:13]
    assert await s.read(21) == []
    st = s.stats()
    assert st["segments"] == 1 and st["unreleased"] == 21 and 0 < st["bytes"] <= os.path.getsize(segments(tmp_path / "spool")[0])  # frames, then zeros written ahead
    await s.close()

    s = Spool(tmp_path / "spool")
    assert await s.open() == entries
    assert s.last_seq == 21
    await s.close()


async def test_bad_record_spends_no_seq(tmp_path):
    s = await opened(tmp_path)
    with pytest.raises(ValueError):
        await s.append([rec(1), ("t", None, "not bytes", [])])
    with pytest.raises(ValueError):
        await s.append([("t" * 70_000, None, b"v", [])])
    assert [e.seq for e in await s.append([rec(1)])] == [1]
    await s.close()


async def test_seq_monotonic_across_reopen_and_full_release(tmp_path):
    s = await opened(tmp_path)
    await s.append([rec(i) for i in range(5)])
    await s.close()

    s = Spool(tmp_path)
    assert [e.seq for e in await s.open()] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await s.append([rec(5)])] == [6]
    # The recovered segment goes; the one being written stays until it rolls (no new file per group).
    assert await s.release(6) == 1
    assert [p.name for p in segments(tmp_path)] == [f"{6:020d}.wal"] and s.stats()["unreleased"] == 0
    assert [e.seq for e in await s.append([rec(6)])] == [7]  # the same segment
    assert await s.release(7) == 0
    await s.close()

    s = Spool(tmp_path)
    assert await s.open() == []
    assert s.released_seq == 7 and s.last_seq == 7
    assert [e.seq for e in await s.append([rec(7)])] == [8]
    assert segments(tmp_path)[0].name == f"{8:020d}.wal"
    await s.close()


async def test_group_commit(tmp_path, monkeypatch):
    real = os.fdatasync
    calls = []

    def counting(fd):
        calls.append(fd)
        time.sleep(0.002)  # a slow disk, so that appends pile up behind each sync
        return real(fd)

    monkeypatch.setattr(spool_mod.os, "fdatasync", counting)
    s = await opened(tmp_path)
    waiting = [asyncio.ensure_future(s.append([rec(i)])) for i in range(100)]
    await asyncio.sleep(0)
    assert s.pending == 100 and s.last_seq == 0
    results = await asyncio.gather(*waiting)
    assert s.pending == 0 and s.last_seq == 100
    assert [r[0].seq for r in results] == list(range(1, 101))  # call order
    assert len(calls) <= 5, len(calls)
    assert s.stats()["syncs"] == len(calls) + 1  # + the directory, for the new segment

    # Appends arriving while a sync runs go out together in the next one.
    calls.clear()
    first = asyncio.ensure_future(s.append([rec(0)]))
    await asyncio.sleep(0.0005)
    rest = await asyncio.gather(*(s.append([rec(i)]) for i in range(50)))
    await first
    assert len(rest) == 50 and len(calls) <= 3, len(calls)
    await s.close()


async def test_on_durable_in_order_exactly_once_before_append_returns(tmp_path):
    seen: list[Entry] = []
    groups = []

    def on_durable(entries):
        groups.append(len(entries))
        seen.extend(entries)

    s = await opened(tmp_path, on_durable=on_durable)

    async def one(i):
        entries = await s.append([rec(i * 10 + j) for j in range(i % 7 + 1)])
        reported = {e.seq for e in seen}
        assert all(e.seq in reported for e in entries)  # reported before the append returned
        return entries

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for _ in range(10):
        results.append(await one(3))
    expected = sorted((e for r in results for e in r), key=lambda e: e.seq)
    assert seen == expected
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert len(groups) < 200
    await s.close()


async def test_on_durable_failure_does_not_break_the_spool(tmp_path, caplog):
    def boom(entries):
        raise RuntimeError("relay bug")

    s = await opened(tmp_path, on_durable=boom)
    with caplog.at_level(logging.ERROR, logger="goalstream.spool"):
        assert [e.seq for e in await s.append([rec(1)])] == [1]
    assert "on_durable failed" in caplog.text and s.broken is None
    assert [e.seq for e in await s.append([rec(2)])] == [2]
    await s.close()


async def test_torn_tail_is_cut_off(tmp_path, caplog):
    s = await opened(tmp_path)
    kept = await s.append([rec(i) for i in range(10)])
    size = s.stats()["bytes"]  # where the frames end (zeros, written ahead, follow)
    await s.close()
    (path,) = segments(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(size - 5)  # the last frame loses its end...
        f.seek(0, 2)
        f.write(b"\x00\x00\x01\x00garbage")  # ...and something follows it

    s = Spool(tmp_path)
    with caplog.at_level(logging.WARNING, logger="goalstream.spool"):
        recovered = await s.open()
    assert recovered == kept[:9]
    assert "torn tail" in caplog.text and "bytes truncated" in caplog.text
    assert path.stat().st_size < size - 5  # truncated to the last intact frame
    # The cut bytes may have held seqs that were reported (bit rot, not a torn write): not reused.
    new = await s.append([rec(10), rec(11)])
    assert new[0].seq > 10 and new[1].seq == new[0].seq + 1
    await s.close()

    s = Spool(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="goalstream.spool"):
        assert await s.open() == kept[:9] + new
    assert caplog.text == ""  # the cut was clean
    await s.close()


async def test_torn_first_frame_leaves_no_empty_segment(tmp_path):
    s = await opened(tmp_path)
    await s.append([rec(1)])
    await s.close()
    (path,) = segments(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(6)
    s = Spool(tmp_path)
    assert await s.open() == []
    assert segments(tmp_path) == []
    assert [e.seq for e in await s.append([rec(2)])] == [2]
    await s.close()


async def test_corruption_in_an_older_segment(tmp_path, caplog):
    s = await opened(tmp_path, segment_bytes=1)  # every group its own segment
    groups = [await s.append([rec(g * 3 + i) for i in range(3)]) for g in range(3)]
    await s.close()
    paths = segments(tmp_path)
    assert [p.name for p in paths] == [f"{seq:020d}.wal" for seq in (1, 4, 7)]
    # Flip a byte in the value of the middle segment's second frame.
    first_frame = 8 + int.from_bytes(paths[1].read_bytes()[:4], "big")
    with open(paths[1], "r+b") as f:
        f.seek(first_frame + 40)
        b = f.read(1)
        f.seek(first_frame + 40)
        f.write(bytes([b[0] ^ 0xFF]))

    s = Spool(tmp_path)
    with caplog.at_level(logging.WARNING, logger="goalstream.spool"):
        recovered = await s.open()
    assert recovered == groups[0] + groups[1][:1] + groups[2]
    assert any(r.levelno == logging.ERROR and "crc mismatch" in r.getMessage() for r in caplog.records)
    assert [e.seq for e in await s.append([rec(0)])] == [10]
    # The damaged segment counts as holding everything below the next one: releasing 6 deletes it.
    assert await s.release(5) == 1
    assert await s.release(6) == 1
    assert [p.name for p in segments(tmp_path)] == [f"{seq:020d}.wal" for seq in (7, 10)]
    await s.close()


async def test_release_deletes_the_released_prefix_and_the_watermark_survives(tmp_path):
    s = await opened(tmp_path, segment_bytes=1)
    for g in range(4):
        await s.append([rec(g * 2), rec(g * 2 + 1)])  # segments 1-2, 3-4, 5-6, 7-8
    assert s.stats()["segments"] == 4
    assert await s.release(3) == 1  # segment 3-4 still holds 4
    assert s.released_seq == 3 and s.stats()["unreleased"] == 5
    assert await s.release(2) == 0 and s.released_seq == 3  # lower: ignored
    assert await s.release(6) == 2
    assert [p.name for p in segments(tmp_path)] == [f"{7:020d}.wal"]
    assert (tmp_path / "released").read_text().strip() == "6"
    assert await s.read(0) == await s.read(6)  # released entries are gone from disk
    await s.close()

    s = Spool(tmp_path)
    assert [e.seq for e in await s.open()] == [7, 8]
    assert s.released_seq == 6
    # Never past what is durable: a watermark above future seqs would drop them at the next open.
    await s.release(1000)
    assert s.released_seq == 8
    assert [e.seq for e in await s.append([rec(9)])] == [9]
    await s.close()
    s = Spool(tmp_path)
    assert [e.seq for e in await s.open()] == [9]
    await s.close()


async def test_open_deletes_segments_a_crash_left_behind_release(tmp_path):
    s = await opened(tmp_path, segment_bytes=1)
    for g in range(3):
        await s.append([rec(g)])
    await s.close()
    (tmp_path / "released").write_text("2\n")  # the watermark was written, the unlinks never ran
    s = Spool(tmp_path)
    assert [e.seq for e in await s.open()] == [3]
    assert [p.name for p in segments(tmp_path)] == [f"{3:020d}.wal"]
    await s.close()


async def test_segment_rolls_by_age(tmp_path):
    s = await opened(tmp_path, segment_age_s=0.05)
    await s.append([rec(1)])
    await s.append([rec(2)])
    await asyncio.sleep(0.08)
    await s.append([rec(3)])
    assert [p.name for p in segments(tmp_path)] == [f"{1:020d}.wal", f"{3:020d}.wal"]
    await s.close()


async def test_read_while_appending(tmp_path):
    s = await opened(tmp_path, segment_bytes=4096)
    done = asyncio.Event()

    async def writer():
        for i in range(150):
            await asyncio.gather(*(s.append([rec(i * 4 + j)]) for j in range(4)))
        done.set()

    task = asyncio.ensure_future(writer())
    reads = 0
    while not done.is_set():
        before = s.last_seq
        got = await s.read(0)
        assert [e.seq for e in got] == list(range(1, len(got) + 1))  # whole frames, no gaps
        assert len(got) >= before  # everything durable at the call
        reads += 1
        await asyncio.sleep(0)
    await task
    assert reads > 5
    assert [e.seq for e in await s.read(0)] == list(range(1, 601))
    assert s.stats()["segments"] > 1
    await s.close()


async def test_second_spool_on_the_directory_is_locked_out(tmp_path):
    s = await opened(tmp_path)
    other = Spool(tmp_path)
    with pytest.raises(SpoolLocked, match=str(tmp_path)) as info:
        await other.open()
    assert f"pid {os.getpid()}" in str(info.value)
    third = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        await third.open()
    await third.close()  # a failed open leaves nothing to close
    await third.close()
    await s.close()
    assert await other.open() == []  # free again; a failed open may be retried
    await other.close()


async def test_write_failure_breaks_the_spool(tmp_path, monkeypatch):
    s = await opened(tmp_path)
    kept = await s.append([rec(1)])
    real = os.pwrite

    def failing(fd, data, offset):
        if fd == s._fd:
            real(fd, bytes(data[:7]), offset)  # half a frame reaches the file
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(spool_mod.os, "pwrite", failing)
    results = await asyncio.gather(*(s.append([rec(i)]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, SpoolError) for r in results)
    assert s.pending == 0
    assert "No space left" in s.broken
    with pytest.raises(SpoolError, match="broken"):
        await s.append([rec(9)])
    assert s.last_seq == 1
    monkeypatch.undo()
    await s.close()

    s = Spool(tmp_path)
    assert await s.open() == kept  # the half frame is cut off
    await s.close()


async def test_close_is_bounded_and_idempotent(tmp_path, monkeypatch):
    never = Spool(tmp_path / "never")
    await never.close()
    await never.close()

    stuck = threading.Event()
    real = os.fdatasync

    def hanging(fd):
        stuck.wait(5)
        return real(fd)

    s = await opened(tmp_path / "slow", close_timeout_s=0.3)
    monkeypatch.setattr(spool_mod.os, "fdatasync", hanging)
    pending = asyncio.ensure_future(s.append([rec(1)]))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await s.close()
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(SpoolError, match="closed"):
        await pending
    with pytest.raises(SpoolError, match="closed"):
        await s.append([rec(2)])
    await s.close()
    # The directory was given up although the spool thread is still stuck.
    again = Spool(tmp_path / "slow")
    await again.open()
    stuck.set()
    await again.close()


async def test_close_waits_for_pending_appends(tmp_path):
    seen = []
    s = await opened(tmp_path, on_durable=seen.extend)
    pending = [asyncio.ensure_future(s.append([rec(i)])) for i in range(20)]
    await asyncio.sleep(0)
    await s.close()
    assert all(p.done() and not p.exception() for p in pending)
    assert len(seen) == 20
    s = Spool(tmp_path)
    assert len(await s.open()) == 20
    await s.close()


async def test_unopened_spool_refuses(tmp_path):
    s = Spool(tmp_path)
    with pytest.raises(SpoolError, match="not open"):
        await s.append([rec(1)])
    with pytest.raises(SpoolError, match="not open"):
        await s.read(0)
    with pytest.raises(SpoolError, match="not open"):
        await s.release(1)
    await s.close()
    with pytest.raises(SpoolError, match="closed"):
        await s.open()
