"""The benchmark's pure parts, without Kafka: the open-loop schedule, latency accounting
free of coordinated omission, the Avro timestamp framing and the summary shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import report
from bench.load import (
    Answer,
    Tally,
    arrival_offsets_ns,
    avro_long,
    ceiling,
    latencies_ms,
    open_loop,
    prepare,
    strip_leading_long,
    summarize,
)
from bench.profile import summarize as profile_summary
from udfs.codec import codec_for
from udfs.demo import generator

MS = 1_000_000


class FakeClock:
    """A clock that only moves when the code sleeps or when a send takes time."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


# --------------------------------------------------------------------------- schedule


def test_constant_arrivals_are_evenly_spaced() -> None:
    off = arrival_offsets_ns(200, 5)
    assert len(off) == 1000
    assert off[0] == 0
    assert set(np.diff(off).tolist()) == {5 * MS}


def test_poisson_arrivals_have_the_offered_mean_rate_and_are_reproducible() -> None:
    off = arrival_offsets_ns(1000, 20, "poisson", seed=3)
    assert len(off) == 20_000 and off[0] == 0
    assert np.all(np.diff(off) >= 0)
    gaps = np.diff(off) / 1e9
    assert gaps.mean() == pytest.approx(1 / 1000, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 1000, rel=0.05)  # exponential: std == mean
    assert np.array_equal(off, arrival_offsets_ns(1000, 20, "poisson", seed=3))
    assert not np.array_equal(off, arrival_offsets_ns(1000, 20, "poisson", seed=4))


def test_bad_schedule_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        arrival_offsets_ns(0, 1)
    with pytest.raises(ValueError):
        arrival_offsets_ns(10, 1, "bursty")


def test_open_loop_sends_on_schedule_without_waiting_for_answers() -> None:
    clock = FakeClock()
    sent_order: list[int] = []
    start, sent = open_loop(arrival_offsets_ns(100, 1), sent_order.append, clock=clock,
                            sleep=clock.sleep, start_ns=0)
    assert sent_order == list(range(100))
    assert np.array_equal(sent, np.arange(100) * 10 * MS)


def test_a_stall_does_not_shift_the_schedule() -> None:
    """Request 10's send blocks for 1 s: the 100 requests due meanwhile go out at once
    when it returns, and the schedule after that is unchanged (not shifted by 1 s)."""
    clock = FakeClock()

    def send(i: int) -> None:
        if i == 10:
            clock.now += 1000 * MS

    start, sent = open_loop(arrival_offsets_ns(100, 3), send, clock=clock, sleep=clock.sleep,
                            start_ns=0)
    assert sent[11] == sent[110] == 1100 * MS  # all the requests due during the stall
    assert sent[111] == 1110 * MS  # back on the original schedule
    assert sent[-1] == 2990 * MS


# --------------------------------------------------------------------------- accounting


def _stalled_run() -> tuple[np.ndarray, np.ndarray, Tally]:
    """100 req/s for 10 s; every answer takes 1 ms, except that the generator stalls for
    1 s at request 100 (think: a GC pause): requests 101..199 go out late."""
    clock = FakeClock()

    def send(i: int) -> None:
        if i == 100:
            clock.now += 1000 * MS

    offsets = arrival_offsets_ns(100, 10)
    start, sent = open_loop(offsets, send, clock=clock, sleep=clock.sleep, start_ns=0)
    tally = Tally(len(offsets))
    for i, t in enumerate(sent.tolist()):
        tally.mark(i, t + (1000 * MS if i == 100 else 0) + 1 * MS)
    return offsets, sent, tally


def test_latency_is_charged_from_the_intended_send_time() -> None:
    offsets, sent, tally = _stalled_run()
    lat = latencies_ms(offsets, tally.recv_ns)
    # every request delayed by the stall is charged: a closed-loop (coordinated-omission)
    # measurement from the actual send time would show exactly one slow request
    assert np.count_nonzero(lat > 500) == 51
    assert np.count_nonzero(lat > 100) == 91
    naive = (tally.recv_ns - sent) / MS
    assert np.count_nonzero(naive > 100) == 1
    assert lat.max() == pytest.approx(1001)
    assert lat[101] == pytest.approx(991)  # due 10 ms after the stall began


