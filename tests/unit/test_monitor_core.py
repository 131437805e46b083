"""The monitor job's per-record logic without Flink: decoding and dead letters, windowed
sketches and latency metrics on event time, signals, pairing and the combined alarm."""

from __future__ import annotations

import pytest
from fastdigest import TDigest
from hdrh.histogram import HdrHistogram

from jobs.common import config_from_args
from jobs.monitor import (
    AlarmCore,
    EventDecoder,
    MonitorConfig,
    MonitorCore,
    PairCore,
    ks_uniform,
)
from udfs.codec import codec_for, envelope

T0 = 1_700_000_000_000


def score(model: str, rid: str, ts: int, p: float, tags: dict | None = None,
          latency_us: int = 1_000, error: str | None = None) -> dict:
    rec = envelope(f"score:{model}", "1", tags=tags or {})
    rec.update(timestamp=ts, request_id=rid, entity_key="e", model_id=model, model_version="1",
               outputs={"numbers": {"fraud_probability": p, "margin": 1 - p}, "labels": {},
                        "refs": {}},
               latency_us=latency_us, request_timestamp=ts, error=error)
    return rec


def result(rid: str, ts: int, reason: str = "preferred", waited_ms: int = 12) -> dict:
    rec = envelope("rendezvous", "1")
    rec.update(timestamp=ts, request_id=rid, entity_key="e", model_id="m", model_version="1",
               outputs=None, reason=reason, detail="", schedule_id="s", request_timestamp=ts,
               waited_ms=waited_ms, scores_seen=1)
    return rec


def raw(topic: str, name: str, rec: dict, offset: int = 0) -> tuple:
    return (topic, 0, offset, rec["timestamp"], rec["request_id"].encode(),
            codec_for(name).encode(rec))


def metrics(outs: list, cfg: MonitorConfig) -> list[dict]:
    got = []
    for kind, row in outs:
        if kind == "out" and row[0] == cfg.metrics_topic:
            m = codec_for("Metric").decode(row[2])
            assert isinstance(m, dict)
            got.append(m)
    return got


CFG = MonitorConfig(champion="champ", canary="canary", window_ms=1_000, latency_window_ms=1_000,
                    lateness_ms=100, reference_windows=2, min_reference_n=20, min_window_n=5,
                    idle_ms=5_000, input_topic="input")


def test_decoder_makes_compact_events_and_dead_letters() -> None:
    dec = EventDecoder(MonitorConfig(input_topic="input", tag_keys="channel"))
    ev, dead = dec.decode(raw("scores", "Score",
                              score("m1", "r1", T0, 0.25, {"channel": "web", "x": "1"})))
    assert dead is None
    assert ev == ("score", "m1", T0, "r1", {"fraud_probability": 0.25, "margin": 0.75}, 1_000,
                  {"channel": "web"}, False, "scores:0")
    ev, _ = dec.decode(raw("results", "Result", result("r1", T0 + 5, "fallback", 30)))
    assert ev == ("result", "rendezvous", T0 + 5, "r1", "fallback", 30, "m", "results:0")
    req = envelope("client", "1")
    req.update(request_id="r2", entity_key="e", return_address="results",
               inputs={"numbers": {}, "labels": {}, "refs": {}}, external_state=None,
               internal_state=None)
    ev, _ = dec.decode(raw("input", "Request", req))
    assert ev == ("request", "input", req["timestamp"], "r2", "input:0")
    ev, dead = dec.decode(("scores", 1, 7, T0, b"k", b"\xff\x00garbage"))
    assert ev is None and dead is not None
    topic, key, value = dead
    dl = codec_for("DeadLetter").decode(value)
    assert topic == "deadletter" and key == b"k" and isinstance(dl, dict)
    assert (dl["source_topic"], dl["partition"], dl["offset"]) == ("scores", 1, 7)
    assert dl["component"] == "monitor" and dl["payload"] == b"\xff\x00garbage"


def test_sketches_and_latency_per_window_on_event_time() -> None:
    core = MonitorCore(CFG)
    dec = EventDecoder(CFG)
    outs: list = []
    for i in range(300):  # 100 per second for 3 s, two tag combinations
        ts = T0 + i * 10
        tags = {"channel": "web" if i % 3 else "app"}
        ev, _ = dec.decode(raw("scores", "Score", score("m1", f"r{i}", ts, (i % 100) / 100,
                                                         tags, latency_us=1_000 + i)))
        outs += core.process(ev)  # type: ignore[arg-type]
    ms = metrics(outs, CFG)
    # windows close lateness_ms after their end: the first two seconds are out
    digests = [m for m in ms if m["name"] == "score.fraud_probability"]
    assert {m["window_start"] for m in digests} == {T0, T0 + 1_000}
    assert sum(m["count"] for m in digests) == 200
    assert {m["tags"]["channel"] for m in digests} == {"web", "app"}
    d = TDigest.from_bytes(digests[0]["sketch"])
    assert d.n_values == digests[0]["count"]
    assert {m["name"] for m in ms} >= {"score.margin", "latency.score"}
    lat = [m for m in ms if m["name"] == "latency.score"]
    h = HdrHistogram.decode(lat[0]["sketch"])
    assert h.get_total_count() == 100 and lat[0]["subject"] == "m1"
    sigs = [row for kind, row in outs if kind == "sig"]
    assert [(s[0], s[1]) for s in sigs] == [("m1", T0), ("m1", T0 + 1_000)]
    assert sigs[0][3]["error_rate"] == 0.0 and sigs[0][3]["latency_p99"] > 1.0
    # the reference (2 windows) is ready from the third window on: quantiles flow
    qs = [row for kind, row in outs if kind == "q"]
    assert qs and all(r[1] == "m1" and 0 <= r[2] <= 1 for r in qs)
    assert qs[0][3] >= T0 + 2_000


