"""The embedded broker refuses idempotent producers: starting one leaves a single WARNING
that explains the fallback, and no ERROR from aiokafka's InitProducerIdRequest."""

from __future__ import annotations

import logging

from schemas.kafka import RecordProducer


async def test_idempotence_fallback_logs_no_error(broker, caplog):
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    caplog.set_level(logging.INFO, logger="schemas")
    producer = RecordProducer(broker.bootstrap, idempotence=True, timeout_s=10)
    await producer.start()
    try:
        assert producer.idempotence is False  # the embedded broker refused it
    finally:
        await producer.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "idempotent" in r.getMessage()]
    assert len(warnings) == 1, warnings
