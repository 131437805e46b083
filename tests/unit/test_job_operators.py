"""The jobs' operator classes, called directly (no JVM): what each does with good and bad
records. The same classes run inside Flink in the integration tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pyflink.common import Row

from jobs.passthrough import PassthroughConfig, Stamp
from jobs.rendezvous import DEAD_LETTERS, RendezvousConfig, RouteByRequest
from jobs.score import ScoreConfig, Scorer
from rdv.settings import ROOT
from udfs.codec import codec_for, envelope

RULES = str(ROOT / "models" / "fraud_rules")  # its artifact (rules.yaml) is source


def _request(rid: str = "r1", faults: list | None = None) -> dict:
    r = envelope("t", "0")
    r.update(request_id=rid, entity_key="card-1", return_address="results",
             inputs={"numbers": {"amount": 50.0, "card_present": 0.0},
                     "labels": {"country": "NL", "merchant_category": "grocery"}, "refs": {}},
             external_state=None, internal_state=None)
    if faults is not None:
        r["diagnostics"] = {"trace": False, "log_level": None, "fallback_schedule": None,
                            "faults": faults}
    return r


def _raw(value: bytes | None, topic: str = "input", key: bytes | None = b"card-1") -> Row:
    return Row(topic, 0, 7, 0, key, value)


def test_stamp_adds_a_hop_or_dead_letters() -> None:
    stamp = Stamp(PassthroughConfig(sink_topic="out"))
    stamp.open(None)
    good = codec_for("Request").encode(_request())
    topic, key, value = stamp.stamp("raw", 0, 1, b"card-1", good)
    assert topic == "out" and key == b"card-1"
    hops = codec_for("Request").decode(value)["provenance"]["hops"]  # type: ignore[index]
    assert [h["component"] for h in hops] == ["t", "passthrough"]
    topic, _, value = stamp.stamp("raw", 0, 2, b"k", b"junk")
    dl = codec_for("DeadLetter").decode(value)
    assert topic == "deadletter" and dl["payload"] == b"junk"  # type: ignore[index]
    assert dl["offset"] == 2  # type: ignore[index]


def _scorer(allow_faults: bool = False) -> Scorer:
    s = Scorer(ScoreConfig(model_dir=RULES, allow_faults=allow_faults))
    s.setup()
    return s


def test_scorer_emits_a_score_keyed_by_request_id() -> None:
    row, _ = _scorer().score(_raw(codec_for("Request").encode(_request("abc"))))
    assert row[0] == "scores" and row[1] == b"abc"
    score = codec_for("Score").decode(row[2])
    assert isinstance(score, dict)
    assert score["model_id"] == "fraud_rules" and score["error"] is None
    assert score["outputs"]["labels"]["decision"] in ("approve", "review", "decline")


def test_scorer_dead_letters_bad_bytes() -> None:
    row, _ = _scorer().score(_raw(b"\x01\x02"))
    assert row[0] == "deadletter"
    assert codec_for("DeadLetter").decode(row[2])["component"] == "score:fraud_rules"  # type: ignore[index]


@pytest.mark.parametrize("allowed", [True, False])
def test_fault_injection_only_where_the_deployment_allows_it(allowed: bool) -> None:
    scorer = _scorer(allow_faults=allowed)
    fail = _request(faults=[{"target": "fraud_rules", "kind": "fail", "delay_ms": 0}])
    score = codec_for("Score").decode(scorer.score(_raw(codec_for("Request").encode(fail)))[0][2])
    assert (score["error"] is not None) is allowed  # type: ignore[index]

    delay = _request(faults=[{"target": "fraud_rules", "kind": "delay", "delay_ms": 60}])
    t0 = time.perf_counter()
    scorer.score(_raw(codec_for("Request").encode(delay)))
    took = time.perf_counter() - t0
    assert (took >= 0.06) is allowed


def test_faults_for_other_models_are_ignored() -> None:
    other = _request(faults=[{"target": "fraud_gbm", "kind": "fail", "delay_ms": 0}])
    score = codec_for("Score").decode(
        _scorer(allow_faults=True).score(_raw(codec_for("Request").encode(other)))[0][2])
    assert score["error"] is None  # type: ignore[index]


def test_score_config_rejects_a_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no manifest.yaml"):
        ScoreConfig(model_dir=str(tmp_path))


def test_route_by_request_keys_requests_and_scores() -> None:
    route = RouteByRequest(RendezvousConfig())
    route.open(None)
    req = codec_for("Request").encode(_request("q1"))
    (row,) = list(route.process_element(_raw(req, topic="input"), None))
    assert row[0] == "q1" and row[1] == "request"
    (row,) = list(route.process_element(_raw(b"anything", topic="scores", key=b"q1"), None))
    assert row[0] == "q1" and row[1] == "score"
    ((tag, dead),) = list(route.process_element(_raw(b"junk", topic="input"), None))
    assert tag is DEAD_LETTERS and dead[0] == "deadletter"