def test_summary_of_a_stalled_run() -> None:
    offsets, sent, tally = _stalled_run()
    s = summarize(offered_rps=100, start_ns=0, offsets_ns=offsets, sent_ns=sent, tally=tally,
                  deadline_ms=50)
    assert s["sent"] == s["received"] == 1000 and s["lost"] == s["duplicated"] == 0
    assert s["p50_ms"] == pytest.approx(1, rel=0.01)
    assert s["p99_ms"] > 800  # 9.6% of the requests took > 50 ms
    assert s["max_ms"] == pytest.approx(1001, rel=0.001)
    assert s["late_fraction"] == pytest.approx(96 / 1000)
    assert s["send_lag_max_ms"] == pytest.approx(990, rel=0.001)
    assert s["achieved_rps"] == pytest.approx(100, rel=0.01)


def test_lost_and_duplicated_answers_are_counted_and_lost_ones_are_late() -> None:
    offsets = arrival_offsets_ns(10, 1)
    tally = Tally(10)
    for i in range(8):
        tally.mark(i, int(offsets[i]) + 2 * MS)
    assert not tally.mark(3, int(offsets[3]) + 5 * MS)  # a duplicate keeps the first time
    tally.mark(3, int(offsets[3]) + 6 * MS)
    assert (tally.lost, tally.duplicated, tally.received) == (2, 2, 8)
    s = summarize(offered_rps=10, start_ns=0, offsets_ns=offsets, sent_ns=offsets.copy(),
                  tally=tally, deadline_ms=50)
    assert s["lost"] == 2 and s["duplicated"] == 2
    assert s["late_fraction"] == pytest.approx(0.2)
    assert s["max_ms"] == pytest.approx(2, rel=0.01)


def test_generator_ceiling_is_the_highest_rate_kept_up_with() -> None:
    runs = [
        {"offered_rps": 1000, "achieved_rps": 999, "lost": 0, "send_lag_p99_ms": 0.5},
        {"offered_rps": 5000, "achieved_rps": 4990, "lost": 0, "send_lag_p99_ms": 1.0},
        {"offered_rps": 10000, "achieved_rps": 9000, "lost": 0, "send_lag_p99_ms": 80.0},
    ]
    assert ceiling(runs) == 5000


# --------------------------------------------------------------------------- Avro framing


@pytest.mark.parametrize("n", [0, 1, -1, 63, 64, 8191, 1_796_418_931_056, -(2**63), 2**63 - 1])
def test_avro_long_matches_fastavro(n: int) -> None:
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, {"type": "record", "name": "L",
                                     "fields": [{"name": "x", "type": "long"}]}, {"x": n})
    assert avro_long(n) == buf.getvalue()
    assert strip_leading_long(buf.getvalue() + b"rest") == b"rest"


def test_prepared_requests_decode_with_the_send_time_as_timestamp() -> None:
    recs = [r for r, _ in generator.transactions(3, seed=1)]
    prep = prepare(recs, "tag", "results-x", diagnostics={"faults": [
        {"target": "fraud_gbm", "kind": "delay", "delay_ms": 80}]})
    codec = codec_for("Request")
    got = codec.decode(avro_long(1_800_000_000_123) + prep.rests[2])
    assert isinstance(got, dict)
    assert got["timestamp"] == 1_800_000_000_123
    assert got["request_id"] == "tag-00000002"
    assert got["return_address"] == "results-x"
    assert got["diagnostics"]["faults"][0]["delay_ms"] == 80
    assert prep.keys[2] == recs[2]["entity_key"].encode()


# --------------------------------------------------------------------------- summary


def _stats(rate: float, p50: float, p99: float, achieved: float | None = None,
           lost: int = 0) -> dict:
    return {"offered_rps": rate, "achieved_rps": achieved if achieved is not None else rate,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 1.5, "max_ms": p99 * 2,
            "lost": lost, "duplicated": 0, "late_fraction": 0.0, "sent": int(rate * 10)}


