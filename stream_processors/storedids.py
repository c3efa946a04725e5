"""Which (workspace, message_id) pairs ``events`` already holds: the events sink's exact dedup.

What flows: every id the sink is about to insert is hashed (``key_hashes``: CRC32 of
``workspace \\0 message_id``, the same value ClickHouse computes with ``CRC32(concat(...))``)
and tested against a Bloom filter of every id stored, seeded from ClickHouse when the sink
starts or is handed partitions (``SEED_SQL``) and extended with each batch once it is stored.
A Bloom filter never says "absent" for an id it holds, so an id it calls absent is new; the
few it calls present (true resends, plus ~0.1-2% false positives) are looked up in ClickHouse
(``EXISTING_SQL``, served by ``events``' bloom-filter skip index on message_id) and only
those found are dropped. So a resend is recognised however long after, across restarts and
rebalances, and nothing new is ever dropped on a hash collision.

Memory: 2-4 bytes per stored id (the filter is sized for twice what it holds, 16
bits per id at capacity); past capacity it is rebuilt from ClickHouse at twice the size.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np

# The value ``key_hashes`` computes, for every id stored, as little-endian UInt32s.
SEED_SQL = "SELECT CRC32(concat(workspace, '\\0', message_id)) FROM events"  # read as RowBinary
# The ids of one workspace, out of those given, that events holds.
EXISTING_SQL = (
    "SELECT DISTINCT message_id FROM events WHERE workspace = {ws:String} AND message_id IN {ids:Array(String)}"
)

_BITS_PER_KEY = 16  # ~0.3% false positives at capacity (measured: tests/unit/test_storedids.py)
_PROBES = 6  # bits per key, all in one 64-bit word: one random memory access per key
_MIN_CAPACITY = 1 << 20
_MAX_WORDS = (1 << 32) - 1  # the word index is a 32-bit value mapped onto the words
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)


def key_hashes(keys: Iterable[tuple[str, str]]) -> np.ndarray:
    crc = zlib.crc32
    return np.fromiter((crc(f"{w}\0{m}".encode()) for w, m in keys), dtype=np.uint32)


class StoredIds:
    """A register-blocked Bloom filter over 32-bit key hashes: each key sets ``_PROBES`` bits of
    one 64-bit word. (A classic one touched 10 random cache lines per key and took 7 s to
    seed 10M ids; this takes one.)"""

    def __init__(self, hashes: np.ndarray | None = None, *, capacity: int = 0):
        n = 0 if hashes is None else len(hashes)
        self.capacity = max(_MIN_CAPACITY, capacity, 2 * n)
        self.nwords = min(self.capacity * _BITS_PER_KEY // 64, _MAX_WORDS)
        self.words = np.zeros(self.nwords, dtype=np.uint64)
        self.count = 0
        if n:
            for i in range(0, n, 1 << 22):  # in slices: bounded temporaries
                self.add(hashes[i : i + (1 << 22)])

    @property
    def nbytes(self) -> int:
        return self.words.nbytes

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    def _probe(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per hash: the index of its word (a multiply-shift onto [0, nwords), no division) and
        the mask of its bits (6-bit fields of a second mix)."""
        with np.errstate(over="ignore"):
            x = hashes.astype(np.uint64) * _MIX1
            at = (((x >> np.uint64(32)) * np.uint64(self.nwords)) >> np.uint64(32)).astype(np.intp)
            y = (x ^ (x >> np.uint64(29))) * _MIX2
        one, six = np.uint64(1), np.uint64(63)
        mask = np.zeros(len(hashes), dtype=np.uint64)
        for i in range(_PROBES):
            mask |= one << ((y >> np.uint64(6 * i + 16)) & six)
        return at, mask

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        words = self.words
        at, mask = self._probe(hashes)
        # A fancy-index OR keeps one write per repeated word: write again those that lost.
        while len(at):
            words[at] |= mask
            lost = (words[at] & mask) != mask
            at, mask = at[lost], mask[lost]
        self.count += len(hashes)

    def maybe(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash: False = certainly never added; True = perhaps (look it up)."""
        if not len(hashes):
            return np.zeros(0, dtype=bool)
        at, mask = self._probe(hashes)
        return (self.words[at] & mask) == mask
