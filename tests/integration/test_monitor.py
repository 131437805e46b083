"""The monitor job on the real platform: a replayed scenario in which one of three models is
replaced mid-stream by a model whose output distribution differs.

Synthetic ``Score`` records (tests/unit/test_monitor_scenario.py: champ, canary, challenger
scoring the same requests at 50 requests/s of *event* time, 1 s windows) are produced
straight to a scores topic of a unique prefix, faster than real time; the monitor job reads
them from the beginning. The alert must name challenger and its signals within a stated
number of requests after the change, and there must be no alert for champ or canary.
"""

from __future__ import annotations

import time
import uuid

from rdv.kafka_io import consume, produce
from rdv.monitor import alerts_topic, collect, create_monitor_topics, metrics_topic, monitor_args
from rdv.pipeline import Topics
from tests.unit.test_monitor_scenario import SCENARIO_CONFIG, scenario
from udfs.codec import codec_for

N_REQUESTS = 4_000
CHANGE_AT = 3_000  # challenger is replaced from this request on
#: the bound asserted: alert within this many requests after the change (measured: see below)
MAX_REQUESTS_TO_ALERT = 150


def _flags(cfg: dict) -> list[str]:
    return [x for k, v in cfg.items() for x in ("--" + k.replace("_", "-"), str(v))
            if k not in ("champion", "canary")]


def test_replaced_model_raises_one_alert_naming_it(platform, run_job) -> None:  # noqa: ANN001
    topics = Topics(prefix=f"mon{uuid.uuid4().hex[:6]}-")
    from rdv.kafka_io import create_topics

    # one partition: the backlog is read in event-time order (with two, the source may fetch
    # one partition thousands of records ahead of the other: see jobs/monitor.py "Clock")
    create_topics({topics.scores: 1, topics.results: 1, topics.deadletter: 1})
    create_monitor_topics(topics)

    codec = codec_for("Score")
    records = list(scenario(N_REQUESTS, CHANGE_AT, seed=7))
    request_ts = {i: rec["request_timestamp"] for i, rec in records}
    change_ts = request_ts[CHANGE_AT]
    produce(topics.scores, [(rec["request_id"].encode(), codec.encode(rec))
                            for _, rec in records] + [(b"bad", b"\x00not avro")])

    started = time.monotonic()
    run_job("monitor", *monitor_args(
        topics, champion="champ", canary="canary", with_input=False, start_from="earliest",
        extra=[*_flags(SCENARIO_CONFIG), "--idle-ms", "2000"]))

    alert_codec = codec_for("Alert")
    deadline = time.monotonic() + 60
    alerts: list[dict] = []
    while time.monotonic() < deadline and not any(a["subject"] == "challenger" for a in alerts):
        msgs = consume([alerts_topic(topics)], timeout=3, idle=1)
        alerts = [a for m in msgs if isinstance(a := alert_codec.decode(m.value), dict)]
    took = time.monotonic() - started
    # let the rest of the stream through (the tail closes on the idle clock)
    time.sleep(4)
    metric_msgs = consume([metrics_topic(topics)], timeout=20, idle=3)
    alerts = [a for m in consume([alerts_topic(topics)], timeout=5, idle=1)
              if isinstance(a := alert_codec.decode(m.value), dict)]

    # when the replay ends, the idle clock runs on and every model's stoppage is (rightly)
    # alarmed: only the alerts of windows inside the replayed stream are judged
    end_ts = max(request_ts.values())
    stoppage = [a for a in alerts if a["timestamp"] > end_ts + 1_000]
    print("after the end of the stream:", [(a["subject"], a["signals"][0]["name"])
                                           for a in stoppage])
    alerts = [a for a in alerts if a["timestamp"] <= end_ts + 1_000]
    flagged = [a for a in alerts if a["subject"] == "challenger"]
    assert flagged, f"no alert for the replaced model after {took:.0f} s: {alerts}"
    first = min(flagged, key=lambda a: a["timestamp"])
    after = sum(1 for i, ts in request_ts.items() if change_ts <= ts < first["timestamp"])
    top = [s["name"] for s in first["signals"][:3]]
    print(f"challenger flagged {after} requests after the change (alert at event time "
          f"+{first['timestamp'] - change_ts} ms, {took:.0f} s after submission); top "
          f"signals {top}; message: {first['message']}")
    assert first["timestamp"] >= change_ts, "an alert before the change is a false alarm"
    assert after <= MAX_REQUESTS_TO_ALERT
    assert set(top) & {"disagree_vs_champ", "disagree_vs_canary", "score_shift", "drift",
                       "bin_rate"}
    assert all(s["log_odds"] >= 0 for s in first["signals"])
    assert not [a for a in alerts if a["subject"] != "challenger"], "alert for an unchanged model"

    # metrics: digests per model and tag combination, latency histograms, alarm gauges
    metric = codec_for("Metric")
    ms = [m for x in metric_msgs if isinstance(m := metric.decode(x.value), dict)]
    digests = {(m["subject"], m["tags"].get("channel")) for m in ms if m["kind"] == "tdigest"}
    assert {(mod, ch) for mod in ("champ", "canary", "challenger")
            for ch in ("web", "app")} <= digests
    assert {m["subject"] for m in ms if m["name"] == "latency.score"} == {
        "champ", "canary", "challenger"}
    assert {m["subject"] for m in ms if m["name"] == "alarm"} >= {"champ", "canary", "challenger"}

    dead = consume([topics.deadletter], timeout=10, expect=1)
    assert [d.key for d in dead] == [b"bad"]

    # rdv monitor reads it back: quantiles merged over tags, latency, alerts
    snap = collect(topics.prefix, seconds=600, path=":memory:")
    assert {s for s, _ in snap.score_quantiles} == {"champ", "canary", "challenger"}
    n, (p50, p90, p99, p999) = snap.score_quantiles[("champ", "fraud_probability")]
    assert n > 0 and 0 < p50 < p90 < p99 <= p999 < 1
    assert ("challenger", "score") in snap.latency and snap.alarms["challenger"]
    assert any(a["subject"] == "challenger" for a in snap.alerts)
