"""The scaled-out shape, in miniature: ``goalstream gateway`` and ``goalstream worker`` as
separate processes against one external broker (here a tansu we start ourselves, standing
in for Apache Kafka) and a ClickHouse the worker owns."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import urllib.request

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import topics
from schemas.kafka import end_offsets
from tests.conftest import GOALSTREAM, free_port, globex_config


def _spawn(args, cwd, ready_prefix, timeout=90.0):
    proc = subprocess.Popen([str(GOALSTREAM), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=open(cwd / f"{args[0]}.err", "ab"), text=True)
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            if line.startswith(ready_prefix):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout):
        proc.kill()
        raise AssertionError((cwd / f"{args[0]}.err").read_text()[-2000:])
    return proc


async def test_gateway_and_worker_as_separate_processes(tmp_path, broker):
    (tmp_path / "goalstream.toml").write_text(globex_config())
    ch = f"chdb://{tmp_path / 'worker-ch'}"
    port = free_port()
    common = ["--kafka", broker.bootstrap]
    worker = _spawn(["worker", *common, "--clickhouse", ch], tmp_path, "goalstream worker ready")
    try:
        await _through_gateway_then_stop_worker(tmp_path, broker, worker, common, port, ch)
    finally:
        if worker.poll() is None:
            worker.kill()


async def _through_gateway_then_stop_worker(tmp_path, broker, worker, common, port, ch):
    # The gateway's own ClickHouse (reads) is separate here; its write path needs only Kafka.
    gateway = _spawn(["gateway", *common, "--clickhouse", f"chdb://{tmp_path / 'gw-ch'}", "--port", str(port)], tmp_path, "goalstream gateway ready")
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/event",
            data=json.dumps({"customer_id": "so-1", "name": "scaled out"}).encode(),
            headers={"Authorization": "Token tk_live_123"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(60) == 0
        # The worker owns its chDB path, so watch its consumer group's committed offsets
        # reach the topic's end: then the event is in ClickHouse (commits follow inserts).
        ends = await end_offsets(broker.bootstrap, [topics.EVENTS])
        probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="goalstream-processors", enable_auto_commit=False)
        await probe.start()  # never subscribes, so it does not join (or disturb) the group
        try:
            async def committed():
                for (t, p), end in ends.items():
                    if end and ((await probe.committed(TopicPartition(t, p))) or 0) < end:
                        return False
                return True

            deadline = asyncio.get_running_loop().time() + 60
            while not await committed():
                assert asyncio.get_running_loop().time() < deadline, "worker did not commit the event"
                await asyncio.sleep(0.5)
        finally:
            await probe.stop()
    finally:
        if gateway.poll() is None:
            gateway.kill()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    out = subprocess.run(
        [str(GOALSTREAM), "sql", "SELECT count() FROM events WHERE customer_id = 'so-1'", "--clickhouse", ch, "--format", "TSV"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "1", out.stderr