def test_idle_clock_closes_windows_and_stoppage_is_a_signal() -> None:
    core = MonitorCore(CFG)
    outs: list = []
    for i in range(200):
        reason = "preferred" if i % 4 else "fallback"
        outs += core.process(("result", "rendezvous", T0 + i * 10, f"r{i}", reason, 20, "m",
                              "results:0"), wall_ms=1)
    assert not core.idle(wall_ms=2)  # not idle long enough
    outs += core.idle(wall_ms=1 + 5_000)
    sigs = [row for kind, row in outs if kind == "sig"]
    assert [s[1] - T0 for s in sigs][:2] == [0, 1_000]
    assert sigs[0][3]["fallback_share"] == pytest.approx(0.25)
    assert sigs[0][3]["waited_p99"] == pytest.approx(20)
    assert any(s[3] == {} or "result_rate" in s[3] for s in sigs[2:])
    assert {m["name"] for m in metrics(outs, CFG)} == {"latency.waited"}


def test_late_records_are_counted_and_still_sketched() -> None:
    core = MonitorCore(CFG)
    for i in range(100):
        core.process(("score", "m1", T0 + i * 30, f"r{i}", {"p": 0.5}, 10, {}, False, "s:0"))
    outs = core.process(("score", "m1", T0 + 5, "late", {"p": 0.9}, 10, {}, False, "s:0"))
    assert core.counts["late"] == 1
    outs += core.process(("score", "m1", T0 + 5_000, "next", {"p": 0.5}, 10, {}, False, "s:0"))
    late = [m for m in metrics(outs, CFG) if m["name"] == "score.p" and m["window_start"] == T0]
    assert [m["count"] for m in late] == [1]  # a second, partial record of that window


def test_pairs_every_model_with_champion_and_canary() -> None:
    pc = PairCore(CFG)
    assert pc.process(("r1", "challenger", 0.9, T0)) == []
    assert pc.process(("r1", "champ", 0.2, T0 + 1)) == [
        ("pair", "challenger", "champ", 0.9, 0.2, T0 + 1, "r1")]
    got = pc.process(("r1", "canary", 0.3, T0 + 2))
    assert sorted(p[1:3] for p in got) == [("canary", "champ"), ("challenger", "canary")]


def test_alarm_core_turns_disagreement_into_a_signal_and_an_alert() -> None:
    cfg = MonitorConfig(champion="champ", canary="", window_ms=1_000, min_history=20,
                        min_window_n=5, alarm_hours_per_week=0.1)
    core = AlarmCore(cfg)
    alerts = []
    for w in range(60):
        start = T0 + w * 1_000
        bad = w >= 50
        for i in range(20):
            qm = 0.5 + (0.4 if bad else 0.05 * ((i % 3) - 1))
            core.process(("pair", "ch", "champ", qm, 0.5, start + i * 10, f"r{w}-{i}"))
        outs = core.process(("sig", "ch", start, start + 1_000, {"other": float(w % 7)}))
        for _, (topic, _, value) in outs:
            if topic == cfg.alerts_topic:
                alerts.append(codec_for("Alert").decode(value))
            else:
                m = codec_for("Metric").decode(value)
                assert isinstance(m, dict)
                if m["name"] == "disagree.champ":
                    assert m["value"] == (1.0 if bad else 0.0) and m["count"] == 20
    assert alerts and alerts[0]["subject"] == "ch"
    assert alerts[0]["timestamp"] == T0 + 51_000
    assert alerts[0]["signals"][0]["name"] == "disagree_vs_champ"
    assert "most disagreeing: r50-" in alerts[0]["message"]


def test_ks_uniform() -> None:
    assert ks_uniform([]) == 0.0
    assert ks_uniform([(i + 0.5) / 100 for i in range(100)]) == pytest.approx(0.05)
    assert ks_uniform([0.95] * 100) == pytest.approx(9.5)


def test_config_from_flags_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_args(MonitorConfig, ["--scores-topic", "p-scores", "--window-ms", "500",
                                           "--alarm-hours-per-week", "0.5"], "monitor")
    assert (cfg.scores_topic, cfg.window_ms, cfg.alarm_hours_per_week) == ("p-scores", 500, 0.5)
    assert cfg.start_from == "latest" and cfg.references == ("fraud_gbm", "fraud_canary")
    with pytest.raises(SystemExit):
        config_from_args(MonitorConfig, ["--rate-bucket-ms", "7000"], "monitor")
    assert "rate_bucket_ms must divide an hour" in capsys.readouterr().err
