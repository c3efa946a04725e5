"""The live events page and the goals page: what the gateway accepted and refused, as it
happens, and each goal's conversion, propensity distribution and model quality.

What flows through it:
- A dialect request (any path a dialect owns) runs inside ``tap_middleware``, which opens a
  ``Capture`` in a context variable. ``read_body`` (dialects/base.py) notes the raw body in it,
  ``Services.publish`` the canonical records, the credentials the workspace they named. When
  the request ends, the capture becomes one ``entry`` (time, workspace, dialect, method, the
  path with credentials redacted, status, the raw payload redacted and truncated to
  ``MAX_RAW_BYTES``, the records, and for a refusal the response body and message) and goes
  to the ``tap``: a ring of ``PER_WORKSPACE`` entries per workspace (``Tap``). Refusals of
  requests that named no workspace go to the operator's ring (``""``).
- In ``goalstream up`` the HTTP fronts are separate processes: their tap is a ``RemoteTap``
  (remote.py pattern) that pushes each entry to the stack over the IPC channel and asks the
  stack for the feed, so every front shows the same entries. A scaled-out ``goalstream
  gateway`` keeps its own ring: each instance shows what it served.
- ``GET /live`` and ``GET /goals`` are static HTML pages (inline JS, inline SVG plots, no
  CDN). They hold the admin token in ``sessionStorage`` (typed into their login form) and send
  it as ``Authorization: Bearer`` on their ``fetch`` calls to ``GET /admin/v1/live/events``
  (polled every 500 ms) and ``GET /admin/v1/goals`` (JSON, admin-token scoped: a workspace's
  admin token sees its workspace, the operator every one). The token is never in a URL.
- ``GET /admin/v1/models`` (same scoping) answers each goal's serving model with its holdout
  quality report (``serving_model``: the newest ``propensity_models`` row, the report read
  out of the model's JSON in ClickHouse); the goals page draws the same report, from
  ``GET /admin/v1/goals``'s ``model.quality``, as its fourth plot.

Cost: nothing is captured until someone has asked for the feed (``Tap.armed``); a viewer
keeps it armed for ``ARMED_S`` after its last poll.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import orjson
from aiohttp import web

from schemas import model

from . import errors, logsafe

PER_WORKSPACE = 200  # entries kept per workspace
MAX_RAW_BYTES = 16 * 1024  # of each raw payload and each record shown
MAX_RECORDS = 20  # records shown per entry (a batch of 2,500 shows its first 20)
ARMED_S = 120.0  # capture goes on this long after the last poll of the feed
OPERATOR_RING = ""  # refused requests that named no workspace


@dataclass
class Capture:
    raw: bytes | None = None
    records: list[Any] = field(default_factory=list)
    workspace: str | None = None
    withheld: bool = False  # about a suppressed person: shown without payload or records


CAPTURE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("goalstream_live_capture", default=None)


def note_body(raw: bytes) -> None:
    if (cap := CAPTURE.get()) is not None and cap.raw is None:
        cap.raw = raw


def note_records(records: Sequence[Any]) -> None:
    if (cap := CAPTURE.get()) is not None:
        cap.records.extend(records[: MAX_RECORDS - len(cap.records)])


def withhold() -> None:
    """This request is about a suppressed person: its entry keeps nothing of what was sent."""
    if (cap := CAPTURE.get()) is not None:
        cap.withheld = True
        cap.records.clear()
        cap.raw = b""


def note_workspace(workspace: str | None) -> None:
    if workspace is not None and (cap := CAPTURE.get()) is not None:
        cap.workspace = workspace


class Tap:
    """Bounded rings of entries per workspace; ``seq`` orders them across workspaces."""

    def __init__(self, per_workspace: int = PER_WORKSPACE):
        self.per_workspace = per_workspace
        self.rings: dict[str, deque] = {}
        self.seq = 0
        self.watched_at = 0.0

    @property
    def armed(self) -> bool:
        return time.monotonic() - self.watched_at < ARMED_S

    def add(self, entry: dict[str, Any]) -> None:
        self.seq += 1
        entry["seq"] = self.seq
        ring = self.rings.get(entry["workspace"])
        if ring is None:
            ring = self.rings[entry["workspace"]] = deque(maxlen=self.per_workspace)
        ring.append(entry)

    def forget(self, forgotten: dict[str, set[str]]) -> None:
        """Entries that quote a forgotten id leave the rings (``Forgotten.on_forgotten``)."""
        for ws, ids in forgotten.items():
            ring = self.rings.get(ws)
            if not ring:
                continue
            needles = [i if len(i) >= 4 else f'"{i}"' for i in ids]
            kept = [e for e in ring if not any(n in orjson.dumps(e).decode(errors="replace") for n in needles)]
            self.rings[ws] = deque(kept, maxlen=self.per_workspace)

    async def feed(self, workspace: str | None, after: int, limit: int = PER_WORKSPACE) -> dict[str, Any]:
        """Entries after ``seq`` ``after``, newest first: of ``workspace``, or every one (None)."""
        self.watched_at = time.monotonic()
        rings = self.rings.values() if workspace is None else [self.rings.get(workspace, ())]
        entries = sorted((e for r in rings for e in r if e["seq"] > after), key=lambda e: e["seq"], reverse=True)
        return {"seq": self.seq, "entries": entries[:limit], "armed": True}


class TapPort(Protocol):
    armed: bool

    def add(self, entry: dict[str, Any]) -> None: ...

    async def feed(self, workspace: str | None, after: int, limit: int = PER_WORKSPACE) -> dict[str, Any]: ...


class RemoteTap:
    """A front's tap in ``goalstream up``: entries pushed to the stack, the feed asked of it.
    Armed from the stack's answer (``armed`` of the last feed or push reply)."""

    def __init__(self, channel: Any):
        self.channel = channel
        self.armed = True  # until the stack says otherwise: a first entry is cheap

    def add(self, entry: dict[str, Any]) -> None:
        if not self.channel.closed:
            self.channel.push("tap", entry)

    def update(self, armed: bool) -> None:
        self.armed = bool(armed)

    async def feed(self, workspace: str | None, after: int, limit: int = PER_WORKSPACE) -> dict[str, Any]:
        from .ipc import ChannelClosed

        self.armed = True  # this front's viewer: capture here at once (the others learn on the stack's tick)
        try:
            return await self.channel.call("tap", workspace, after, limit)
        except ChannelClosed:
            raise errors.Unavailable("the stack process did not answer; retry shortly", retry_after=2) from None


