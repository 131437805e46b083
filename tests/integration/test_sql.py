"""`rdv sql` against the running platform: records made with udfs.codec (requests, four
models' scores, results, dead letters) on topics of a unique prefix, then

- Flink's own AvroSchemaConverter derives, from each table, the contract's schema (byte
  compatibility checked in the JVM), and every field of the records reads back equal,
  nested envelope, provenance and diagnostics included;
- every README example query (rdv.sql.EXAMPLES) gives what numpy says about the records;
- a followed query stops at its limit; a SQL mistake is a short error and exit code 2.

Queries run in a local mini-cluster inside this process, never on the cluster. Timestamps
are two whole minutes in the past so that the per-minute windows are known exactly.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from rdv import sql
from rdv.kafka_io import produce
from rdv.pipeline import Topics
from udfs.codec import codec_for, dead_letter, envelope

MODELS = ("fraud_gbm", "fraud_logreg", "fraud_rules", "fraud_canary")
N = 160  # requests; 4 scores each


def _decision(p: float) -> str:
    return "decline" if p >= 0.5 else "review" if p >= 0.2 else "approve"


def _make(prefix: str) -> dict:
    rng = np.random.default_rng(42)
    now = int(time.time() * 1000)
    base = now - now % 60_000 - 4 * 60_000  # two whole minutes, four minutes ago
    requests, scores, results = [], [], []
    for i in range(N):
        ts = base + int(i * 120_000 / N)
        req = envelope("test-client", "1", tags={"channel": ("web", "pos")[i % 2]})
        req["timestamp"] = ts
        if i % 7 == 0:
            req["provenance"]["trace"] = {"trace_id": f"{i:032x}", "parent_span_id": None}
            req["diagnostics"] = {
                "trace": True, "log_level": "debug", "fallback_schedule": None,
                "faults": [{"target": "fraud_gbm", "kind": "delay", "delay_ms": 5}]}
        rid = f"sql-{i:05d}"
        req.update(
            request_id=rid, entity_key=f"card-{i % 13:06d}", return_address="results-x",
            inputs={"numbers": {"amount": float(rng.uniform(1, 500))},
                    "labels": {"country": "US"}, "refs": {}},
            external_state=None if i % 3 else {
                "source": "profiles", "as_of": ts - 10 if i % 2 else None,
                "numbers": {"avg_amount": 12.5}, "labels": {"home_country": "US"},
                "missing": ["x"] if i % 2 else []},
            internal_state={"velocity": float(i)} if i % 5 == 0 else None)
        requests.append(req)
        for m in MODELS:
            p = float(rng.beta(1.0, 6.0))
            err = "boom" if (m == "fraud_rules" and i % 40 == 0) else None
            s = envelope(f"score:{m}", "1")
            s["timestamp"] = ts + int(rng.integers(1, 30))
            s["provenance"]["hops"].insert(0, req["provenance"]["hops"][0])
            s.update(request_id=rid, entity_key=req["entity_key"], model_id=m,
                     model_version="1",
                     outputs=({"numbers": {}, "labels": {}, "refs": {}} if err else
                              {"numbers": {"fraud_probability": p},
                               "labels": {"decision": _decision(p)}, "refs": {}}),
                     latency_us=int(rng.lognormal(4.0, 0.8)), request_timestamp=ts,
                     error=err)
            scores.append(s)
        r = envelope("rendezvous", "1")
        r["timestamp"] = ts + 45
        u = rng.uniform()
        reason, model = (("preferred", "fraud_gbm") if u < 0.7 else
                         ("fallback", "fraud_logreg") if u < 0.9 else ("default", None))
        r.update(request_id=rid, entity_key=req["entity_key"], model_id=model,
                 model_version="1" if model else None,
                 outputs=None if model is None else {"numbers": {"fraud_probability": 0.1},
                                                     "labels": {}, "refs": {}},
                 reason=reason, detail=f"{reason} after x ms", schedule_id="demo",
                 request_timestamp=ts, waited_ms=int(rng.integers(2, 60)), scores_seen=2)
        results.append(r)
    letters = [dead_letter(c, f"{why}: detail {k}", b"\xff\x00", key=b"k", source_topic=t,
                           partition=0, offset=k)
               for k, (c, why, t) in enumerate([("augment", "truncated", "raw"),
                                                 ("augment", "truncated", "raw"),
                                                 ("rendezvous", "trailing bytes", "scores")])]
    topics = Topics(prefix)
    for topic, codec, recs, key in (
        (topics.input, "Request", requests, "entity_key"),
        (topics.scores, "Score", scores, "request_id"),
        (topics.results, "Result", results, "request_id"),
        (topics.deadletter, "DeadLetter", letters, "component"),
    ):
        c = codec_for(codec)
        produce(topic, [(str(x[key]).encode(), c.encode(x)) for x in recs])
    return {"requests": requests, "scores": scores, "results": results, "letters": letters,
            "base": base}


@pytest.fixture(scope="module")
def data(platform) -> Iterator[dict]:  # noqa: ANN001
    prefix = f"sql{uuid.uuid4().hex[:6]}-"
    Topics(prefix).create(partitions=2)
    d = _make(prefix)
    d["prefix"] = prefix
    yield d


def _q(data: dict, query: str, **kw: object) -> list[tuple]:
    t0 = time.monotonic()
    rows = sql.run_query(query, prefix=data["prefix"], timeout=120, **kw)  # type: ignore[arg-type]
    print(f"{time.monotonic() - t0:5.1f} s  {len(rows):4d} rows  {query.split(chr(10))[0][:60]}")
    return rows


def _minute(ts: int) -> datetime:
    return datetime.fromtimestamp((ts - ts % 60_000) / 1000, UTC).replace(tzinfo=None)


def _between(value: float, values: list[float], q: float) -> bool:
    """A quantile estimate within one rank step (plus a 2% of rank slack) of the sample's."""
    lo = np.quantile(values, max(0.0, q - 0.02) - 1 / len(values), method="lower")
    hi = np.quantile(values, min(1.0, q + 0.02 + 1 / len(values)), method="higher")
    return bool(lo - 1e-9 <= value <= hi + 1e-9)


