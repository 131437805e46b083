"""The benchmark's summary: run entries, ratios, maximum sustained rates, deadline overrun
and a plain-text table. Pure functions (no Kafka), tested in tests/unit/test_bench.py."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bench.load import Answer

#: the keys every entry of ``runs`` has (the issue's summary shape), in order
RUN_KEYS = ("system", "parallelism", "offered_rps", "achieved_rps", "p50_ms", "p99_ms",
            "p999_ms", "max_ms", "lost", "duplicated", "preferred_fraction", "late_fraction")
SYSTEMS = ("B0", "B1", "R")
#: a rate is sustained when p99 is under the deadline, nothing is lost and the system
#: answered at (nearly) the offered rate
SUSTAIN_MIN_RATIO = 0.95


def clean(x: Any) -> Any:
    """NaN/inf → None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    return x


def run_entry(system: str, parallelism: int, stats: Mapping[str, Any],
              answers: Sequence[Answer | None] = (), preferred_model: str | None = None,
              deadline_ms: float = 50.0, **extra: Any) -> dict[str, Any]:
    """One ``runs`` entry: the summary keys first, then everything else measured."""
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    entry: dict[str, Any] = {"system": system, "parallelism": parallelism}
    got = [a for a in answers if a is not None]
    preferred = None
    if preferred_model is not None:
        sent = max(int(stats["sent"]), 1)
        preferred = round(sum(a.model_id == preferred_model for a in got) / sent, 5)
    for k in RUN_KEYS[2:]:
        entry[k] = preferred if k == "preferred_fraction" else stats[k]
    entry.update({k: v for k, v in stats.items() if k not in entry})
    if got:
        decided = np.array([a.decided_ms for a in got], dtype=np.float64)
        entry["decided_ms"] = quantiles(decided)
        entry["decided_late_fraction"] = round(float(np.mean(decided > deadline_ms)), 5)
        entry["models"] = dict(Counter(str(a.model_id) for a in got).most_common())
        entry["reasons"] = dict(Counter(a.reason for a in got).most_common())
    entry.update(extra)
    return entry


def quantiles(values: np.ndarray | Sequence[float]) -> dict[str, float | None]:
    """Exact p50/p90/p99/p99.9/min/max of a small sample (values may be negative)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "p999": None,
                "max": None}
    q = np.percentile(v, [50, 90, 99, 99.9])
    return {"n": int(v.size), "min": float(v.min()), "p50": float(q[0]), "p90": float(q[1]),
            "p99": float(q[2]), "p999": float(q[3]), "max": float(v.max())}


def overrun(answers: Iterable[Answer | None], deadline_ms: float) -> dict[str, Any]:
    """Distribution of (answer time − deadline) in ms: result timestamp − request
    timestamp − deadline (negative: answered before the deadline)."""
    return quantiles([a.decided_ms - deadline_ms for a in answers if a is not None])


def sustained(run: Mapping[str, Any], deadline_ms: float) -> bool:
    p99 = run.get("p99_ms")
    return (p99 is not None and math.isfinite(p99) and p99 < deadline_ms
            and run["lost"] == 0
            and run["achieved_rps"] >= SUSTAIN_MIN_RATIO * run["offered_rps"])


def max_sustained(runs: Iterable[Mapping[str, Any]], deadline_ms: float,
                  by_parallelism: bool = False) -> dict[str, float]:
    """Per system, the highest offered rate sustained with p99 under the deadline (0 when
    not even the lowest was); with ``by_parallelism`` keyed ``"R@2"`` etc."""
    best: dict[str, float] = {}
    for r in runs:
        key = f"{r['system']}@{r['parallelism']}" if by_parallelism else r["system"]
        best.setdefault(key, 0.0)
        if sustained(r, deadline_ms):
            best[key] = max(best[key], float(r["offered_rps"]))
    return best


def ratios(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per offered rate (parallelism 1): R/B1 and R/B0 of p50 and p99."""
    at = {(r["system"], r["parallelism"], r["offered_rps"]): r for r in runs}
    out = []
    for rate in sorted({r["offered_rps"] for r in runs if r["system"] == "R"}):
        rr = at.get(("R", 1, rate))
        if rr is None:
            continue
        row: dict[str, Any] = {"offered_rps": rate}
        for base in ("B1", "B0"):
            b = at.get((base, 1, rate))
            for p in ("p50", "p99"):
                key = f"R/{base}_{p}"
                num, den = rr.get(f"{p}_ms"), b.get(f"{p}_ms") if b else None
                row[key] = (round(num / den, 2) if num is not None and den
                            and math.isfinite(num) and math.isfinite(den) else None)
        out.append(row)
    return out


def summary(runs: Sequence[Mapping[str, Any]], deadline_ms: float,
            deadline_overrun_p99_ms: float | None, **extra: Any) -> dict[str, Any]:
    """The results document: ``runs``, ``max_sustained_rps`` (R: the best over the
    parallelisms measured) and ``deadline_overrun_p99_ms`` first, then ``extra``."""
    best = max_sustained(runs, deadline_ms)
    doc: dict[str, Any] = {
        "runs": [dict(r) for r in runs],
        "max_sustained_rps": {s: best.get(s) for s in SYSTEMS},
        "deadline_overrun_p99_ms": deadline_overrun_p99_ms,
        "max_sustained_rps_by_parallelism": max_sustained(runs, deadline_ms, True),
        "ratios": ratios(runs),
    }
    doc.update(extra)
    return clean(doc)


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def table(runs: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the runs."""
    head = ("| system | par | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms "
            "| lost | dup | preferred | late |")
    lines = [head, "|" + "---|" * 12]
    for r in runs:
        lines.append(
            f"| {r['system']} | {r['parallelism']} | {r['offered_rps']:.0f} "
            f"| {_f(r['achieved_rps'], '{:.0f}')} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} "
            f"| {_f(r['p999_ms'])} | {_f(r['max_ms'])} | {r['lost']} | {r['duplicated']} "
            f"| {_f(r['preferred_fraction'], '{:.1%}')} | {_f(r['late_fraction'], '{:.1%}')} |")
    return "\n".join(lines)


def ratio_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| offered/s | R/B1 p50 | R/B1 p99 | R/B0 p50 | R/B0 p99 |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['offered_rps']:.0f} | {_f(r['R/B1_p50'], '{:.2f}')} "
                     f"| {_f(r['R/B1_p99'], '{:.2f}')} | {_f(r['R/B0_p50'], '{:.2f}')} "
                     f"| {_f(r['R/B0_p99'], '{:.2f}')} |")
    return "\n".join(lines)
