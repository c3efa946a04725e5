"""ClickHouse held against the ledger: one summary row per scenario, and the table of them.

What flows through: ``goalstream sql`` answers (rows per fault id in ``events`` and in
``events FINAL``) and a scenario's ``Ledger`` go in; a ``Row`` comes out with acknowledged,
stored, lost, duplicated (raw and under FINAL), the statuses that break the contract and
the fault's own figures. ``Row.problems()`` names every broken invariant, so a failing
test says what was measured rather than only that something differed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from tests.faults.load import Ledger

FID = "JSONExtractString(properties, 'fid')"


def fid_rows(stack, run: str, final: bool) -> Counter:
    """fid -> rows in ``events`` (or ``events FINAL``), for the fids of one run."""
    out = stack.sql(
        f"SELECT {FID} AS fid, count() FROM events{' FINAL' if final else ''} WHERE startsWith({FID}, '{run}') GROUP BY fid",
        "TSV",
    )
    rows: Counter = Counter()
    for line in out.splitlines():
        if line:
            fid, n = line.split("\t")
            rows[fid] = int(n)
    return rows


def stored_distinct(stack, run: str) -> int:
    return int(stack.sql(f"SELECT uniqExact({FID}) FROM events WHERE startsWith({FID}, '{run}')").strip() or 0)


def wait_stored(stack, ledger: Ledger, timeout: float = 60.0, quiet: float = 10.0) -> tuple[float, bool]:
    """Wait until every acknowledged fid is in ``events``, at most ``timeout`` s, and no
    longer than ``quiet`` s without the stored count growing. Returns (seconds waited,
    everything acknowledged stored)."""
    t0 = time.monotonic()
    last, changed = -1, t0
    while True:
        n = stored_distinct(stack, ledger.run)
        now = time.monotonic()
        if n >= len(ledger.acked) and not ledger.acked - fid_rows(stack, ledger.run, final=False).keys():
            return now - t0, True
        if n != last:
            last, changed = n, now
        if now - changed >= quiet or now - t0 >= timeout:
            return now - t0, False
        time.sleep(1.0)


@dataclass
class Row:
    scenario: str
    seconds: float = 0.0  # the test's wall time
    requests: int = 0
    events: int = 0  # distinct events sent (valid and invalid; a resend or a 503'd one counted once)
    acked: int = 0
    stored: int = 0  # distinct valid fids in `events` (acknowledged or not)
    lost: int = 0
    dup_raw: int = 0
    dup_final: int = 0
    refused_4xx: int = 0  # invalid requests answered 4xx
    invalid_2xx: int = 0
    invalid_stored: int = 0
    valid_4xx: int = 0
    other_5xx: int = 0
    n503: int = 0
    no_retry_after: int = 0
    no_answer: int = 0
    recovery_s: float | None | str = "n/a"  # seconds until 2xx again after the fault
    lost_sample: list[str] = field(default_factory=list)
    statuses_5xx: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the scenario's own

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"lost {self.lost} of {self.acked} acknowledged events: not in ClickHouse at the end "
                       f"(e.g. {', '.join(self.lost_sample)})")
        if self.dup_final:
            out.append(f"{self.dup_final} rows duplicated under FINAL")
        if self.other_5xx:
            out.append(f"{self.other_5xx} answers 5xx other than 503 {dict(self.statuses_5xx)}")
        if self.no_retry_after:
            out.append(f"{self.no_retry_after} of {self.n503} 503s without Retry-After")
        if self.invalid_2xx:
            out.append(f"{self.invalid_2xx} invalid requests answered 2xx")
        if self.invalid_stored:
            out.append(f"{self.invalid_stored} events of invalid requests stored")
        if self.valid_4xx:
            out.append(f"{self.valid_4xx} valid requests answered 4xx")
        return out + self.failures


def tally(scenario: str, ledger: Ledger, raw: Counter, final: Counter) -> Row:
    row = Row(scenario)
    answers = ledger.answers
    row.requests = len(answers)
    row.events = len(ledger.valid | ledger.invalid)
    row.acked = len(ledger.acked)
    row.stored = len(ledger.valid & raw.keys())
    lost = ledger.acked - raw.keys()
    row.lost = len(lost)
    row.lost_sample = sorted(lost)[:3]
    # Over every valid fid sent (acknowledged or not): a row beyond what the client caused is a duplicate.
    row.dup_raw = sum(max(0, raw[f] - ledger.allowed_rows(f)) for f in ledger.valid if f in raw)
    row.dup_final = sum(max(0, final[f] - ledger.allowed_rows(f)) for f in ledger.valid if f in final)
    row.invalid_stored = len(ledger.invalid & raw.keys())
    for a in answers:
        s = a.status
        if s is None:
            row.no_answer += 1
        elif s == 503:
            row.n503 += 1
            row.no_retry_after += not a.retry_after
        elif s >= 500:
            row.other_5xx += 1
            row.statuses_5xx[s] += 1
        elif a.kind == "invalid":
            row.refused_4xx += 400 <= s < 500
            row.invalid_2xx += 200 <= s < 300
        else:
            row.valid_4xx += 400 <= s < 500
    return row


def _fmt(v: float | None | str) -> str:
    if v is None:
        return "never"
    return v if isinstance(v, str) else f"{v:.1f}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def summary(self) -> list[str]:
        head = (f"{'scenario':<16} {'wall s':>6} {'requests':>8} {'events':>7} {'acked':>7} {'stored':>7} {'lost':>6} "
                f"{'dup raw':>7} {'dup FINAL':>9} {'4xx bad':>7} {'5xx!503':>7} {'503':>5} {'503 noRA':>8} "
                f"{'no answer':>9} {'2xx again s':>11}")
        lines = [head]
        for r in self.rows:
            lines.append(
                f"{r.scenario:<16} {r.seconds:>6.0f} {r.requests:>8} {r.events:>7} {r.acked:>7} {r.stored:>7} {r.lost:>6} "
                f"{r.dup_raw:>7} {r.dup_final:>9} {r.refused_4xx:>7} {r.other_5xx:>7} {r.n503:>5} {r.no_retry_after:>8} "
                f"{r.no_answer:>9} {_fmt(r.recovery_s):>11}"
            )
            for note in r.notes:
                lines.append(f"{'':<16} {note}")
            for problem in r.problems():
                lines.append(f"{'':<16} FAIL: {problem}")
        lines.append("events/acked/stored/lost: distinct events (fault ids), invalid ones included in events; dup: rows beyond "
                     "one per event (per send for trigger.ly/Retainly, which take no client id); 4xx bad: invalid requests "
                     "refused; no answer: connection refused, reset or timed out")
        return lines


REPORT = Report()