# --------------------------------------------------------------------------- contract


def test_flinks_avro_schema_of_every_table_is_the_contracts(data: dict) -> None:
    """AvroSchemaConverter (the 'avro' format's own derivation) run in the JVM."""
    from pyflink.java_gateway import get_gateway

    env = sql.create_env(data["prefix"])
    conv = get_gateway().jvm.org.apache.flink.formats.avro.typeutils.AvroSchemaConverter
    for spec in sql.TABLES:
        row_type = env.from_path(spec.name)._j_table.getResolvedSchema() \
            .toPhysicalRowDataType().getLogicalType()
        derived = json.loads(conv.convertToSchema(row_type).toString())
        assert sql.avro_shape(derived) == sql.avro_shape(sql.load_avsc(spec.message_type)), \
            spec.name


@pytest.mark.parametrize("table, message_type, key", [
    ("input", "Request", "requests"), ("scores", "Score", "scores"),
    ("results", "Result", "results"), ("deadletter", "DeadLetter", "letters")])
def test_rows_decode_to_the_records_produced(data: dict, table: str, message_type: str,
                                             key: str) -> None:
    names = [n for n, _ in sql.physical_type(message_type).fields]
    cols = ", ".join(sql.quote(n) for n in names)
    where = "" if table == "deadletter" else " WHERE request_id < 'sql-00015'"
    rows = _q(data, f"SELECT {cols}, kafka_partition, kafka_offset FROM {table}{where}")
    want = {r["message_id"]: r for r in data[key]
            if table == "deadletter" or r["request_id"] < "sql-00015"}
    got = {}
    for row in rows:
        rec = dict(zip(names, row[:-2], strict=True))
        rec = {k: bytes(v) if isinstance(v, bytearray) else v for k, v in rec.items()}
        got[rec["message_id"]] = rec
        assert row[-2] in (0, 1) and row[-1] >= 0
    assert got == want


# --------------------------------------------------------------------------- examples


def test_example_latency(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["latency"][1])
    lat: dict[tuple, list[float]] = defaultdict(list)
    for s in data["scores"]:
        lat[(_minute(s["timestamp"]), s["model_id"])].append(s["latency_us"])
    assert {(r[0], r[1]) for r in rows} == set(lat)
    for start, model, n, p50, p99 in rows:
        v = lat[(start, model)]
        assert n == len(v)
        assert _between(p50 * 1000, v, 0.5) and _between(p99 * 1000, v, 0.99), (model, start)


