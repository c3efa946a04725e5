"""The exact-dedup filter: never "absent" for an id it holds, few false "perhaps", and the
hash it computes is the one ClickHouse computes for its seed."""

import numpy as np

from stream_processors.storedids import StoredIds, key_hashes


def test_no_false_negatives_and_few_false_positives_at_capacity():
    rng = np.random.default_rng(7)
    held = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    f = StoredIds(capacity=len(held))
    for i in range(0, len(held), 5000):  # as the sink adds them, batch by batch
        f.add(held[i : i + 5000])
    assert f.maybe(held).all()
    others = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    others = others[~np.isin(others, held)]
    assert f.maybe(others).mean() < 0.005
    assert not f.full and f.nbytes == f.capacity * 2  # 16 bits per id at capacity


def test_seeded_at_once_equals_added_in_batches():
    rng = np.random.default_rng(8)
    held = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    a, b = StoredIds(held), StoredIds(capacity=2 * len(held))
    for i in range(0, len(held), 777):
        b.add(held[i : i + 777])
    assert np.array_equal(a.words, b.words)


def test_full_past_capacity():
    f = StoredIds(capacity=10)
    f.add(np.arange(1 << 20, dtype=np.uint32))
    assert not f.full
    f.add(np.arange(1, dtype=np.uint32))
    assert f.full


async def test_the_key_hash_is_clickhouses(warehouse):
    keys = [("acme", "m1"), ("ws-ü", "550e8400-e29b-41d4-a716-446655440000"), ("", "")]
    raw = await warehouse.raw(
        "SELECT CRC32(concat(w, '\\0', m)) FROM values('w String, m String', "
        + ", ".join(f"('{w}', '{m}')" for w, m in keys) + ")", "CSV")
    assert [int(x) for x in raw.split()] == key_hashes(keys).tolist()
