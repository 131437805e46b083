"""Windowed latency distributions (HdrHistogram) that a stall cannot hide, and trace spans.

**Windows.** Latencies (µs) are recorded per (subject, stage) in aligned windows
``[k·window_ms, (k+1)·window_ms)`` of the time the latency was *measured* (completion time),
in HdrHistograms (log-spaced buckets, ``sig_figs`` significant digits; 2 → ≤ 1 % error).

**Why normalise.** Under back pressure a stalled pipeline stops completing *and* stops
admitting requests, so a 30 s stall produces only a handful of slow samples among tens of
thousands: a whole-run p99.9 does not move (coordinated / structured omission). Giving each
window equal weight and filling the empty ones makes the stall occupy as much of the report
as it occupied of wall-clock time.

**Fill rule (exact).** Over the reported range of windows of one (subject, stage), a window
with no events takes (a reference to) the counts of the *next* window, in time order, that
has events — the window in which the stalled requests finally complete — and is marked
``filled_from`` = that window's start. Empty windows with no later non-empty window (a stall
still in progress at the end of the range) stay empty and are marked ``open_stall=True``
with percentiles ``None``. Non-empty windows are reported as they are. The filled counts are
only used for reporting; stored windows / metric records carry the raw counts.

Measured (``tests/unit/test_meta_latency.py``): 10 min at 100 req/s, lognormal latency
(median 5 ms), a 30 s stall in which 4 in-flight requests wait 30 s: whole-run p99.9 =
23.8 ms (no trace of the stall), while the windowed report shows 7 windows (the 6 empty 5 s
windows of the stall, filled, plus the one where the stall ends) with p99.9 = max ≈ 30 s.

>>> lat = WindowedLatency(window_ms=5_000)
>>> for ts in range(0, 20_000, 10):
...     if not 5_000 <= ts < 15_000:                 # stall: nothing completes for 10 s
...         lat.update("m1", "score", 30_000_000 if ts == 15_000 else 2_000, ts_ms=ts)
>>> for r in lat.report("m1", "score"):
...     print(r.window_start, r.count, r.filled_from, r.p999_us // 1000, "ms")
0 500 None 2 ms
5000 0 15000 30015 ms
10000 0 15000 30015 ms
15000 500 None 30015 ms
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

Span = dict[str, Any]


def new_histogram(highest_us: int = 3_600_000_000, sig_figs: int = 2) -> HdrHistogram:
    return HdrHistogram(1, highest_us, sig_figs)


@dataclass(frozen=True)
class WindowReport:
    window_start: int
    window_end: int
    count: int  # events recorded in this window itself
    filled_from: int | None  # start of the window whose counts this empty window took
    p50_us: int | None
    p99_us: int | None
    p999_us: int | None
    max_us: int | None
    open_stall: bool = False


def _stats(h: HdrHistogram) -> tuple[int, int, int, int]:
    return (
        int(h.get_value_at_percentile(50.0)),
        int(h.get_value_at_percentile(99.0)),
        int(h.get_value_at_percentile(99.9)),
        int(h.get_max_value()),
    )


def normalised_report(
    windows: Mapping[int, HdrHistogram], window_ms: int, start_ms: int, end_ms: int
) -> list[WindowReport]:
    """Per-window p50/p99/p99.9/max over ``[start_ms, end_ms)`` with the fill rule above.

    ``windows`` maps aligned window start → histogram (missing or empty = no events).
    """
    first = start_ms - start_ms % window_ms
    starts = list(range(first, end_ms, window_ms))
    out: list[WindowReport] = []
    nxt: tuple[int, tuple[int, int, int, int]] | None = None
    for s in reversed(starts):
        h = windows.get(s)
        n = int(h.get_total_count()) if h is not None else 0
        if h is not None and n > 0:
            st = _stats(h)
            nxt = (s, st)
            out.append(WindowReport(s, s + window_ms, n, None, *st))
        elif nxt is not None:
            out.append(WindowReport(s, s + window_ms, 0, nxt[0], *nxt[1]))
        else:
            out.append(WindowReport(s, s + window_ms, 0, None, None, None, None, None, True))
    out.reverse()
    return out


@dataclass
class LatencyWindow:
    subject: str
    stage: str
    window_start: int
    window_end: int
    histogram: HdrHistogram

    def metric_record(self, component: str = "monitor", version: str = "0") -> dict[str, Any]:
        """``Metric`` record, kind ``hdr`` (sketch = HdrHistogram standard encoding)."""
        from udfs.codec import envelope

        rec = envelope(component, version)
        rec.update(
            name=f"latency.{self.stage}", subject=self.subject, window_start=self.window_start,
            window_end=self.window_end, tags={"stage": self.stage}, kind="hdr",
            count=int(self.histogram.get_total_count()), value=None,
            sketch=bytes(self.histogram.encode()),
        )
        return rec


class WindowedLatency:
    """Latencies per (subject, stage) in short windows."""

    def __init__(
        self, window_ms: int = 5_000, highest_us: int = 3_600_000_000, sig_figs: int = 2
    ) -> None:
        self.window_ms = window_ms
        self.highest_us = highest_us
        self.sig_figs = sig_figs
        self.windows: dict[tuple[str, str], dict[int, HdrHistogram]] = {}

    def update(self, subject: str, stage: str, latency_us: int, ts_ms: int) -> None:
        ws = self.windows.setdefault((subject, stage), {})
        s = ts_ms - ts_ms % self.window_ms
        h = ws.get(s)
        if h is None:
            h = ws[s] = new_histogram(self.highest_us, self.sig_figs)
        h.record_value(min(max(1, int(latency_us)), self.highest_us))

    def report(
        self, subject: str, stage: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[WindowReport]:
        ws = self.windows.get((subject, stage), {})
        if not ws and (start_ms is None or end_ms is None):
            return []
        lo = min(ws) if start_ms is None else start_ms
        hi = max(ws) + self.window_ms if end_ms is None else end_ms
        return normalised_report(ws, self.window_ms, lo, hi)

    def whole_run(self, subject: str, stage: str) -> HdrHistogram:
        """Plain merge of every window (what a non-windowed p99.9 would see)."""
        total = new_histogram(self.highest_us, self.sig_figs)
        for h in self.windows.get((subject, stage), {}).values():
            total.add(h)
        return total

    def flush(self, upto_ms: int) -> list[LatencyWindow]:
        """Remove and return the windows that ended at or before ``upto_ms``."""
        out = []
        for (subject, stage), ws in self.windows.items():
            for s in sorted(k for k in ws if k + self.window_ms <= upto_ms):
                out.append(LatencyWindow(subject, stage, s, s + self.window_ms, ws.pop(s)))
        return out


# ---------------------------------------------------------------- trace spans


def should_trace(diagnostics: Mapping[str, Any] | None, request_id: str, fraction: float) -> bool:
    """Trace if the request asks for it (``diagnostics.trace``) or falls in the sampled
    ``fraction`` (deterministic on the request id, so every component agrees).

    >>> should_trace({"trace": True}, "r1", 0.0), should_trace(None, "r1", 1.0)
    (True, True)
    """
    if diagnostics and diagnostics.get("trace"):
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def _hex_id(value: str, nbytes: int) -> str:
    v = value.lower()
    if len(v) == 2 * nbytes and all(c in "0123456789abcdef" for c in v):
        return v
    return hashlib.blake2b(value.encode(), digest_size=nbytes).hexdigest()


class SpanBuilder:
    """Builds ``Span`` records (schemas/Span.avsc) with the common envelope.

    >>> from udfs.codec import codec_for
    >>> sb = SpanBuilder("rendezvous", "1")
    >>> spans = sb.request_trace("t" * 32, received_us=1_000, sent_us=9_000,
    ...                          models={"m1": (2_000, 6_000)}, selection=(6_500, 8_000))
    >>> [s["name"] for s in spans]
    ['rendezvous', 'request received', 'score m1', 'selection', 'result sent']
    >>> all(isinstance(codec_for("Span").encode(s), bytes) for s in spans)
    True
    >>> [r["scopeSpans"][0]["spans"][0]["name"] for r in to_otlp_json(spans)["resourceSpans"]]
    ['rendezvous', 'score m1']
    """

    def __init__(self, component: str, version: str = "0") -> None:
        self.component = component
        self.version = version

    def span(
        self, trace_id: str, name: str, start_us: int, end_us: int, *,
        parent_span_id: str | None = None, span_id: str | None = None,
        attributes: Mapping[str, Any] | None = None, component: str | None = None,
    ) -> Span:
        from udfs.codec import envelope, new_message_id

        rec = envelope(self.component, self.version)
        rec["timestamp"] = end_us // 1000
        rec["provenance"]["hops"][0]["timestamp"] = end_us // 1000
        rec["provenance"]["trace"] = {"trace_id": trace_id, "parent_span_id": parent_span_id}
        rec.update(
            trace_id=trace_id,
            span_id=span_id or new_message_id()[:16],
            parent_span_id=parent_span_id,
            name=name,
            component=component or self.component,
            start_us=int(start_us),
            end_us=int(end_us),
            attributes={str(k): str(v) for k, v in (attributes or {}).items()},
        )
        return rec

    def request_trace(
        self, trace_id: str, received_us: int, sent_us: int,
        models: Mapping[str, tuple[int, int]], selection: tuple[int, int],
        parent_span_id: str | None = None, attributes: Mapping[str, Any] | None = None,
    ) -> list[Span]:
        """Root span (received → sent) with children: request received, one score span per
        model, selection, result sent (zero-length spans mark instants)."""
        root = self.span(trace_id, "rendezvous", received_us, sent_us,
                         parent_span_id=parent_span_id, attributes=attributes)
        pid = root["span_id"]
        out = [root, self.span(trace_id, "request received", received_us, received_us,
                               parent_span_id=pid)]
        for model, (s, e) in models.items():
            out.append(self.span(trace_id, f"score {model}", s, e, parent_span_id=pid,
                                 attributes={"model_id": model}, component=model))
        out.append(self.span(trace_id, "selection", *selection, parent_span_id=pid))
        out.append(self.span(trace_id, "result sent", sent_us, sent_us, parent_span_id=pid))
        return out


def to_otlp_json(spans: Iterable[Span]) -> dict[str, Any]:
    """OTLP/JSON (``ExportTraceServiceRequest``) of the spans, one resource per component
    (``service.name``). Ids that are not already 32 / 16 hex chars are hashed into that
    shape; times are unix nanoseconds as strings, as the OTLP JSON mapping requires."""
    by_comp: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        attrs = [{"key": k, "value": {"stringValue": v}} for k, v in s["attributes"].items()]
        o: dict[str, Any] = {
            "traceId": _hex_id(s["trace_id"], 16),
            "spanId": _hex_id(s["span_id"], 8),
            "name": s["name"],
            "kind": 1,  # SPAN_KIND_INTERNAL
            "startTimeUnixNano": str(s["start_us"] * 1000),
            "endTimeUnixNano": str(s["end_us"] * 1000),
            "attributes": attrs,
        }
        if s.get("parent_span_id"):
            o["parentSpanId"] = _hex_id(s["parent_span_id"], 8)
        by_comp.setdefault(s["component"], []).append(o)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name",
                                             "value": {"stringValue": comp}}]},
                "scopeSpans": [{"scope": {"name": "rdv"}, "spans": ss}],
            }
            for comp, ss in by_comp.items()
        ]
    }


def to_chrome_trace(spans: Sequence[Span]) -> dict[str, Any]:
    """Chrome trace event format (``chrome://tracing`` / Perfetto): complete events."""
    return {
        "traceEvents": [
            {
                "name": s["name"], "cat": s["component"], "ph": "X", "ts": s["start_us"],
                "dur": s["end_us"] - s["start_us"], "pid": s["trace_id"], "tid": s["component"],
                "args": dict(s["attributes"], span_id=s["span_id"],
                             parent_span_id=s.get("parent_span_id") or ""),
            }
            for s in spans
        ],
        "displayTimeUnit": "ms",
    }