def _runs() -> list[dict]:
    runs = []
    for rate in (100, 200, 1000):
        runs.append(report.run_entry("B0", 1, _stats(rate, 1, 3)))
        runs.append(report.run_entry("B1", 1, _stats(rate, 4, 10)))
        answers = [Answer("fraud_gbm" if i % 4 else "fraud_logreg",
                          "preferred" if i % 4 else "fallback", 5 + i % 30)
                   for i in range(int(rate * 10))]
        p99 = 20 if rate < 1000 else 400
        runs.append(report.run_entry("R", 1, _stats(rate, 8, p99, rate * 0.7 if rate == 1000
                                                    else None), answers, "fraud_gbm", 50))
        runs.append(report.run_entry("R", 2, _stats(rate, 7, 30), answers, "fraud_gbm", 50))
    return runs


def test_summary_has_exactly_the_agreed_shape() -> None:
    doc = report.summary(_runs(), 50, -29.5, machine={"nproc": 2})
    assert list(doc)[:3] == ["runs", "max_sustained_rps", "deadline_overrun_p99_ms"]
    for run in doc["runs"]:
        assert list(run)[:len(report.RUN_KEYS)] == list(report.RUN_KEYS)
        assert run["system"] in ("B0", "B1", "R")
        assert isinstance(run["parallelism"], int)
    assert set(doc["max_sustained_rps"]) == {"B0", "B1", "R"}
    assert doc["deadline_overrun_p99_ms"] == -29.5
    json.dumps(doc, allow_nan=False)  # plain JSON


def test_preferred_fraction_and_decision_times() -> None:
    r = next(r for r in _runs() if r["system"] == "R")
    assert r["preferred_fraction"] == pytest.approx(0.75)
    assert r["models"] == {"fraud_gbm": 750, "fraud_logreg": 250}
    assert r["decided_ms"]["max"] == 34
    b = next(r for r in _runs() if r["system"] == "B0")
    assert b["preferred_fraction"] is None


def test_max_sustained_needs_p99_under_deadline_and_the_offered_rate() -> None:
    runs = _runs()
    assert report.max_sustained(runs, 50) == {"B0": 1000, "B1": 1000, "R": 1000}
    assert report.max_sustained(runs, 50, by_parallelism=True)["R@1"] == 200
    assert report.max_sustained(runs, 25, by_parallelism=True)["R@2"] == 0


def test_ratios_per_rate() -> None:
    rows = {r["offered_rps"]: r for r in report.ratios(_runs())}
    assert rows[100] == {"offered_rps": 100, "R/B1_p50": 2.0, "R/B1_p99": 2.0,
                         "R/B0_p50": 8.0, "R/B0_p99": 6.67}
    assert rows[1000]["R/B1_p99"] == 40.0


def test_overrun_is_answer_time_minus_deadline() -> None:
    answers = [Answer("fraud_logreg", "fallback", 20 + i % 3) for i in range(100)]
    o = report.overrun([*answers, None], 50)
    assert o["n"] == 100 and o["min"] == -30 and o["max"] == -28


def test_nan_becomes_null() -> None:
    assert report.clean({"a": [float("nan"), 1.0], "b": math.inf}) == {"a": [None, 1.0],
                                                                        "b": None}


def test_tables_render() -> None:
    doc = report.summary(_runs(), 50, None)
    t = report.table(doc["runs"])
    assert t.count("\n") == len(doc["runs"]) + 1 and "| R | 2 | 1000 |" in t
    assert "| 100 | 2.00 | 2.00 | 8.00 | 6.67 |" in report.ratio_table(doc["ratios"])


def test_profile_summary_of_folded_stacks() -> None:
    folded = ("process_element (jobs/score.py:80);predict (models/fraud_gbm/predict.py:12) 30\n"
              "process_element (jobs/score.py:80);encode (udfs/codec.py:140) 10\n"
              "garbage line\n")
    s = profile_summary(folded)
    assert s["samples"] == 40
    assert s["self"][0] == ["fraud_gbm/predict.py:predict", 0.75]
    assert ["jobs/score.py:process_element", 1.0] in s["inclusive"]
