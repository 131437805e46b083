"""Windowed latency: a 30 s stall shows in the windowed report, not in a whole-run p99.9."""

from __future__ import annotations

import json

import numpy as np

from udfs.codec import codec_for
from udfs.meta.latency import (
    SpanBuilder,
    WindowedLatency,
    normalised_report,
    should_trace,
    to_chrome_trace,
    to_otlp_json,
)

STALL = (300_000, 330_000)


def steady_run_with_stall(seed: int = 0) -> WindowedLatency:
    """10 min at 100 req/s, latency lognormal (median 5 ms); during the stall nothing
    completes and back pressure stops admission; the 4 in-flight requests finish at its
    end with ≈ 30 s latency."""
    rng = np.random.default_rng(seed)
    lat = WindowedLatency(window_ms=5_000)
    for ts in range(0, 600_000, 10):
        if STALL[0] <= ts < STALL[1]:
            continue
        lat.update("m1", "score", int(rng.lognormal(np.log(5_000), 0.5)), ts)
    for k in range(4):
        lat.update("m1", "score", 30_000_000 - k * 10_000, STALL[1] + k)
    return lat


def test_stall_visible_in_windows_but_not_in_whole_run_p999():
    lat = steady_run_with_stall()
    whole = lat.whole_run("m1", "score")
    assert whole.get_total_count() == 60_000 - 3_000 + 4
    assert whole.get_value_at_percentile(99.9) < 50_000  # ≈ 23.8 ms: the stall is invisible
    rep = lat.report("m1", "score")
    assert len(rep) == 120
    slow = [r for r in rep if r.p999_us is not None and r.p999_us > 10_000_000]
    assert [r.window_start for r in slow] == list(range(STALL[0], STALL[1] + 1, 5_000))
    assert all(r.filled_from == STALL[1] and r.count == 0 for r in slow[:-1])
    assert slow[-1].count > 0 and slow[-1].filled_from is None
    assert all(r.max_us is not None and r.max_us > 29_000_000 for r in slow)
    quiet = [r for r in rep if r not in slow]
    assert all(r.p99_us is not None and r.p99_us < 50_000 for r in quiet)


def test_open_stall_and_flush():
    lat = WindowedLatency(window_ms=5_000)
    lat.update("m", "select", 1_000, 1_000)
    rep = lat.report("m", "select", 0, 20_000)
    assert [r.open_stall for r in rep] == [False, True, True, True]
    assert rep[1].p999_us is None
    assert normalised_report({}, 5_000, 0, 5_000)[0].open_stall
    closed = lat.flush(upto_ms=5_000)
    assert len(closed) == 1 and lat.report("m", "select") == []
    rec = closed[0].metric_record()
    assert rec["kind"] == "hdr" and isinstance(codec_for("Metric").encode(rec), bytes)


def test_spans_encode_and_export():
    sb = SpanBuilder("rendezvous", "1")
    spans = sb.request_trace("req-42", received_us=1_700_000_000_000_000,
                             sent_us=1_700_000_000_009_000,
                             models={"m1": (1_700_000_000_001_000, 1_700_000_000_005_000),
                                     "m2": (1_700_000_000_001_000, 1_700_000_000_007_000)},
                             selection=(1_700_000_000_007_500, 1_700_000_000_008_000),
                             attributes={"request_id": "req-42"})
    codec = codec_for("Span")
    for s in spans:
        back = codec.decode(codec.encode(s))
        assert isinstance(back, dict) and back["span_id"] == s["span_id"]
    root = spans[0]
    assert all(s["parent_span_id"] == root["span_id"] for s in spans[1:])
    otlp = json.loads(json.dumps(to_otlp_json(spans)))
    flat = [sp for r in otlp["resourceSpans"] for sp in r["scopeSpans"][0]["spans"]]
    assert len(flat) == 6
    assert {len(sp["traceId"]) for sp in flat} == {32}
    assert {len(sp["spanId"]) for sp in flat} == {16}
    services = {r["resource"]["attributes"][0]["value"]["stringValue"]
                for r in otlp["resourceSpans"]}
    assert services == {"rendezvous", "m1", "m2"}
    chrome = to_chrome_trace(spans)
    assert [e["dur"] for e in chrome["traceEvents"]][:3] == [9_000, 0, 4_000]


def test_sampling_fraction():
    n = sum(should_trace(None, f"r{i}", 0.1) for i in range(20_000))
    assert 1_800 < n < 2_200
    assert should_trace({"trace": False}, "x", 0.0) is False
