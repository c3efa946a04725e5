"""What of the spool is stored: the embedded stack's bookkeeping between the spool and ClickHouse.

Flow: the spooled sink leaves a ``Mark`` per chunk the broker acknowledged (its last spool seq,
its highest offset per partition). ``Ledger.step`` moves a mark to "stored" once the
processors' progress (which only moves after ClickHouse took a batch) covers its offsets, then
to "scored" once their scoring stage has rescored the customers those records touched.
A stored record may have produced more records that live only on the broker: dead letters,
propensity changes and recommended actions (what the processors' and the dispatcher's
producers have acknowledged so far). So the spool is released up to a mark only when those,
as they stood when the mark was stored, are stored too: dead letters by the processors,
propensity and recommendations by the dispatcher (a delivery row per webhook).

``backlog`` is what the gateway accepted that ClickHouse does not hold yet: spooled records
not yet sent, plus, per partition, what the broker acknowledged beyond the processors'
progress. The same figure serves without a spool (``lag``), from the producer's own acks.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from schemas import topics

from ..durable import SpooledSink

Offsets = Mapping[tuple[str, int], int]  # highest offset per (topic, partition)


def ends(offsets: Offsets) -> dict[tuple[str, int], int]:
    """Highest offsets as end offsets (one past), what ``Progress.caught_up`` takes."""
    return {tp: off + 1 for tp, off in offsets.items()}


def lag(acked: Offsets, progress: Any, topic_names: frozenset[str] = frozenset(topics.INGEST)) -> int:
    """Records acknowledged on ``topic_names`` that the processors have not handled yet."""
    handled = progress.offsets if progress is not None else {}
    return sum(max(0, off - handled.get(tp, -1)) for tp, off in acked.items() if tp[0] in topic_names)


class Ledger:
    """Releases the spool as far as everything it holds, and what it led to, is stored."""

    DERIVED_BY_PROCESSORS = frozenset({topics.DEADLETTER})
    DERIVED_FOR_DISPATCHER = frozenset({topics.PROPENSITY, topics.RECOMMENDATIONS})

    def __init__(self, sink: SpooledSink, processors: Callable[[], Any], dispatcher: Callable[[], Any]):
        self.sink = sink
        self.processors = processors  # the current ones: they are replaced when the broker is
        self.dispatcher = dispatcher
        self.epoch = sink.epoch
        self.stored_seq = sink.spool.released_seq  # stored in ClickHouse (not yet what it led to)
        self._scoring: deque[Any] = deque()  # stored marks, until scored
        self._waiting: deque[tuple[int, dict[tuple[str, int], int]]] = deque()

    def _derived(self) -> dict[tuple[str, int], int]:
        """What the processors and the dispatcher have published so far, per partition."""
        out: dict[tuple[str, int], int] = {}
        for part in (self.processors(), self.dispatcher()):
            if part is not None:
                for tp, off in part.published.items():
                    out[tp] = max(off, out.get(tp, -1))
        return out

    def _derived_stored(self, snapshot: Offsets) -> bool:
        processors, dispatcher = self.processors(), self.dispatcher()
        mine = {tp: o for tp, o in snapshot.items() if tp[0] in self.DERIVED_BY_PROCESSORS}
        theirs = {tp: o for tp, o in snapshot.items() if tp[0] in self.DERIVED_FOR_DISPATCHER}
        if mine and (processors is None or not processors.caught_up(ends(mine))):
            return False
        if theirs and (dispatcher is None or not dispatcher.caught_up(ends(theirs))):
            return False
        return True

    def step(self) -> int | None:
        """Advance; the seq the spool may be released up to, if it moved."""
        if self.epoch != self.sink.epoch:
            # A new broker: the old offsets mean nothing; the sink sends the unreleased again.
            self.epoch = self.sink.epoch
            self._scoring.clear()
            self._waiting.clear()
        processors = self.processors()
        if processors is None:
            return None
        marks = self.sink.marks
        while marks and processors.caught_up(ends(marks[0].offsets)):
            mark = marks.popleft()
            self.stored_seq = max(self.stored_seq, mark.seq)
            self._scoring.append(mark)
        # What scoring published for a mark is acknowledged once it is scored: snapshot then.
        while self._scoring and processors.scored(ends(self._scoring[0].offsets)):
            self._waiting.append((self._scoring.popleft().seq, self._derived()))
        release = None
        while self._waiting and self._derived_stored(self._waiting[0][1]):
            release = self._waiting.popleft()[0]
        return release

    @property
    def backlog(self) -> int:
        """Accepted and not yet in ClickHouse (spool order: everything after ``stored_seq``)."""
        return max(0, self.sink.spool.last_seq - self.stored_seq)

    @property
    def settled(self) -> bool:
        """Everything spooled is stored, and everything it led to."""
        return self.sink.spool.released_seq >= self.sink.spool.last_seq and not self.sink.queue