def test_example_fallback_rate(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["fallback-rate"][1])
    by_min: dict[datetime, list[dict]] = defaultdict(list)
    for r in data["results"]:
        by_min[_minute(r["timestamp"])].append(r)
    assert sorted(r[0] for r in rows) == sorted(by_min)
    for start, n, fallbacks, defaults, fb_rate, df_rate, max_wait in rows:
        rs = by_min[start]
        assert n == len(rs)
        assert fallbacks == sum(r["reason"] == "fallback" for r in rs)
        assert defaults == sum(r["reason"] == "default" for r in rs)
        assert float(fb_rate) == pytest.approx(fallbacks / n, abs=1e-4)
        assert float(df_rate) == pytest.approx(defaults / n, abs=1e-4)
        assert max_wait == max(r["waited_ms"] for r in rs)


def test_example_canary_disagreement(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["canary-disagreement"][1])
    ok = {(s["request_id"], s["model_id"]): s["outputs"] for s in data["scores"]
          if s["error"] is None}
    assert {r[0] for r in rows} == {"fraud_gbm", "fraud_logreg", "fraud_rules"}
    for model, pairs, mean_diff, share_gt, share_dec in rows:
        both = [(o, ok[(rid, "fraud_canary")]) for (rid, m), o in ok.items()
                if m == model and (rid, "fraud_canary") in ok]
        diffs = np.array([abs(a["numbers"]["fraud_probability"]
                              - c["numbers"]["fraud_probability"]) for a, c in both])
        assert pairs == len(both)
        assert float(mean_diff) == pytest.approx(diffs.mean(), abs=1e-4)
        assert float(share_gt) == pytest.approx(np.mean(diffs > 0.1), abs=1e-4)
        assert float(share_dec) == pytest.approx(
            np.mean([a["labels"]["decision"] != c["labels"]["decision"] for a, c in both]),
            abs=1e-4)


def test_example_answers(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["answers"][1])
    want = Counter((r["model_id"] or "(default)", r["reason"]) for r in data["results"])
    assert {(r[0], r[1]): r[2] for r in rows} == dict(want)
    for who, reason, _, avg_wait, max_wait in rows:
        w = [r["waited_ms"] for r in data["results"]
             if (r["model_id"] or "(default)", r["reason"]) == (who, reason)]
        assert float(avg_wait) == pytest.approx(np.mean(w), abs=0.051)
        assert max_wait == max(w)


def test_example_score_quantiles(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["score-quantiles"][1])
    vals: dict[str, list[float]] = defaultdict(list)
    for s in data["scores"]:
        if s["error"] is None:
            vals[s["model_id"]].append(s["outputs"]["numbers"]["fraud_probability"])
    assert {r[0] for r in rows} == set(MODELS)
    for model, n, p50, p90, p99, le_half in rows:
        v = vals[model]
        assert n == len(v)
        for est, q in ((p50, 0.5), (p90, 0.9), (p99, 0.99)):
            assert _between(est, v, q), (model, q, est)
        assert le_half == pytest.approx(np.mean(np.array(v) <= 0.5), abs=0.02)


def test_example_deadletters(data: dict) -> None:
    rows = _q(data, sql.EXAMPLES["deadletters"][1])
    got = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert got == {("augment", "raw", "truncated"): 2, ("rendezvous", "scores",
                                                        "trailing bytes"): 1}


# --------------------------------------------------------------------------- streaming, errors


def test_a_followed_query_stops_at_its_limit(data: dict) -> None:
    t0 = time.monotonic()
    rows = _q(data, "SELECT request_id, kafka_timestamp FROM input", follow=True, limit=25)
    assert len(rows) == 25 and all(r[0].startswith("sql-") for r in rows)
    assert isinstance(rows[0][1], datetime)
    assert time.monotonic() - t0 < 60


def test_sql_mistakes_are_short_errors_with_exit_code_2(data: dict) -> None:
    err = io.StringIO()
    code = sql.sql_command("SELECT nope FROM scores", prefix=data["prefix"],
                           out=io.StringIO(), err=err)
    assert code == 2
    msg = err.getvalue()
    assert "Column 'nope' not found" in msg and "\tat " not in msg and len(msg) < 400
    with pytest.raises(sql.SqlError, match="Object 'nosuch' not found"):
        sql.run_query("SELECT * FROM nosuch", prefix=data["prefix"], timeout=30)


def test_the_cli_prints_an_aligned_table(data: dict) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = sql.sql_command(None, example="answers", prefix=data["prefix"], out=out, err=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].split(" | ")[0].strip() == "answered_by"
    assert len({len(line) for line in lines[2:]}) <= 2  # aligned (numbers right-justified)
    assert sum(1 for line in lines[2:] if "fraud_gbm" in line) == 1
