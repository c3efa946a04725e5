"""The live events page and the goals page in headless Chromium, against ``goalstream up``.

A real browser (Debian's ``chromium``, driven over the Chrome DevTools Protocol on aiohttp's
websocket client) logs in with a workspace admin token, watches events posted through the
Segment dialect appear in the page within a second (raw payload with the write key
redacted, the stored record beside it), sees a refused request with its error, and renders
the goals page's four SVG plots: before training the model-quality plot says there is no
model; then a simulated population whose windows are over (``tests.sim``, through the
Traitly API) is trained on, and the plot draws the real model's holdout calibration bins
and its report line. Screenshots are decoded and checked (size, not blank).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StackProcess, free_port, globex_config
from tests.sim import population as sim
from tests.sim import simulate

GOAL = """
[[goals]]
workspace = "acme"
name = "purchase-30d"
window_days = 30
target_event = "purchase"
"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1200,900"]
SCREENS = os.environ.get("GOALSTREAM_SCREENS_DIR")  # where a copy of each screenshot goes (for a report), if set
# Customers who signed up 31-90 days ago (their 30-day window is over): enough of each
# outcome for a trained model (propensity.train: at least 100, 10 of each) and its report.
N_LABELLED = 200


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            if subprocess.run(cmd, check=False, capture_output=True, timeout=600).returncode == 0 and shutil.which("chromium"):
                break
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("Debian's chromium is not installed and cannot be (not root, or no apt-get): apt-get install chromium")


# -- PNG: decoded here (no imaging dependency), to check a screenshot is a real picture -----


