"""Writes N lines of Segment-format JSONL (track/identify/page, some without messageId) to
stdout or a file: the input of the `goalstream import` benchmark (tests/bench/import_bench.sh).

    python tests/bench/import_gen.py 1000000 > /tmp/segment-1m.jsonl
"""

from __future__ import annotations

import random
import sys

import orjson


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1_000_000
    out = open(argv[2], "wb") if len(argv) > 2 else sys.stdout.buffer
    rnd = random.Random(14)
    base = 1_700_000_000
    names = ["Signed Up", "Viewed Product", "Added to Cart", "Purchased", "Opened Email"]
    buf = []
    for i in range(n):
        uid = f"u{rnd.randrange(50_000)}"
        ts = base + i * 3
        r = rnd.random()
        if r < 0.1:
            msg = {"type": "identify", "userId": uid, "traits": {"email": f"{uid}@example.com", "plan": rnd.choice(["free", "pro"])}}
        elif r < 0.2:
            msg = {"type": "page", "userId": uid, "name": "Home", "properties": {"path": "/"}}
        else:
            msg = {"type": "track", "userId": uid, "event": rnd.choice(names), "properties": {"value": rnd.randrange(100)}}
        msg["timestamp"] = f"2023-{1 + (ts // 2_600_000) % 12:02d}-{1 + (ts // 86400) % 28:02d}T{(ts // 3600) % 24:02d}:{(ts // 60) % 60:02d}:{ts % 60:02d}Z"
        if i % 4:  # a quarter without messageId: their ids are derived from the line
            msg["messageId"] = f"bench-{i}"
        buf.append(orjson.dumps(msg))
        if len(buf) >= 10_000:
            out.write(b"\n".join(buf) + b"\n")
            buf.clear()
    if buf:
        out.write(b"\n".join(buf) + b"\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
