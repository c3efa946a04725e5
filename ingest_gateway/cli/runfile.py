"""The running stack's run file, ``<data-dir>/run/stack.json``: how the one-shot commands
(``sql``, ``train``, ``deadletter``, ``webhooks``) reach a ``goalstream up`` on the same data
dir, which holds the embedded ClickHouse and broker.

It holds the stack's pid, its URL, its per-run admin token, its Kafka bootstrap servers,
the embedded broker's pid (null with ``--kafka``; rewritten when the broker is restarted) and
the HTTP fronts' pids (``front_pids``, as they were at the last write: a front restarted
since has another) and the scoring process's (``scorer_pid``, null without a goal or with
``--no-scoring-process``; rewritten when it is restarted); it is written mode 0600 once the
gateway listens and removed last on stop.

``<data-dir>/run/lock`` is held (``fcntl.flock``) by ``goalstream up`` from its first step
and holds its pid, so a second ``up`` started before the run file exists is also told who
runs there (the kernel drops the lock when the process ends, however it ends).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


def path(data_dir: Path) -> Path:
    return data_dir / "run" / "stack.json"


def write(data_dir: Path, *, url: str, token: str, kafka: str, broker_pid: int | None = None,
          front_pids: list[int] | None = None, scorer_pid: int | None = None) -> None:
    p = path(data_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "url": url, "token": token, "kafka": kafka, "broker_pid": broker_pid,
                   "front_pids": front_pids or [], "scorer_pid": scorer_pid}, f)


def remove(data_dir: Path) -> None:
    try:
        path(data_dir).unlink()
    except FileNotFoundError:
        pass


def running(data_dir: Path) -> dict[str, Any] | None:
    """The run file of a stack that is still alive on this data dir, else None."""
    p = path(data_dir)
    if not p.is_file():
        return None
    info = json.loads(p.read_text())
    return info if _alive(info.get("pid")) else None


class StackRefused(Exception):
    """The running stack answered an error (its message, for the user) or did not answer."""


def call(info: dict[str, Any], method: str, path: str, data: bytes | None = None, *,
         content_type: str | None = None, timeout: float = 60.0) -> bytes:
    """One request to the running stack's admin API as the operator (its per-run token);
    the body of a 2xx, else ``StackRefused`` with the error's message."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {info['token']}", **({"Content-Type": content_type} if content_type else {})}
    req = urllib.request.Request(f"{info['url']}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            text = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise StackRefused(text) from None
    except urllib.error.URLError as exc:
        raise StackRefused(f"the running stack did not answer: {exc.reason}") from None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def lock_path(data_dir: Path) -> Path:
    return data_dir / "run" / "lock"


def lock(data_dir: Path) -> int:
    """Take the data dir's lock for this process's life; returns its fd. Raises
    ``RuntimeError`` naming the holder's pid if another goalstream holds it."""
    p = lock_path(data_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"goalstream already runs on this data dir {data_dir} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def lock_holder(data_dir: Path) -> str | None:
    """The pid in the data dir's lock if a process holds it now, else None (probe only)."""
    p = lock_path(data_dir)
    if not p.is_file():
        return None
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