def decode_png(data: bytes) -> tuple[int, int, set[bytes]]:
    """(width, height, distinct colours) of an 8-bit RGB/RGBA PNG, every row unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + chunk) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0], "bad CRC"
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 255
        elif f == 2:
            row = bytearray((a + b) & 255 for a, b in zip(row, prev))
        elif f == 3:
            for i in range(stride):
                row[i] = (row[i] + ((row[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:  # every 4th row is plenty to count colours
            colours.update(bytes(row[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = row
    return width, height, colours


# -- the Chrome DevTools Protocol, over aiohttp's websocket client ---------------------


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.next_id, self.pending = ws, 0, {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            got = json.loads(msg.data)
            if "id" in got and got["id"] in self.pending:
                self.pending.pop(got["id"]).set_result(got)

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        got = await asyncio.wait_for(fut, 30)
        assert "error" not in got, got
        return got["result"]

    async def js(self, expression: str):
        got = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in got, got
        return got["result"].get("value")

    async def until(self, expression: str, timeout: float = 10.0, step: float = 0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(step)
        raise AssertionError(f"not true within {timeout}s: {expression}")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(data)
        return data


async def open_browser(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                    if pages:
                        return proc, pages[0]["webSocketDebuggerUrl"]
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("chromium did not open its DevTools port")


def check_screenshot(data: bytes, min_colours: int) -> tuple[int, int, int]:
    width, height, colours = decode_png(data)
    assert width >= 800 and height >= 600, (width, height)
    assert len(colours) > min_colours, f"only {len(colours)} colours: a blank page?"
    return width, height, len(colours)


@pytest.fixture(scope="module")
def goal_stack(tmp_path_factory):
    s = StackProcess(tmp_path_factory.mktemp("live"), config=globex_config() + GOAL).start()
    yield s
    s.close()


def test_live_and_goals_pages_in_chromium(goal_stack, tmp_path):
    binary = chromium()
    asyncio.run(_drive(binary, goal_stack, tmp_path))


async def _drive(binary: str, stack: StackProcess, tmp: Path) -> None:
    shots = tmp / "screens"
    shots.mkdir()
    proc, ws_url = await open_browser(binary, Path(tempfile.mkdtemp(dir=tmp)))
    basic = "Basic " + base64.b64encode(b"wk_1:").decode()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            # No token: the login form, and the feed refuses a request without one.
            await page.goto(f"{stack.url}/live")
            assert await page.js("getComputedStyle(document.getElementById('login')).display") != "none"
            async with http.get(f"{stack.url}/admin/v1/live/events") as r:
                assert r.status == 401
            await page.js("document.getElementById('token').value = 'adm_1'; document.getElementById('login').requestSubmit(); 1")
            await page.until("document.body.dataset.polls > 0")

            # Sign-ups and purchases, so the goal has cohorts, scores and outcomes.
            for i in range(40):
                uid = f"cust-{i}"
                async with http.post(f"{stack.url}/v1/identify", json={"userId": uid, "traits": {"plan": "pro" if i % 2 else "free"}},
                                     headers={"Authorization": basic}) as r:
                    assert r.status == 200, await r.text()
            for i in range(0, 40, 3):
                async with http.post(f"{stack.url}/v1/track", json={"userId": f"cust-{i}", "event": "purchase", "properties": {"n": i}},
                                     headers={"Authorization": basic}) as r:
                    assert r.status == 200

            # One event, watched: in the DOM within a second of being posted.
            body = {"userId": "live-customer-1", "event": "Live Test Event", "properties": {"colour": "teal"}, "writeKey": "wk_1"}
            t0 = time.monotonic()
            async with http.post(f"{stack.url}/v1/track", json=body) as r:
                assert r.status == 200, await r.text()
            await page.until("[...document.querySelectorAll('.entry .raw')].some(e => e.textContent.includes('Live Test Event'))",
                             timeout=1.0)
            seen_s = time.monotonic() - t0
            entry = await page.js("""(() => { const e = [...document.querySelectorAll('.entry')].find(
                x => x.querySelector('.raw').textContent.includes('Live Test Event'));
                return {raw: e.querySelector('.raw').textContent, records: e.querySelector('.records').textContent,
                        meta: e.querySelector('.meta').textContent, first: document.querySelector('.entry') === e}; })()""")
            assert entry["first"], "newest first"
            assert "teal" in entry["raw"] and "wk_1" not in entry["raw"] and "[redacted]" in entry["raw"], entry["raw"]
            assert "goalstream.events" in entry["records"] and "live-customer-1" in entry["records"], entry["records"]
            assert "segment" in entry["meta"] and "200" in entry["meta"]

            # Refused: a bad body from an authenticated sender (its workspace's feed), with the error.
            async with http.post(f"{stack.url}/v1/track", data=b'{"userId": "x", "event": ', headers={"Authorization": basic,
                                 "Content-Type": "application/json"}) as r:
                assert r.status == 400
            refused = await page.until("(() => { const e = document.querySelector('.entry.refused');"
                                       " return e && e.querySelector('.err').textContent; })()", timeout=1.0)
            assert "400" in refused and "JSON" in refused, refused
            # Filters: by event name, then by customer id.
            await page.js("const f = document.getElementById('f-name'); f.value = 'Live Test'; f.dispatchEvent(new Event('input')); 1")
            assert await page.js("document.querySelectorAll('.entry').length") == 1
            await page.js("document.getElementById('f-name').value = ''; const c = document.getElementById('f-customer');"
                          " c.value = 'cust-3'; c.dispatchEvent(new Event('input')); 1")
            assert await page.js("[...document.querySelectorAll('.entry')].every(e => e.textContent.includes('cust-3'))")
            await page.js("document.getElementById('f-customer').value = ''; document.getElementById('f-customer')"
                          ".dispatchEvent(new Event('input')); 1")
            live_png = await page.screenshot(shots / "live.png")
            live = check_screenshot(live_png, 30)

            # Another workspace's admin token does not see acme's feed (globex has none configured:
            # the operator's per-run token sees every workspace).
            token = json.loads((stack.workdir / "var" / "run" / "stack.json").read_text())["token"]
            async with http.get(f"{stack.url}/admin/v1/live/events", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and any(e["workspace"] == "acme" for e in (await r.json())["entries"])

            # The goals page before any model: the quality plot says so.
            await page.goto(f"{stack.url}/goals")
            await page.until("document.body.dataset.ready === '1'")
            empty = await page.js("(() => { const s = document.querySelector('svg[data-plot=quality]');"
                                  " return {text: s.textContent, points: s.querySelectorAll('circle').length}; })()")
            assert empty["points"] == 0 and ("no model trained yet" in empty["text"] or "no holdout report" in empty["text"]), empty
            check_screenshot(await page.screenshot(shots / "goals-untrained.png"), 20)

            # Customers whose outcome is known, then train: a real model with a holdout report.
            t_labelled = time.monotonic()
            pop = sim.generate(N_LABELLED, 0, 16, int(time.time() * 1000))
            sent = await simulate.send(stack.url, "tk_live_123", pop)
            stored_q = ("SELECT (SELECT count() FROM customers FINAL WHERE startsWith(customer_id, 'sim16-')) || ' ' || "
                        "(SELECT count() FROM events WHERE startsWith(customer_id, 'sim16-'))")
            want = f"{sent['customers']} {sent['events']}"
            deadline = time.monotonic() + 60
            while True:
                async with http.post(f"{stack.url}/admin/v1/sql?format=TSVRaw", data=stored_q,
                                     headers={"Authorization": "Bearer adm_1"}) as r:
                    stored = (await r.text()).strip()
                if stored == want:
                    break
                assert time.monotonic() < deadline, f"stored {stored!r}, sent {want}"
                await asyncio.sleep(0.5)
            stored_s = time.monotonic() - t_labelled
            async with http.post(f"{stack.url}/admin/v1/train?goal=purchase-30d", headers={"Authorization": "Bearer adm_1"}) as r:
                assert r.status == 200, await r.text()
                (summary,) = (await r.json())["data"]
            assert summary["kind"] in ("logistic", "gbt") and summary["training_customers"] == N_LABELLED, summary
            trained, labelled_s = summary["kind"], time.monotonic() - t_labelled
            deadline = time.monotonic() + 60
            while True:
                async with http.get(f"{stack.url}/admin/v1/goals", headers={"Authorization": "Bearer adm_1"}) as r:
                    assert r.status == 200
                    goals = (await r.json())["data"]
                g = goals[0]
                if g["conversion"] and sum(g["histogram"]["counts"]) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            assert [x["goal"] for x in goals] == ["purchase-30d"]
            assert g["conversion"] and g["conversion"][-1]["entered"] >= 40, g["conversion"]
            await page.goto(f"{stack.url}/goals")
            await page.until("document.body.dataset.ready === '1'")
            plots = await page.js("[...document.querySelectorAll('svg[data-plot]')].map(s => s.dataset.plot)")
            assert plots == ["conversion", "histogram", "calibration", "quality"], plots
            # The model-quality plot: one point per non-empty holdout bin, sized by its count, and the report line.
            report = g["model"]["quality"]
            assert len(report["calibration"]) == 10, report
            drawn = await page.js("[...document.querySelectorAll('svg[data-plot=quality] circle')].map(c => +c.dataset.count)")
            assert drawn == [b["count"] for b in report["calibration"] if b["count"]] and sum(drawn) == report["n_holdout_snapshots"]
            title = await page.js("document.querySelector('svg[data-plot=quality] text').textContent")
            assert title == "Model quality: holdout calibration (10 bins)", title
            line = await page.js("document.querySelector('.goal .quality').textContent")
            other = "gbt" if trained == "logistic" else "logistic"
            for part in (f"model quality: {trained}", f"holdout AUC {report['auc']:.3f}", f"log-loss {report['log_loss']:.4f}",
                         "lift at top decile ", f"trained on {N_LABELLED} customers",
                         f"{report['n_holdout_customers']} holdout customers", report["trained_at"],
                         f"chosen over {other} {report['candidates'][other]['log_loss']:.4f}"):
                assert part in line, (part, line)
            lift = float(line.split("lift at top decile ")[1].split(" ")[0])
            assert abs(lift - report["lift_top_decile"]) <= 0.005 + 1e-9 and lift > 1, (lift, report["lift_top_decile"])
            bars = await page.js("[...document.querySelectorAll('svg[data-plot=conversion] rect')].map(r => +r.dataset.value)")
            assert bars and max(bars) > 0, bars
            histogram = await page.js("[...document.querySelectorAll('svg[data-plot=histogram] rect')].map(r => +r.dataset.value)")
            assert len(histogram) == 20
            if sum(g["histogram"]["counts"]):
                assert sum(histogram) == sum(g["histogram"]["counts"]) > 0
            goals_png = await page.screenshot(shots / "goals.png")
            goals_shot = check_screenshot(goals_png, 20)
            print(f"event in the DOM {seen_s * 1000:.0f} ms after the POST began; live {live}, goals {goals_shot}, "
                  f"{N_LABELLED} labelled customers sent, stored ({stored_s:.1f}s) and trained on ({labelled_s - stored_s:.1f}s) -> {trained}, histogram {g['histogram']['counts']}, calibration {g['calibration']}, model: {line}")
            if SCREENS:
                Path(SCREENS).mkdir(parents=True, exist_ok=True)
                for name in ("live.png", "goals-untrained.png", "goals.png"):
                    shutil.copy(shots / name, Path(SCREENS) / name)
            page.reader.cancel()
    finally:
        proc.kill()
        proc.wait(10)
    # The admin token never reached the stack's logs.
    assert "adm_1" not in stack.err_path.read_text()
