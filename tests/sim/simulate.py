"""Send a simulated population through the public Traitly API, and write its ground truth.

Flow: ``population.generate`` -> ``POST /api/v1/customer`` (every customer, batches of
1000) -> ``POST /api/v1/event`` (every event before ``now``, batches of 1000) -> the
gateway; and the truth file (one JSON object per customer: customer_id, cohort, plan,
p_true, and for scoring customers the true gain in p of one more of each action), which a
benchmark later compares with the served scores.

    python -m tests.sim.simulate --url http://127.0.0.1:8080 --token tk_live_123 \\
        --train 3000 --score 500 --seed 1 --truth out.jsonl [--now MS]

Re-running with the same arguments (and ``--now``) sends the same records: message ids
are derived from the customer and the event's ordinal, so the gateway does not duplicate.
A 503 (or 429) is retried after its Retry-After; retries are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.sim.population import Population, Truth, generate

BATCH = 1000  # the Traitly API's limit per request
MAX_ATTEMPTS = 30  # per request, counting retries after 503/429 and connection errors
MAX_RETRY_AFTER_S = 30.0


def customer_payloads(population: Population) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": c.customer_id,
            "name": f"Simulated {c.customer_id}",
            "email": f"{c.customer_id}@sim.example.com",
            "plan": c.plan,
            "created_at": c.entered_at_ms / 1000,
            "message_id": f"{c.customer_id}-profile",
        }
        for c in population.customers
    ]


def event_payloads(population: Population) -> list[dict[str, Any]]:
    return [
        {"customer_id": c.customer_id, "name": name, "created_at": ts / 1000, "message_id": f"{c.customer_id}-e{k}"}
        for c in population.customers
        for k, (name, ts) in enumerate(c.events)
    ]


def truth_rows(population: Population) -> Iterator[dict[str, Any]]:
    truth = population.truth
    for c in population.customers:
        row: dict[str, Any] = {"customer_id": c.customer_id, "cohort": c.cohort, "plan": c.plan, "p_true": c.p_true}
        if c.cohort == "score":
            row["gains"] = truth.gains(c.plan, c.counts)
        yield row


def _batches(items: Sequence[dict[str, Any]], size: int = BATCH) -> list[Sequence[dict[str, Any]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _post(session: aiohttp.ClientSession, url: str, token: str, body: Sequence[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json", "Accept": "application/json"}
    data = json.dumps(list(body))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                if resp.status == 200:
                    return
                text = await resp.text()
                if resp.status not in (429, 503) or attempt == MAX_ATTEMPTS:
                    raise RuntimeError(f"POST {url}: HTTP {resp.status}: {text[:500]}")
                # The gateway sheds load with 503 + Retry-After (seconds) while its broker catches up.
                try:
                    wait = float(resp.headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
        except aiohttp.ClientConnectionError:
            if attempt == MAX_ATTEMPTS:
                raise
            wait = min(0.1 * 2**attempt, 5.0)
        await asyncio.sleep(min(max(wait, 0.05), MAX_RETRY_AFTER_S))


async def _post_all(session: aiohttp.ClientSession, url: str, token: str, items: Sequence[dict[str, Any]], concurrency: int) -> None:
    it = iter(_batches(items))

    async def worker() -> None:
        for body in it:  # workers share one iterator: each batch is sent once
            await _post(session, url, token, body)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def send(url: str, token: str, population: Population, concurrency: int = 4) -> dict[str, int]:
    """POST every customer, then every event; returns how many of each were accepted."""
    base = url.rstrip("/")
    customers, events = customer_payloads(population), event_payloads(population)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Customers first, so each event's customer (and its sign-up time) already exists.
        await _post_all(session, f"{base}/api/v1/customer", token, customers, concurrency)
        await _post_all(session, f"{base}/api/v1/event", token, events, concurrency)
    return {"customers": len(customers), "events": len(events)}


def write_truth(population: Population, path: Path) -> None:
    with path.open("w") as fh:
        for row in truth_rows(population):
            fh.write(json.dumps(row) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim.simulate", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--token", default="tk_live_123")
    ap.add_argument("--train", type=int, default=3000, help="customers whose window is over (outcome known)")
    ap.add_argument("--score", type=int, default=500, help="customers signed up 2.1-2.9 days ago, to be scored")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--now", type=int, default=None, help="the simulated present, epoch ms (default: now)")
    ap.add_argument("--truth", type=Path, default=None, help="write the ground truth here (JSON lines)")
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args(argv)

    now_ms = args.now if args.now is not None else int(time.time() * 1000)
    population = generate(args.train, args.score, args.seed, now_ms, Truth())
    if args.truth:
        write_truth(population, args.truth)
    started = time.perf_counter()
    sent = asyncio.run(send(args.url, args.token, population, args.concurrency))
    print(
        f"sent {sent['customers']} customers and {sent['events']} events in {time.perf_counter() - started:.1f}s "
        f"(now_ms={now_ms}, seed={args.seed})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
