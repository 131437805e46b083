"""Submit, list, cancel and savepoint Flink jobs of ``jobs/`` on the local cluster."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from rdv.platform import Platform, PlatformError, pyflink_home
from rdv.settings import ROOT, Settings

_JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


def _rest(
    method: str,
    path: str,
    body: dict | None = None,
    settings: Settings | None = None,
    timeout: float = 10,
) -> Any:
    s = settings or Settings.from_env()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        s.flink_rest + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise PlatformError(f"Flink REST {method} {path}: {e.code} {e.read()[:500]!r}") from e
    except (urllib.error.URLError, OSError) as e:
        raise PlatformError(f"Flink REST not reachable at {s.flink_rest}: run `rdv up`") from e
    return json.loads(raw) if raw else None


def submit(name: str, args: Sequence[str] = (), settings: Settings | None = None,
           savepoint: str | None = None) -> str:
    """Submit ``jobs/<name>.py`` detached, optionally restoring a savepoint (the operators'
    stable uids map its state back); returns the job id once it is RUNNING."""
    script = ROOT / "jobs" / f"{name}.py"
    if not script.exists():
        known = sorted(
            p.stem
            for p in (ROOT / "jobs").glob("*.py")
            if not p.stem.startswith("_") and p.stem != "common"
        )
        raise PlatformError(f"no job {name!r}; known jobs: {', '.join(known)}")
    p = Platform(settings)
    out = subprocess.run(
        [
            "bash",
            str(pyflink_home() / "bin" / "flink"),
            "run",
            "-d",
            *(["-s", savepoint] if savepoint else []),
            "-m",
            f"127.0.0.1:{p.s.flink_rest_port}",
            "-py",
            str(script),
            "-pyexec",
            str(p.s.python),
            "-pyclientexec",
            str(p.s.python),
            *args,
        ],
        env=p.flink_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    m = _JOB_ID.search(out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        raise PlatformError(f"submitting {name} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    job_id = m.group(1)
    wait_running(job_id, settings=p.s)
    return job_id


def job(job_id: str, settings: Settings | None = None) -> dict:
    return _rest("GET", f"/jobs/{job_id}", settings=settings)


def wait_running(job_id: str, timeout: float = 60, settings: Settings | None = None) -> None:
    """Wait until the job and all its tasks run (so a test's input is not raced)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(job_id, settings)
        state = info.get("state")
        if state in ("FAILED", "CANCELED", "FINISHED"):
            raise PlatformError(f"job {job_id} is {state}: {exceptions(job_id, settings)}")
        if state == "RUNNING" and all(
            v.get("status") == "RUNNING" for v in info.get("vertices", [])
        ):
            return
        time.sleep(0.2)
    raise PlatformError(f"job {job_id} not running after {timeout:.0f} s")


def exceptions(job_id: str, settings: Settings | None = None) -> str:
    try:
        info = _rest("GET", f"/jobs/{job_id}/exceptions", settings=settings)
    except PlatformError as e:
        return str(e)
    root = (info or {}).get("rootException") or ""
    return root[:2000]


def list_jobs(settings: Settings | None = None) -> list[dict]:
    info = _rest("GET", "/jobs/overview", settings=settings)
    return [
        {"id": j["jid"], "name": j["name"], "state": j["state"]}
        for j in (info or {}).get("jobs", [])
    ]


def cancel(job_id: str, settings: Settings | None = None, timeout: float = 60) -> None:
    _rest("PATCH", f"/jobs/{job_id}?mode=cancel", settings=settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job(job_id, settings).get("state") in ("CANCELED", "FAILED", "FINISHED"):
            return
        time.sleep(0.2)
    raise PlatformError(f"job {job_id} did not stop within {timeout:.0f} s")


def savepoint(
    job_id: str, *, stop: bool = False, settings: Settings | None = None, timeout: float = 120
) -> str:
    """Trigger a savepoint (optionally stop-with-savepoint); returns its location."""
    s = settings or Settings.from_env()
    target = f"file://{s.home / 'flink' / 'savepoints'}"
    path = f"/jobs/{job_id}/stop" if stop else f"/jobs/{job_id}/savepoints"
    body: dict = {"targetDirectory": target, "formatType": "CANONICAL"}
    if not stop:
        body["cancel-job"] = False
    trig = _rest("POST", path, body, settings=s)
    rid = trig["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _rest("GET", f"/jobs/{job_id}/savepoints/{rid}", settings=s)
        if st["status"]["id"] == "COMPLETED":
            op = st.get("operation", {})
            if "failure-cause" in op:
                raise PlatformError(f"savepoint failed: {op['failure-cause']}")
            return str(op["location"])
        time.sleep(0.2)
    raise PlatformError(f"savepoint of {job_id} not complete after {timeout:.0f} s")


def metric(job_id: str, name: str, settings: Settings | None = None) -> float | None:
    """Sum over all operators and subtasks of a job of the metrics whose id ends in
    ``name`` (e.g. ``rendezvous.open_mailboxes``); None when no such metric exists yet."""
    info = job(job_id, settings)
    total: float | None = None
    for v in info.get("vertices", []):
        base = f"/jobs/{job_id}/vertices/{v['id']}/metrics"
        ids = [m["id"] for m in _rest("GET", base, settings=settings) or []
               if m["id"].endswith(name)]
        if not ids:
            continue
        for m in _rest("GET", f"{base}?get={','.join(ids)}", settings=settings) or []:
            try:
                total = (total or 0.0) + float(m["value"])
            except (KeyError, ValueError):
                continue
    return total


def mailbox_state(job_id: str, settings: Settings | None = None) -> tuple[int, int]:
    """(open mailboxes, tombstones) of a rendezvous job, from its counters."""

    def m(name: str) -> int:
        return int(metric(job_id, f"rendezvous.{name}", settings) or 0)

    answered = sum(m(f"results_{r}") for r in ("preferred", "fallback", "default", "none"))
    return (m("mailboxes_opened") - answered - m("orphans_dropped"),
            answered - m("tombstones_cleared"))
