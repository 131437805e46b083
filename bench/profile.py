"""py-spy profiles of the TaskManagers' embedded Python during a run (thread mode: every
Python operator of a TaskManager runs in its JVM process, under one GIL)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from rdv.settings import ROOT

PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def start(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` (raw/folded output) on a process, without pausing it."""
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def short(frame: str) -> str:
    """``predict (/x/models/fraud_gbm/predict.py:12)`` → ``fraud_gbm/predict.py:predict``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = Path(m["file"]).parts
    return f"{'/'.join(parts[-2:])}:{m['fn']}"


def summarize(folded: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the samples with a Python stack (folded format:
    ``frame;frame;... count`` per line, root first)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        n = int(m[2])
        frames = [short(f) for f in m[1].split(";") if f.strip()]
        # py-spy prefixes the thread ("process 1:"/"thread (0x..)") with some options
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(v / total, 3)] for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self": share(self_c), "inclusive": share(incl)}