def _text(raw: bytes | str, redactor: logsafe.Redactor) -> tuple[str, int]:
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    size = len(data)
    text = data[:MAX_RAW_BYTES].decode("utf-8", "replace")
    return redactor.redact(text), size


def _default(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _records(records: Sequence[Any], redactor: logsafe.Redactor) -> list[dict[str, Any]]:
    """The records as JSON values, redacted, within ``MAX_RAW_BYTES`` together: past that, a
    record's value is its text cut short (an entry's size is bounded whatever was sent)."""
    out, budget = [], MAX_RAW_BYTES
    for r in records:
        text = redactor.redact(orjson.dumps(r.value, default=_default).decode())
        if len(text) <= budget:
            value: Any = orjson.loads(text)
        else:
            value = f"{text[:max(budget, 200)]}... ({len(text)} bytes, cut)"
        budget = max(0, budget - len(text))
        out.append({"topic": r.topic, "schema": r.schema, "value": value})
    return out


def _message(body: bytes) -> str:
    """The error message of a vendor-shaped error body (its first 'message'/'error' string)."""
    try:
        stack = [json.loads(body)]
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    while stack:
        v = stack.pop(0)
        if isinstance(v, dict):
            for k in ("message", "error", "errors", "meta", "detail"):
                if isinstance(v.get(k), str):
                    return v[k][:500]
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return ""


LIVE_PREFIXES = ("/live", "/goals", "/admin/", "/healthz", "/metrics", "/openapi", "/docs")


def tap_middleware(tap: TapPort, dialects: list[Any], redactor: logsafe.Redactor) -> Callable:
    def dialect_of(path: str) -> str | None:
        best = max(((d.claim(path), d.name) for d in dialects), default=(0, None))
        return best[1] if best[0] else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if not tap.armed or request.path.startswith(LIVE_PREFIXES):
            return await handler(request)
        dialect = dialect_of(request.path)
        if dialect is None:
            return await handler(request)
        cap = Capture()
        token = CAPTURE.set(cap)
        response = None
        try:
            response = await handler(request)
            return response
        finally:
            CAPTURE.reset(token)
            try:
                _publish(tap, redactor, request, dialect, cap, response)
            except Exception:  # the tap never fails a request
                pass

    return middleware


def _publish(tap: TapPort, redactor: logsafe.Redactor, request: web.Request, dialect: str, cap: Capture, response: Any) -> None:
    status = getattr(response, "status", 500)
    if cap.withheld:
        path = request.path  # a query string may carry the person (trigger.ly's data)
        entry = {"at": time.time(), "workspace": cap.workspace or OPERATOR_RING, "dialect": dialect, "method": request.method,
                 "path": path, "status": status, "raw": "(withheld: about a suppressed person)", "raw_bytes": 0, "records": [],
                 "accepted": status < 400, "names": [], "customers": []}
        if status >= 400:
            entry["error"] = {"status": status, "message": "suppressed by a data-subject regulation", "body": ""}
        tap.add(entry)
        return
    path, _ = _text(request.path_qs, redactor)
    # A body-less request (trigger.ly's pixel, a GET) sent its payload in the query string.
    raw, size = _text(cap.raw if cap.raw is not None else (request.path_qs if request.query_string else b""), redactor)
    values = [r.value for r in cap.records if isinstance(r.value, dict)]
    records = _records(cap.records, redactor)
    workspace = cap.workspace
    if workspace is None:
        workspace = next((v.get("workspace") for v in values if isinstance(v.get("workspace"), str)), None)
    entry: dict[str, Any] = {
        "at": time.time(), "workspace": workspace or OPERATOR_RING, "dialect": dialect, "method": request.method,
        "path": path, "status": status, "raw": raw, "raw_bytes": size, "records": records, "accepted": status < 400,
    }
    if status >= 400:
        body = getattr(response, "body", None)
        body = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
        entry["error"] = {"status": status, "message": redactor.redact(_message(body)), "body": _text(body, redactor)[0]}
    names = [v.get("name") or v.get("event") for v in values]
    entry["names"] = sorted({n for n in names if isinstance(n, str)})
    entry["customers"] = sorted({c for v in values for c in [v.get("customer_id")] if isinstance(c, str)})
    tap.add(entry)


def _on_match(field: str, workspace: str | None) -> None:
    """Credentials matched on a dialect path name the workspace of the entry (an admin
    token's match is the admin API's, which the tap does not show)."""
    if field != "admin_token":
        note_workspace(workspace)


# -- the goals' figures ----------------------------------------------------------------

HISTOGRAM_BINS = 20

_CONVERSION = (
    "SELECT goal, toString(cohort_day) AS day, toUInt64(entered) AS entered, toUInt64(reached) AS reached "
    "FROM goal_conversion_daily WHERE workspace = {ws:String} AND goal = {goal:String} ORDER BY cohort_day DESC LIMIT 60"
)
# The current likelihood of each customer still in the goal (active): the ones a message can
# still move; a reached customer's last score (1.0) would only pile up in the top bin.
_LATEST = (
    "SELECT customer_id, argMax(likelihood, scored_at) AS p FROM propensity_scores "
    "WHERE workspace = {ws:String} AND goal = {goal:String} AND customer_id IN (SELECT customer_id FROM goal_customers "
    "WHERE workspace = {ws:String} AND goal = {goal:String} AND status = 'active') GROUP BY customer_id"
)
_HISTOGRAM = (
    f"SELECT least(toUInt32(floor(p * {HISTOGRAM_BINS})), {HISTOGRAM_BINS - 1}) AS bin, count() AS n FROM ({_LATEST}) "
    "GROUP BY bin ORDER BY bin"
)
# Predicted vs observed per decile, over customers whose outcome is known: each one's last
# score before the outcome (reached, or the window's end), so a score made after the goal
# was reached (1.0) does not flatter the model.
_CALIBRATION = (
    "SELECT least(toUInt32(floor(p * 10)), 9) AS decile, avg(p) AS predicted, avg(reached) AS observed, count() AS n FROM ("
    " SELECT s.customer_id, argMax(s.likelihood, s.scored_at) AS p, any(c.status = 'reached') AS reached"
    " FROM propensity_scores AS s INNER JOIN (SELECT customer_id, status, ifNull(reached_at, window_end) AS decided"
    " FROM goal_customers WHERE workspace = {ws:String} AND goal = {goal:String} AND status IN ('reached', 'expired')) AS c"
    " ON s.customer_id = c.customer_id"
    " WHERE s.workspace = {ws:String} AND s.goal = {goal:String} AND s.scored_at < c.decided GROUP BY s.customer_id"
    ") GROUP BY decile ORDER BY decile"
)
# The serving model (the newest row) and its holdout report: only the report's JSON leaves
# ClickHouse (JSONExtractRaw), never the model's trees. '' when the key is missing (FORMAT 1).
# (m.trained_at: the column, not the string alias.)
_MODEL = (
    "SELECT version, kind, toString(m.trained_at) AS trained_at, toUnixTimestamp64Milli(m.trained_at) AS trained_at_ms, "
    "n_customers, n_positive, base_rate, auc, JSONExtractRaw(model, 'quality') AS quality "
    "FROM propensity_models AS m WHERE workspace = {ws:String} AND goal = {goal:String} ORDER BY m.trained_at DESC LIMIT 1"
)


def _quality(row: dict[str, Any]) -> dict[str, Any]:
    """The stored holdout report; for a model without one (base_rate, FORMAT 1) the reduced
    report from the row's columns (``model.reduced_report``, as ``propensity.Model.report``)."""
    try:
        quality = orjson.loads(row["quality"]) if row["quality"] else None
    except orjson.JSONDecodeError:
        quality = None  # a damaged report is no reason to fail the page: what the columns say
    if isinstance(quality, dict):
        return quality
    return model.reduced_report(row["kind"], int(row["trained_at_ms"]), int(row["n_customers"]), int(row["n_positive"]), row["auc"])


async def serving_model(services: Any, workspace: str, goal: str) -> dict[str, Any] | None:
    """The goal's serving model (None until one is trained): version, kind, trained_at,
    training size, base rate, holdout AUC and ``quality`` (its holdout report)."""
    rows = await services.read(_MODEL, {"ws": workspace, "goal": goal})
    if not rows:
        return None
    r = rows[0]
    return {
        "version": r["version"], "kind": r["kind"], "trained_at": r["trained_at"], "n_customers": int(r["n_customers"]),
        "n_positive": int(r["n_positive"]), "base_rate": float(r["base_rate"]), "auc": r["auc"], "quality": _quality(r),
    }


async def goal_figures(services: Any, workspace: str, goal: str) -> dict[str, Any]:
    p = {"ws": workspace, "goal": goal}
    conversion = await services.read(_CONVERSION, p)
    histogram = {int(r["bin"]): int(r["n"]) for r in await services.read(_HISTOGRAM, p)}
    calibration = await services.read(_CALIBRATION, p)
    serving = await serving_model(services, workspace, goal)
    return {
        "workspace": workspace, "goal": goal,
        "conversion": [{"day": r["day"], "entered": r["entered"], "reached": r["reached"],
                        "rate": r["reached"] / r["entered"] if r["entered"] else None} for r in reversed(conversion)],
        "histogram": {"bins": HISTOGRAM_BINS, "counts": [histogram.get(i, 0) for i in range(HISTOGRAM_BINS)]},
        "calibration": [{"decile": int(r["decile"]), "predicted": float(r["predicted"]), "observed": float(r["observed"]),
                         "n": int(r["n"])} for r in calibration],
        "model": serving,
    }


# -- routes ----------------------------------------------------------------------------


def add_routes(app: web.Application, services: Any, dialects: list[Any], scope_of: Callable[[web.Request], Any],
               tap: TapPort | None = None, secrets: Sequence[str] = ()) -> TapPort:
    """The pages, their JSON endpoints and the tap's middleware (outermost, so it sees the
    response the client got); the credentials' matches noted for the entry's workspace."""
    tap = tap if tap is not None else Tap()
    redactor = logsafe.Redactor([*logsafe.config_secrets(services.config), *secrets])
    services.credentials.listen(_on_match)  # requestlog.NotingCredentials: who a request's credential named
    app.middlewares.insert(0, tap_middleware(tap, dialects, redactor))

    def require(request: web.Request) -> Any:
        scope = scope_of(request)
        if scope is None:
            raise errors.Unauthenticated("an admin token is required")
        return scope

    async def events(request: web.Request) -> web.Response:
        scope = require(request)
        try:
            after = int(request.query.get("after", "0") or 0)
        except ValueError:
            raise errors.InvalidRequest("'after' must be an integer", param="after") from None
        got = await tap.feed(None if scope.operator else scope.workspace, after)
        return web.Response(body=orjson.dumps(got), content_type="application/json", headers={"Cache-Control": "no-store"})

    def visible_goals(request: web.Request) -> list[tuple[str, str]]:
        """(workspace, goal) of each configured goal the token sees, or only ``?goal=`` (a
        name it does not see: none)."""
        scope = require(request)
        config = services.config
        wanted = request.query.get("goal") or None
        return [(ws.name, g.name) for ws in config.workspaces if scope.operator or ws.name == scope.workspace
                for g in config.goals_of(ws.name) if wanted is None or g.name == wanted]

    def answer(body: dict[str, Any]) -> web.Response:
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"})

    async def goals(request: web.Request) -> web.Response:
        out = [await goal_figures(services, ws, g) for ws, g in visible_goals(request)]
        return answer({"data": out, "object": "goals"})

    async def models(request: web.Request) -> web.Response:
        out = [{"workspace": ws, "goal": g, "model": await serving_model(services, ws, g)} for ws, g in visible_goals(request)]
        return answer({"data": out, "object": "models"})

    async def page(request: web.Request) -> web.Response:
        html = LIVE_HTML if request.path == "/live" else GOALS_HTML
        return web.Response(text=html, content_type="text/html", headers={
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "connect-src 'self'; img-src 'self' data:; form-action 'none'",
        })

    app.router.add_get("/live", page)
    app.router.add_get("/goals", page)
    app.router.add_get("/admin/v1/live/events", events)
    app.router.add_get("/admin/v1/goals", goals)
    app.router.add_get("/admin/v1/models", models)
    return tap


_COMMON_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>%s · goalstream</title>
<style>
body{font:13px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:center}
header a{color:#9ecbff} h1{font-size:16px;margin:0}
main{padding:12px 16px} .bar{display:flex;gap:8px;margin-bottom:10px;flex-wrap:wrap}
input,select,button{font:inherit;padding:4px 6px}
.entry{background:#fff;border:1px solid #d8dce3;border-left:4px solid #2e9d5b;margin-bottom:8px;border-radius:4px}
.entry.refused{border-left-color:#d33c3c} .meta{padding:6px 10px;display:flex;gap:12px;flex-wrap:wrap}
.status{font-weight:bold;color:#2e9d5b} .refused .status{color:#d33c3c} .err{color:#d33c3c;padding:0 10px 6px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:8px;padding:0 10px 8px}
pre{background:#f0f2f5;margin:0;padding:6px;max-height:220px;overflow:auto;white-space:pre-wrap;word-break:break-all;font-size:12px}
.label{font-size:11px;color:#667;margin:2px 0} #login{background:#fff;padding:16px;border:1px solid #d8dce3;max-width:420px}
.goal{background:#fff;border:1px solid #d8dce3;border-radius:4px;padding:10px;margin-bottom:12px}
.plots{display:flex;gap:14px;flex-wrap:wrap} .plot{border:1px solid #eee} .auc{font-size:15px;font-weight:bold}
.quality{color:#445;margin:6px 0}
</style></head><body><header><h1>goalstream</h1><a href="/live">Live events</a><a href="/goals">Goals</a>
<span id="who"></span><button id="logout" style="display:none">Log out</button></header><main>
<form id="login" style="display:none"><p>Admin token (a workspace's <code>admin_token</code>, the operator token
or the running stack's token from <code>run/stack.json</code>). Kept in this tab only.</p>
<input id="token" type="password" autocomplete="off" size="40"> <button type="submit">Open</button>
<p id="loginerr" class="err"></p></form>
<script>
const KEY='goalstream-admin-token';
function tok(){return sessionStorage.getItem(KEY)}
async function api(path){const r=await fetch(path,{headers:{Authorization:'Bearer '+tok()},cache:'no-store'});
 if(r.status===401){sessionStorage.removeItem(KEY);showLogin('that token is not an admin token');throw new Error('401')}
 if(!r.ok)throw new Error('HTTP '+r.status);return r.json()}
function showLogin(msg){document.getElementById('login').style.display='';document.getElementById('app').style.display='none';
 document.getElementById('loginerr').textContent=msg||''}
function el(tag,attrs,...kids){const e=document.createElement(tag);for(const k in attrs||{})e.setAttribute(k,attrs[k]);
 for(const c of kids)e.append(c);return e}
function svg(tag,attrs){const e=document.createElementNS('http://www.w3.org/2000/svg',tag);for(const k in attrs)e.setAttribute(k,attrs[k]);return e}
document.getElementById('login').addEventListener('submit',ev=>{ev.preventDefault();
 sessionStorage.setItem(KEY,document.getElementById('token').value);document.getElementById('token').value='';boot()});
document.getElementById('logout').onclick=()=>{sessionStorage.removeItem(KEY);location.reload()};
function boot(){if(!tok()){showLogin();return}document.getElementById('login').style.display='none';
 document.getElementById('app').style.display='';document.getElementById('logout').style.display='';start()}
</script>
"""

LIVE_HTML = _COMMON_HEAD % "Live events" + """<div id="app" style="display:none">
<div class="bar"><select id="f-dialect"><option value="">every dialect</option></select>
<input id="f-name" placeholder="event name"><input id="f-customer" placeholder="customer id">
<label><input id="f-refused" type="checkbox"> refused only</label><button id="pause">Pause</button>
<span id="count"></span></div><div id="feed"></div></div>
<script>
let entries=[],seq=0,paused=false;const dialects=new Set();
function match(e){const d=document.getElementById('f-dialect').value,n=document.getElementById('f-name').value.trim(),
 c=document.getElementById('f-customer').value.trim(),r=document.getElementById('f-refused').checked;
 if(d&&e.dialect!==d)return false;if(r&&e.accepted)return false;
 if(n&&!e.names.some(x=>x.includes(n)))return false;if(c&&!e.customers.some(x=>x.includes(c)))return false;return true}
function pretty(t){try{return JSON.stringify(JSON.parse(t),null,2)}catch(_){return t}}
function render(){const feed=document.getElementById('feed');feed.replaceChildren();let shown=0;
 for(const e of entries){if(!match(e))continue;shown++;
  const box=el('div',{class:'entry'+(e.accepted?'':' refused'),'data-seq':e.seq,'data-dialect':e.dialect});
  box.append(el('div',{class:'meta'},el('span',{class:'status'},String(e.status)),el('span',{},new Date(e.at*1000).toLocaleTimeString()),
   el('span',{},e.workspace||'(no workspace)'),el('b',{},e.dialect),el('code',{},e.method+' '+e.path),
   el('span',{},e.names.join(', ')),el('span',{},e.customers.join(', '))));
  if(e.error)box.append(el('div',{class:'err'},'refused '+e.error.status+': '+e.error.message));
  const recs=e.records.length?e.records.map(r=>r.topic+'\\n'+JSON.stringify(r.value,null,2)).join('\\n\\n'):(e.error?e.error.body:'(no record)');
  box.append(el('div',{class:'cols'},el('div',{},el('div',{class:'label'},'raw payload ('+e.raw_bytes+' bytes)'),el('pre',{class:'raw'},pretty(e.raw)||'(empty body)')),
   el('div',{},el('div',{class:'label'},e.records.length?'stored record(s)':'response'),el('pre',{class:'records'},recs))));
  feed.append(box)}
 document.getElementById('count').textContent=shown+' of '+entries.length+' shown'}
async function poll(){if(!paused){try{const got=await api('/admin/v1/live/events?after='+seq);
 document.body.dataset.polls=(+document.body.dataset.polls||0)+1;
 if(got.entries.length){entries=got.entries.concat(entries).slice(0,500);
  for(const e of got.entries)if(!dialects.has(e.dialect)){dialects.add(e.dialect);
   document.getElementById('f-dialect').append(el('option',{value:e.dialect},e.dialect))}render()}
 seq=Math.max(seq,got.seq)}catch(err){if(String(err).includes('401'))return}}setTimeout(poll,500)}
for(const id of ['f-dialect','f-name','f-customer','f-refused'])document.getElementById(id).addEventListener('input',render);
document.getElementById('pause').onclick=ev=>{paused=!paused;ev.target.textContent=paused?'Resume':'Pause'};
function start(){poll()}
boot();
</script></main></body></html>"""

GOALS_HTML = _COMMON_HEAD % "Goals" + """<div id="app" style="display:none"><div id="goals">loading…</div></div>
<script>
const W=360,H=200,P=34;
function axes(s,xl,yl){s.append(svg('line',{x1:P,y1:H-P,x2:W-8,y2:H-P,stroke:'#889'}),svg('line',{x1:P,y1:8,x2:P,y2:H-P,stroke:'#889'}));
 const t=svg('text',{x:W/2,y:H-6,'text-anchor':'middle','font-size':11,fill:'#445'});t.textContent=xl;s.append(t);
 const u=svg('text',{x:10,y:H/2,'font-size':11,fill:'#445',transform:'rotate(-90 10 '+H/2+')','text-anchor':'middle'});u.textContent=yl;s.append(u)}
function plot(kind,title){const s=svg('svg',{width:W,height:H,class:'plot','data-plot':kind});
 const t=svg('text',{x:W/2,y:14,'text-anchor':'middle','font-size':12,'font-weight':'bold'});t.textContent=title;s.append(t);return s}
function bars(kind,title,values,xl,yl,color){const s=plot(kind,title);axes(s,xl,yl);const m=Math.max(1,...values),n=values.length||1,bw=(W-P-12)/n;
 values.forEach((v,i)=>{const h=(H-2*P)*v/m;s.append(svg('rect',{x:P+2+i*bw,y:H-P-h,width:Math.max(1,bw-2),height:h,fill:color,'data-value':v}))});
 const mx=svg('text',{x:P-3,y:P,'text-anchor':'end','font-size':10});mx.textContent=String(m);s.append(mx);return s}
// Observed vs predicted points joined by a line, over the dashed diagonal; ``pts``: {x, y, r,
// attrs} per point (attrs: the circle's own, e.g. its data-*); ``empty``: the text without any.
function curve(kind,title,xl,yl,pts,color,empty){const s=plot(kind,title);axes(s,xl,yl);
 const X=v=>P+v*(W-P-12),Y=v=>H-P-v*(H-2*P);
 s.append(svg('line',{x1:X(0),y1:Y(0),x2:X(1),y2:Y(1),stroke:'#bbb','stroke-dasharray':'4 3'}));
 if(pts.length)s.append(svg('polyline',{points:pts.map(d=>X(d.x)+','+Y(d.y)).join(' '),fill:'none',stroke:color,'stroke-width':2}));
 for(const d of pts)s.append(svg('circle',{cx:X(d.x),cy:Y(d.y),r:d.r,fill:color,...d.attrs}));
 if(!pts.length){const t=svg('text',{x:W/2,y:H/2,'text-anchor':'middle',fill:'#889'});t.textContent=empty;s.append(t)}
 return s}
function calibration(c){return curve('calibration','Calibration: observed vs predicted','predicted','observed',
 c.map(d=>({x:d.predicted,y:d.observed,r:3+Math.min(5,Math.log10(1+d.n)*2),attrs:{'data-n':d.n}})),'#d9822b','no customer with a known outcome yet')}
function num(v,d){return v==null?'n/a':(+v).toFixed(d)}
// The serving model's holdout report (made at training): its 10 calibration bins, mean
// predicted vs observed rate, each point sized by its holdout snapshots.
function quality(m){const q=m&&m.quality,c=q&&q.calibration?q.calibration.filter(b=>b.count&&b.mean_predicted!=null):[];
 return curve('quality','Model quality: holdout calibration (10 bins)','mean predicted (holdout)','observed rate',
  c.map(b=>({x:b.mean_predicted,y:b.observed_rate,r:3+Math.min(5,Math.log10(1+b.count)*1.5),
             attrs:{'fill-opacity':0.8,'data-count':b.count,'data-bin':(b.bin||[]).join('-')}})),'#7a4fd0',
  !m?'no model trained yet':'no holdout report: '+m.kind+' model ('+(m.kind==='base_rate'?'too few customers of each outcome':'trained before reports were kept')+')')}
function qualityLine(m){const q=m&&m.quality;if(!q)return 'model quality: no model trained yet';
 let t='model quality: '+q.kind+' · holdout AUC '+num(q.auc,3)+' · log-loss '+num(q.log_loss,4)+' · lift at top decile '+num(q.lift_top_decile,2)+
  ' · trained on '+q.n_customers+' customers ('+q.n_positive+' reached'+(q.n_holdout_customers!=null?', '+q.n_holdout_customers+' holdout customers':'')+') on '+q.trained_at;
 const others=Object.entries(q.candidates||{}).filter(([k])=>k!==q.kind);
 if(others.length)t+=' · chosen over '+others.map(([k,v])=>k+' '+num(v.log_loss,4)).join(', ')+' (holdout log-loss)';
 return t}
function start(){api('/admin/v1/goals').then(got=>{const root=document.getElementById('goals');root.replaceChildren();
 if(!got.data.length)root.append(el('p',{},'no goal configured in the workspaces this token sees'));
 for(const g of got.data){const m=g.model;
  const box=el('div',{class:'goal','data-goal':g.goal},el('h2',{},g.workspace+' · '+g.goal),
   el('div',{class:'auc'},m?('holdout AUC '+(m.auc==null?'n/a':m.auc.toFixed(3))+' · model '+m.version+' ('+m.kind+', '+m.n_customers+' customers, '+m.n_positive+' reached, trained '+m.trained_at+')'):'no model trained yet'));
  const rates=g.conversion.map(r=>r.rate==null?0:r.rate);
  const plots=el('div',{class:'plots'},bars('conversion','Conversion per cohort (day entered)',rates.map(r=>Math.round(r*1000)/1000),
   (g.conversion[0]?g.conversion[0].day:'')+' … '+(g.conversion.length?g.conversion[g.conversion.length-1].day:''),'reached / entered','#2e6fd9'),
   bars('histogram','Propensity distribution (current)',g.histogram.counts,'likelihood 0 … 1','customers','#2e9d5b'),calibration(g.calibration),quality(m));
  box.append(plots,el('div',{class:'quality'},qualityLine(m)),el('pre',{class:'table'},g.conversion.map(r=>r.day+'  entered '+r.entered+'  reached '+r.reached).join('\\n')||'no cohort yet'));
  root.append(box)}
 document.body.setAttribute('data-ready','1')}).catch(e=>{document.getElementById('goals').textContent='could not load: '+e})}
boot();
</script></main></body></html>"""
