"""The processors' one error root, and the one table of what is worth retrying.

Every error raised by this package is a ``ProcessorError`` carrying ``retriable``. The
errors of the clients in ``schemas`` are read the same way: ``WarehouseError`` carries
its own ``retriable`` (a ClickHouse that failed or refused a query), ``KafkaUnavailable``
is retriable (the broker did not acknowledge in time) and ``RecordTooLarge`` is not (the
same record cannot fit next time either). ``retriable`` below is the only place that
decides it; ``retry.retry`` and the batch runtime ask it, nothing else does.
"""

from __future__ import annotations

from schemas.kafka import KafkaUnavailable, RecordTooLarge
from schemas.warehouse import WarehouseError


class ProcessorError(Exception):
    retriable = False

    def __init__(self, message: str, *, retriable: bool | None = None):
        super().__init__(message)
        self.message = message
        if retriable is not None:
            self.retriable = retriable


class BadRecord(ProcessorError):
    """A message that cannot be decoded or is not what its topic carries: dead-lettered."""


# The errors whose ``retriable`` is known. Anything else is a bug: not retried, and not
# taken for a record's fault either (the batch runtime lets it through).
KNOWN = (ProcessorError, WarehouseError, KafkaUnavailable, RecordTooLarge)


def known(exc: BaseException) -> bool:
    return isinstance(exc, KNOWN)


def retriable(exc: BaseException) -> bool:
    """Whether trying the same thing again may succeed (Vector's ClickHouse ``RetryLogic``:
    one place decides retry by the error's class)."""
    return isinstance(exc, KNOWN) and bool(exc.retriable)
