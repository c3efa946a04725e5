"""The write-ahead spool: encoded Kafka records on local disk, between the client's 2xx and the warehouse.

What flows through it: the gateway appends already-encoded records (topic, key, value,
headers) and answers its client once ``append`` returns, i.e. once they are fsynced. Each
durable group goes to ``on_durable`` (the relay, which publishes it to the broker in seq
order). When ClickHouse holds records (and what was derived from them), ``release``
deletes the segments they lived in. After a restart of the process (``open``) or of the
broker (``read``) the unreleased records come back and are published again: a record
acknowledged to a client survives a crash, at the price of being published twice
(at least once, never at most once).

On disk, in the spool directory: ``LOCK`` (an flock: one spool per directory), ``released``
(the watermark, decimal text) and segment files ``<first_seq:020d>.wal``. A segment is a run
of frames ``[u32 payload length][u32 crc32(payload)][payload]``, payload = seq u64, topic
(u16 length + utf-8), key (i32 length, -1 for None, + bytes), value (u32 length + bytes),
header count u16, then per header (u16 length + utf-8 name, u32 length + bytes); all
big-endian. A crash mid-write leaves a torn tail on the newest segment; ``open`` cuts it off.

Every file operation runs in one dedicated thread: no blocking I/O on the event loop, and a
single thread keeps writes, reads and deletions in one order without locks. The segment
table lives in memory (first seq, last seq, bytes), so ``release`` needs no reads.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("goalstream.spool")

_FRAME = struct.Struct(">II")  # payload length, crc32 of the payload
_SEQ_TOPIC = struct.Struct(">QH")  # seq, topic length
_KEYLESS = struct.Struct(">iI")  # key length -1, value length: one pack for the common keyless record
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_NO_HEADERS = _U16.pack(0)
_MIN_PAYLOAD = 8 + 2 + 4 + 4 + 2
# A length beyond this is garbage, not a record: the broker would refuse such a record anyway.
_MAX_PAYLOAD = 1 << 30
_SUFFIX = ".wal"
_LOCK = "LOCK"
_WATERMARK = "released"
_WATERMARK_TMP = "released.tmp"
# Segments are written ahead with zeros, this much at a time, and frames then overwrite them:
# an fdatasync that does not change the file's size has no metadata to commit, so it does not
# wait behind the filesystem journal (measured under other processes' writes: p99 0.3 ms
# instead of 30 ms for an append). A zero frame header marks the clean end of the data.
_PREFILL = 1 << 20


class Entry(NamedTuple):
    seq: int  # global, monotonic, never reused across restarts of the same directory
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class SpoolError(Exception):
    """The spool cannot take or keep records (a disk failure, closed, not open)."""

    retriable = False


class SpoolLocked(SpoolError):
    """Another process (or another Spool object) holds the directory."""


class _Segment:
    __slots__ = ("first", "last", "size", "path", "created", "zeroed")

    def __init__(self, first: int, last: int, size: int, path: Path, created: float) -> None:
        self.first = first  # the file's name; entries are >= first
        self.last = last  # highest seq it holds (first - 1 while empty); an upper bound after corruption
        self.size = size
        self.path = path
        self.created = created
        self.zeroed = size  # the file's length: frames, then zeros written ahead of them


def _parse(data: bytes, p: int, end: int) -> Entry:
    seq, n = _SEQ_TOPIC.unpack_from(data, p)
    p += 10
    topic = data[p : p + n].decode()
    p += n
    (n,) = _I32.unpack_from(data, p)
    p += 4
    if n == -1:
        key = None
    elif n < 0:
        raise ValueError(f"key length {n}")
    else:
        key = data[p : p + n]
        p += n
    (n,) = _U32.unpack_from(data, p)
    p += 4
    value = data[p : p + n]
    p += n
    (count,) = _U16.unpack_from(data, p)
    p += 2
    headers = []
    for _ in range(count):
        (n,) = _U16.unpack_from(data, p)
        p += 2
        name = data[p : p + n].decode()
        p += n
        (n,) = _U32.unpack_from(data, p)
        p += 4
        headers.append((name, data[p : p + n]))
        p += n
    if p != end:  # a field ran past the frame (or stopped short of it): the lengths are not the record's
        raise ValueError(f"fields end at {p - end:+d} bytes from the frame end")
    return Entry(seq, topic, key, value, tuple(headers))


def _decode(data: bytes, prev: int) -> tuple[list[Entry], int, str | None]:
    """The complete, intact entries of one segment; how many bytes they span; what stopped the scan."""
    entries: list[Entry] = []
    n = len(data)
    view = memoryview(data)
    pos = 0
    while pos < n:
        if n - pos < 8:
            return entries, pos, f"short frame header ({n - pos} bytes)"
        length, crc = _FRAME.unpack_from(data, pos)
        if length == 0 and crc == 0 and data.count(0, pos) == n - pos:
            return entries, pos, None  # the zeros written ahead: the clean end
        if length < _MIN_PAYLOAD or length > _MAX_PAYLOAD:
            return entries, pos, f"bad frame length {length}"
        start = pos + 8
        end = start + length
        if end > n:
            return entries, pos, f"short frame ({n - start} of {length} payload bytes)"
        if zlib.crc32(view[start:end]) != crc:
            return entries, pos, "crc mismatch"
        try:
            entry = _parse(data, start, end)
        except (struct.error, ValueError) as exc:  # ValueError covers a bad utf-8 topic or header name
            return entries, pos, f"malformed payload ({exc})"
        if entry.seq <= prev:
            return entries, pos, f"seq {entry.seq} out of order after {prev}"
        prev = entry.seq
        entries.append(entry)
        pos = end
    return entries, pos, None


class Spool:
    """One spool directory, owned by one event loop (and one process: the LOCK file).

    ``open`` recovers and returns the unreleased entries; ``append`` returns once its
    entries are fsynced, after ``on_durable`` got them (each entry once, in seq order, on
    the loop); ``read`` returns durable entries again; ``release`` deletes what is stored
    downstream; ``close`` waits (bounded) for pending appends. A failed write breaks the
    spool for good (``broken``): the next ``open`` of the directory cuts off what the
    failure left half-written.
    """

    def __init__(
        self,
        directory: Path,
        *,
        on_durable: Callable[[list[Entry]], None] | None = None,
        fsync: bool = True,
        segment_bytes: int = 8 * 1024 * 1024,
        segment_age_s: float = 30.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._dir = Path(directory)
        self._on_durable = on_durable
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._segment_age_s = segment_age_s
        self._close_timeout_s = close_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._broken: str | None = None
        # Owned by the spool thread (opened, written, closed only there).
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self._cur: _Segment | None = None
        self._segments: list[_Segment] = []
        self._syncs = 0
        # Owned by the event loop.
        self._next_seq = 1
        self._last_durable = 0
        self._released = 0
        self._topics: dict[str, bytes] = {}
        self._pending_parts: list[bytes] = []
        self._pending_entries: list[Entry] = []
        self._pending_futs: list[asyncio.Future[None]] = []
        self._inflight = 0  # entries in the write+fsync running now
        self._writing = False
        self._writer: asyncio.Task[None] | None = None

    # -- properties -------------------------------------------------------------------

    @property
    def released_seq(self) -> int:
        return self._released

    @property
    def last_seq(self) -> int:
        return self._last_durable

    @property
    def broken(self) -> str | None:
        return self._broken

    @property
    def pending(self) -> int:
        """Entries appended and not yet durable (queued, or being written now)."""
        return self._inflight + len(self._pending_entries)

    def stats(self) -> dict:
        segments = list(self._segments)  # the spool thread may be appending to it
        return {
            "segments": len(segments),
            "bytes": sum(s.size for s in segments),
            "unreleased": self._last_durable - self._released,
            "syncs": self._syncs,
        }

    # -- open / recovery --------------------------------------------------------------

    async def open(self) -> list[Entry]:
        """Lock the directory, recover it, return the unreleased entries in seq order."""
        if self._closed:
            raise SpoolError(f"spool {self._dir} is closed")
        if self._executor is not None:
            raise SpoolError(f"spool {self._dir} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        try:
            entries, highest, last_durable, released = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._open_sync
            )
        except BaseException:
            # Leave the object as if open() never ran: close() is a no-op, open() may be tried again.
            executor, self._executor = self._executor, None
            executor.submit(self._close_fds)
            executor.shutdown(wait=False)
            raise
        self._released = released
        self._last_durable = last_durable
        self._next_seq = highest + 1
        return entries

    def _open_sync(self) -> tuple[list[Entry], int, int, int]:
        d = self._dir
        try:
            d.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(d / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot open spool directory {d}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(lock_fd)
            os.close(lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolLocked(f"spool directory {d} is in use{holder} (another goalstream on the same data dir?)") from None
            raise SpoolError(f"cannot lock spool directory {d}: {exc}") from exc
        self._lock_fd = lock_fd
        try:
            # The holder's pid, for the message the next contender gets.
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            self._dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._recover()
        except OSError as exc:
            self._close_fds()
            raise SpoolError(f"cannot recover spool {d}: {exc}") from exc
        except BaseException:
            self._close_fds()
            raise

    def _recover(self) -> tuple[list[Entry], int, int, int]:
        d = self._dir
        self._segments = []  # an earlier open() may have been cancelled half way
        released = self._read_watermark()
        names: list[tuple[int, Path]] = []
        with os.scandir(d) as it:
            for item in it:
                if item.name.endswith(_SUFFIX) and item.name[: -len(_SUFFIX)].isdigit():
                    names.append((int(item.name[: -len(_SUFFIX)]), Path(item.path)))
                elif item.name == _WATERMARK_TMP:  # a watermark write that did not finish
                    os.unlink(item.path)
        names.sort()
        highest = released  # every seq ever handed out is <= this (names count: a torn first frame had seq == name)
        last_durable = released
        unreleased: list[Entry] = []
        now = time.monotonic()
        for i, (first, path) in enumerate(names):
            newest = i == len(names) - 1
            with open(path, "rb") as f:
                data = f.read()
            entries, valid, problem = _decode(data, first - 1)
            size = size_before = len(data) if problem is not None else valid
            last = entries[-1].seq if entries else first - 1
            if problem is not None:
                if newest:
                    # A crash mid-write: what follows the last intact frame was never acknowledged.
                    log.warning(
                        "spool %s: torn tail in %s (%s): %d bytes truncated, %d intact entries kept",
                        d, path.name, problem, size - valid, len(entries),
                    )
                    os.truncate(path, valid)
                    if self._fsync:
                        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                    size = valid
                else:
                    log.error(
                        "spool %s: %s at byte %d of %s (an older segment): %d entries before it kept, "
                        "the remaining %d bytes of that segment skipped",
                        d, problem, valid, path.name, len(entries), size - valid,
                    )
                    # The skipped entries are all below the next segment's first seq.
                    last = max(last, names[i + 1][0] - 1)
            highest = max(highest, first, last)
            if newest and problem is not None:
                # The cut bytes held at most this many frames, whose seqs may have been reported
                # (bit rot rather than a torn write): skip past them rather than reuse them.
                highest = max(highest, last + -(-(size_before - valid) // (8 + _MIN_PAYLOAD)))
            if entries:
                last_durable = max(last_durable, entries[-1].seq)
            if newest and not entries:
                os.unlink(path)  # nothing intact in it; the next append starts a new segment anyway
                continue
            self._segments.append(_Segment(first, last, size, path, now))
            if last > released:
                unreleased.extend(e for e in entries if e.seq > released)
        # Segments released before a crash cut the unlinks short.
        n = self._released_prefix(released)
        if n:
            if n == len(self._segments):
                self._write_watermark(released, durable=True)
            self._unlink_prefix(n)
        return unreleased, highest, last_durable, released

    def _read_watermark(self) -> int:
        path = self._dir / _WATERMARK
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        try:
            value = int(text.strip())
            if value < 0:
                raise ValueError(value)
        except ValueError:
            log.warning("spool %s: unreadable watermark %r; re-publishing every segment", self._dir, text[:40])
            return 0
        return value

    # -- append (group commit) --------------------------------------------------------

    async def append(self, items: Sequence[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]]) -> list[Entry]:
        """(topic, key, value, headers) each; returns their entries once fsynced (SpoolError if not)."""
        if self._broken is not None:
            raise SpoolError(f"spool {self._dir} is broken: {self._broken}")
        if self._closed or self._executor is None:
            raise SpoolError(f"spool {self._dir} is {'closed' if self._closed else 'not open'}")
        if not items:
            return []
        seq = self._next_seq
        topics = self._topics
        entries: list[Entry] = []
        parts: list[bytes] = []
        add = parts.append
        try:
            for topic, key, value, headers in items:
                tb = topics.get(topic)
                if tb is None:
                    tb = topics[topic] = topic.encode()
                if key is None:
                    body = [_SEQ_TOPIC.pack(seq, len(tb)), tb, _KEYLESS.pack(-1, len(value)), value]
                else:
                    body = [_SEQ_TOPIC.pack(seq, len(tb)), tb, _I32.pack(len(key)), key, _U32.pack(len(value)), value]
                if headers:
                    if type(headers) is not tuple:
                        headers = tuple(headers)
                    body.append(_U16.pack(len(headers)))
                    for name, hv in headers:
                        nb = name.encode()
                        body += (_U16.pack(len(nb)), nb, _U32.pack(len(hv)), hv)
                else:
                    headers = ()
                    body.append(_NO_HEADERS)
                payload = b"".join(body)
                add(_FRAME.pack(len(payload), zlib.crc32(payload)))
                add(payload)
                entries.append(Entry(seq, topic, key, value, headers))
                seq += 1
        except (struct.error, TypeError, ValueError, AttributeError) as exc:
            # A record the format cannot hold (or not bytes): nothing of this call is queued, no seq spent.
            raise ValueError(f"cannot spool record: {exc}") from exc
        # Seqs are taken here, synchronously, so they follow call order; the queue is in seq order too.
        self._next_seq = seq
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending_parts += parts
        self._pending_entries += entries
        self._pending_futs.append(fut)
        if not self._writing:
            self._writing = True
            self._writer = loop.create_task(self._drain(), name="spool-writer")
        # Cancelling the caller does not take the entries back: they are written (and reported) anyway.
        await fut
        return entries

    async def _drain(self) -> None:
        """The one writer: everything queued while a write+fsync ran goes out in the next one."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending_futs:
                parts, entries, futs = self._pending_parts, self._pending_entries, self._pending_futs
                self._pending_parts, self._pending_entries, self._pending_futs = [], [], []
                self._inflight = len(entries)
                try:
                    await loop.run_in_executor(self._executor, self._write_group, parts, entries[0].seq, entries[-1].seq)
                except asyncio.CancelledError:
                    self._inflight = 0
                    _fail(futs, SpoolError(f"spool {self._dir} closed before the write was durable"))
                    raise
                except Exception as exc:
                    # Part of the group may be on disk: nothing may follow it (the next open cuts it off).
                    reason = f"write failed: {exc}"
                    self._inflight = 0
                    self._broken = reason
                    log.error("spool %s: %s; refusing further appends", self._dir, reason)
                    error = SpoolError(f"spool {self._dir} is broken: {reason}")
                    _fail(futs, error)
                    _fail(self._pending_futs, error)
                    self._pending_parts, self._pending_entries, self._pending_futs = [], [], []
                    return
                # Together, so that last_seq - released_seq + pending never skips a beat.
                self._last_durable = entries[-1].seq
                self._inflight = 0
                if self._on_durable is not None:
                    try:
                        self._on_durable(entries)
                    except Exception:  # the records are durable regardless; the relay's bug is not the writers'
                        log.exception("spool %s: on_durable failed for seqs %d..%d", self._dir, entries[0].seq, entries[-1].seq)
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writing = False

    def _write_group(self, parts: list[bytes], first: int, last: int) -> None:
        seg = self._cur
        now = time.monotonic()
        if seg is None or seg.size >= self._segment_bytes or now - seg.created >= self._segment_age_s:
            if self._fd is not None:
                os.close(self._fd)  # every group in it was fsynced already
                self._fd = None
                self._cur = None
            path = self._dir / f"{first:020d}{_SUFFIX}"
            # O_EXCL: seqs are never reused, so neither are names; an existing file is a bug to surface.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            seg = self._cur = _Segment(first, first - 1, 0, path, now)
            self._segments.append(seg)
            if self._fsync:
                # The new name must survive a power cut too, or its fsynced data is unreachable.
                os.fsync(self._dir_fd)
                self._syncs += 1
        data = b"".join(parts)
        size = len(data)
        end = seg.size + size
        if end > seg.zeroed:
            # Past the zeros: write the next stretch of them with this group (one size change per MB).
            data += bytes(_PREFILL)
            seg.zeroed = end + _PREFILL
        view = memoryview(data)
        fd = self._fd
        offset = seg.size
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        if self._fsync:
            os.fdatasync(fd)
            self._syncs += 1
        seg.size = end
        seg.last = last

    # -- read / release ---------------------------------------------------------------

    async def read(self, after_seq: int, *, limit: int | None = None) -> list[Entry]:
        """Durable entries with after_seq < seq <= last_seq (as of this call), at most ``limit``.

        Everything above that last_seq still goes to ``on_durable`` later, so a relay that
        re-publishes from ``read`` and then follows ``on_durable`` sees each entry once.
        """
        if self._executor is None or self._closed:
            raise SpoolError(f"spool {self._dir} is {'closed' if self._closed else 'not open'}")
        cap = self._last_durable
        if after_seq >= cap:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read_sync, after_seq, cap, limit)

    def _read_sync(self, after: int, cap: int, limit: int | None) -> list[Entry]:
        # On the spool thread, so between two groups: the files hold whole, fsynced frames only.
        out: list[Entry] = []
        for seg in list(self._segments):
            if seg.last <= after or seg.first > cap:
                continue
            try:
                with open(seg.path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise SpoolError(f"cannot read spool segment {seg.path}: {exc}") from exc
            entries, _, _ = _decode(data, seg.first - 1)  # damage was reported by open()
            for e in entries:
                if e.seq > cap:
                    return out
                if e.seq > after:
                    out.append(e)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    async def release(self, upto_seq: int) -> int:
        """Entries <= upto_seq are stored downstream: delete the segments they fill; how many."""
        if self._executor is None or self._closed:
            raise SpoolError(f"spool {self._dir} is {'closed' if self._closed else 'not open'}")
        # Never past what is durable: a watermark above seqs still to come would drop them at the next open.
        upto = min(upto_seq, self._last_durable)
        if upto <= self._released:
            return 0
        self._released = upto
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._release_sync, upto)

    def _release_sync(self, upto: int) -> int:
        n = self._released_prefix(upto)
        everything = n > 0 and n == len(self._segments)
        # With no segment left the watermark is the only record of the highest seq handed out:
        # then (only) it is made durable, so seqs are not reused after a power cut.
        if not self._write_watermark(upto, durable=everything and self._fsync) and everything:
            n -= 1
        return self._unlink_prefix(n)

    def _released_prefix(self, upto: int) -> int:
        # Never the segment being written: deleting it would make the next append create a
        # file (a directory fsync, which waits on the filesystem's journal: tens of ms beside
        # ClickHouse's writes) for every group at low rates. It goes once it has rolled.
        n = 0
        for seg in self._segments:
            if seg.last > upto or seg is self._cur:
                break
            n += 1
        return n

    def _unlink_prefix(self, n: int) -> int:
        deleted = 0
        for seg in self._segments[:n]:  # never the segment being written (_released_prefix)
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("spool %s: cannot delete released segment %s: %s", self._dir, seg.path.name, exc)
                break
            deleted += 1
        del self._segments[:deleted]
        return deleted

    def _write_watermark(self, value: int, *, durable: bool) -> bool:
        tmp = self._dir / _WATERMARK_TMP
        try:
            with open(tmp, "w") as f:
                f.write(f"{value}\n")
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self._dir / _WATERMARK)
            if durable:
                os.fsync(self._dir_fd)
        except OSError as exc:
            # Losing it only means re-publishing more at the next start.
            log.warning("spool %s: cannot write the watermark: %s", self._dir, exc)
            return False
        return True

    # -- close ------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait (at most close_timeout_s) for pending appends, close the files, give up the lock."""
        if self._closed:
            return
        self._closed = True  # refuses appends from here on
        executor = self._executor
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout_s
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(writer), self._close_timeout_s)
            except TimeoutError:
                log.error("spool %s: pending appends not durable after %.1f s; closing anyway", self._dir, self._close_timeout_s)
                writer.cancel()
                error = SpoolError(f"spool {self._dir} closed before the write was durable")
                _fail(self._pending_futs, error)
                self._pending_parts, self._pending_entries, self._pending_futs = [], [], []
            except Exception:  # a write failure is delivered to its appends; anything else is a bug
                log.exception("spool %s: the writer failed", self._dir)
        closing = loop.run_in_executor(executor, self._close_fds)
        executor.shutdown(wait=False)
        try:
            await asyncio.wait_for(asyncio.shield(closing), max(0.0, deadline - loop.time()))
        except TimeoutError:
            # The spool thread is stuck in the kernel; give the directory up anyway (its files close when it returns).
            lock_fd, self._lock_fd = self._lock_fd, None
            if lock_fd is not None:
                os.close(lock_fd)

    def _close_fds(self) -> None:
        for name in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                try:
                    os.close(fd)  # closing the lock file releases the flock
                except OSError:
                    pass
        self._cur = None


def _fail(futs: list[asyncio.Future[None]], error: SpoolError) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(error)
            # A caller that gave up (cancelled) never retrieves it; do not warn about that.
            fut.exception()


def _read_holder(fd: int) -> str:
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return ""
    return f" (held by pid {pid})"
