"""The mailbox decision: preferred, fallback, early fallback, deadline, default, none."""

from __future__ import annotations

import pytest

from udfs.codec import codec_for, envelope, new_message_id
from udfs.mailbox import (
    ACCEPTED,
    DUPLICATE,
    LATE,
    ORPHAN_MS,
    TOMBSTONE_MS,
    Mailbox,
    build_result,
    cleanup_at,
    decide,
    is_late,
    next_deadline,
)
from udfs.schedule import DEFAULT_SCHEDULE, Stage, parse_schedule

T0 = 1_700_000_000_000  # request timestamp: the clock origin

DOC = {
    "id": "s1",
    "stages": [{"model": "A", "wait_ms": 20}, {"model": "B", "wait_ms": 30},
               {"model": "C", "wait_ms": 40}],
    "deadline_ms": 50,
    "default": {"outputs": {"numbers": {"p": 0.5}, "labels": {"d": "review"}}},
    "ignore": ["canary"],
}
SCH = parse_schedule(DOC)
NO_DEFAULT = parse_schedule({k: v for k, v in DOC.items() if k != "default"})


def request(rid: str = "r1", ts: int = T0, user: str = "u1") -> dict:
    return {
        "timestamp": ts,
        "message_id": new_message_id(),
        "provenance": {
            "hops": [{"component": "client", "version": "1", "timestamp": ts - 3},
                     {"component": "augment", "version": "2", "timestamp": ts}],
            "tags": {"channel": "web"},
            "trace": {"trace_id": "t" * 32, "parent_span_id": "p1"},
        },
        "diagnostics": None,
        "request_id": rid,
        "entity_key": "card-9",
        "return_address": "results",
        "inputs": {"numbers": {"amount": 12.5}, "labels": {"user_id": user}, "refs": {}},
        "external_state": None,
        "internal_state": {"velocity": 3.0},
    }


def score(model: str, rid: str = "r1", error: str | None = None, p: float = 0.9) -> dict:
    return {
        "timestamp": T0 + 5,
        "message_id": new_message_id(),
        "provenance": {"hops": [{"component": "augment", "version": "2", "timestamp": T0},
                                {"component": f"model-{model}", "version": "7",
                                 "timestamp": T0 + 4}],
                       "tags": {}, "trace": None},
        "diagnostics": None,
        "request_id": rid,
        "entity_key": "card-9",
        "model_id": model,
        "model_version": f"{model}-1.0",
        "outputs": {"numbers": {"p": p}, "labels": {}, "refs": {}},
        "latency_us": 900,
        "request_timestamp": T0,
        "error": error,
    }


def opened(schedule=SCH, ts: int = T0) -> Mailbox:
    mb = Mailbox("r1")
    assert mb.attach_request(request(ts=ts), schedule)
    return mb


def test_preferred_answers_immediately():
    mb = opened()
    assert decide(mb, SCH, T0 + 1) is None
    assert next_deadline(mb, SCH, T0 + 1) == T0 + 50  # nothing to wait for but the deadline
    mb.add_score(score("A"), T0 + 3)
    d = decide(mb, SCH, T0 + 3)
    assert d is not None
    assert (d.model_id, d.reason, d.waited_ms, d.scores_seen) == ("A", "preferred", 3, 1)
    assert d.outputs == score("A")["outputs"]


def test_preferred_beats_fallback_already_in_the_mailbox():
    mb = opened()
    mb.add_score(score("B"), T0 + 2)
    assert decide(mb, SCH, T0 + 2) is None
    mb.add_score(score("A"), T0 + 10)
    d = decide(mb, SCH, T0 + 10)
    assert d is not None and d.model_id == "A" and d.reason == "preferred"
    assert d.scores_seen == 2


def test_fallback_at_stage_time():
    mb = opened()
    mb.add_score(score("B"), T0 + 5)
    assert decide(mb, SCH, T0 + 5) is None
    assert next_deadline(mb, SCH, T0 + 5) == T0 + 20  # when B becomes acceptable
    assert decide(mb, SCH, T0 + 19) is None
    d = decide(mb, SCH, T0 + 20)
    assert d is not None
    assert (d.model_id, d.reason) == ("B", "fallback")
    assert d.detail == "fallback to B after 20 ms (A: no score)"


def test_later_stage_prefers_earlier_acceptable_one():
    mb = opened()
    mb.add_score(score("C"), T0 + 1)
    mb.add_score(score("B"), T0 + 2)
    assert next_deadline(mb, SCH, T0 + 2) == T0 + 20
    d = decide(mb, SCH, T0 + 20)
    assert d is not None and d.model_id == "B"


def test_third_stage_waits_for_its_own_start():
    mb = opened()
    mb.add_score(score("C"), T0 + 1)
    assert next_deadline(mb, SCH, T0 + 1) == T0 + 30
    assert decide(mb, SCH, T0 + 25) is None
    d = decide(mb, SCH, T0 + 30)
    assert d is not None and d.model_id == "C"
    assert d.detail == "fallback to C after 30 ms (A: no score, B: no score)"


def test_error_from_preferred_gives_early_fallback():
    mb = opened()
    mb.add_score(score("A", error="model crashed"), T0 + 2)
    assert decide(mb, SCH, T0 + 2) is None  # nothing usable yet: wait
    mb.add_score(score("B"), T0 + 4)
    d = decide(mb, SCH, T0 + 4)  # B answers before its stage starts: A cannot beat it
    assert d is not None
    assert (d.model_id, d.reason, d.waited_ms) == ("B", "fallback", 4)
    assert "A: error: model crashed" in d.detail


def test_error_score_arriving_after_fallback_score_triggers_answer():
    mb = opened()
    mb.add_score(score("B"), T0 + 2)
    assert decide(mb, SCH, T0 + 2) is None
    mb.add_score(score("A", error="boom"), T0 + 6)
    assert next_deadline(mb, SCH, T0 + 6) == T0 + 6
    d = decide(mb, SCH, T0 + 6)
    assert d is not None and d.model_id == "B"


def test_all_stage_models_failed_answers_default_early():
    mb = opened()
    for m in "ABC":
        mb.add_score(score(m, error="down"), T0 + 3)
    d = decide(mb, SCH, T0 + 3)
    assert d is not None
    assert (d.model_id, d.score, d.reason) == (None, None, "default")
    assert d.outputs == {"numbers": {"p": 0.5}, "labels": {"d": "review"}, "refs": {}}
    assert "every stage model failed" in d.detail


def test_deadline_with_nothing_gives_default():
    mb = opened()
    assert decide(mb, SCH, T0 + 49) is None
    d = decide(mb, SCH, T0 + 50)
    assert d is not None
    assert (d.reason, d.model_id, d.waited_ms, d.scores_seen) == ("default", None, 50, 0)
    assert d.detail.startswith("default after 50 ms (deadline): A: no score")


def test_deadline_with_nothing_and_no_default_gives_none():
    mb = opened(NO_DEFAULT)
    d = decide(mb, NO_DEFAULT, T0 + 51)
    assert d is not None
    assert (d.reason, d.outputs, d.model_id) == ("none", None, None)
    assert d.detail.endswith("; no default")


def test_default_schedule_answers_none_at_its_deadline_only():
    mb = opened(DEFAULT_SCHEDULE)
    assert mb.schedule_id == "none"
    mb.add_score(score("A"), T0 + 1)  # unknown model under this schedule
    assert decide(mb, DEFAULT_SCHEDULE, T0 + 1) is None
    assert next_deadline(mb, DEFAULT_SCHEDULE, T0 + 1) == T0 + 50
    d = decide(mb, DEFAULT_SCHEDULE, T0 + 50)
    assert d is not None and d.reason == "none" and d.scores_seen == 1


def test_canary_never_answers_even_if_alone():
    mb = opened()
    assert mb.add_score(score("canary"), T0 + 1) == ACCEPTED
    assert decide(mb, SCH, T0 + 1) is None
    assert next_deadline(mb, SCH, T0 + 1) == T0 + 50
    d = decide(mb, SCH, T0 + 50)
    assert d is not None and d.reason == "default" and d.model_id is None
    assert d.scores_seen == 1


def test_unknown_model_is_ignored():
    mb = opened(NO_DEFAULT)
    mb.add_score(score("mystery"), T0 + 1)
    assert decide(mb, NO_DEFAULT, T0 + 1) is None
    d = decide(mb, NO_DEFAULT, T0 + 60)
    assert d is not None and d.reason == "none"


def test_ignore_applied_from_the_live_schedule():
    mb = opened()
    doc = dict(DOC, stages=[{"model": "B", "wait_ms": 30}], ignore=["A"])
    newer = parse_schedule(doc)
    mb.add_score(score("A"), T0 + 1)
    mb.add_score(score("B"), T0 + 2)
    d = decide(mb, newer, T0 + 2)  # A is ignored now, so B need not wait for it
    assert d is not None and d.model_id == "B" and "A: ignored" in d.detail


def test_fallback_at_deadline_uses_best_before_deadline():
    mb = opened()
    mb.add_score(score("C", p=0.3), T0 + 45)
    d = decide(mb, SCH, T0 + 45)  # C is acceptable from 30 ms
    assert d is not None and d.model_id == "C"


def test_score_after_deadline_is_not_used():
    mb = opened()
    # the deadline timer fires late: at 58 ms, B (arrived at 55 ms) is in the mailbox
    assert mb.add_score(score("B"), T0 + 55) == LATE
    assert mb.late == 1
    d = decide(mb, SCH, T0 + 58)
    assert d is not None and d.reason == "default" and d.model_id is None
    assert d.scores_seen == 0 and d.waited_ms == 58
    assert "B: after deadline" in d.detail


def test_score_before_deadline_used_even_if_timer_fires_late():
    mb = opened()
    mb.add_score(score("C"), T0 + 10)
    mb.add_score(score("A"), T0 + 52)  # after the deadline: never preferred
    d = decide(mb, SCH, T0 + 60)
    assert d is not None and d.model_id == "C" and d.reason == "fallback"


def test_scores_before_request():
    mb = Mailbox.from_score(score("B"), now_ms=T0 + 2)
    assert mb.add_score(score("B"), T0 + 2) == ACCEPTED
    assert mb.add_score(score("canary"), T0 + 3) == ACCEPTED
    assert mb.opened_at_ms == T0 and mb.request is None
    assert decide(mb, SCH, T0 + 3) is None
    assert next_deadline(mb, SCH, T0 + 3) is None
    assert cleanup_at(mb, SCH) == T0 + 50 + ORPHAN_MS  # orphan expiry if the request never comes
    assert mb.attach_request(request(), SCH)
    assert cleanup_at(mb, SCH) is None
    assert decide(mb, SCH, T0 + 8) is None
    assert next_deadline(mb, SCH, T0 + 8) == T0 + 20
    mb.add_score(score("A"), T0 + 9)
    d = decide(mb, SCH, T0 + 9)
    assert d is not None and d.model_id == "A" and d.scores_seen == 3


def test_request_arriving_after_its_deadline_answers_at_once():
    mb = Mailbox.from_score(score("B"), now_ms=T0 + 10)
    mb.add_score(score("B"), T0 + 10)
    mb.add_score(score("A"), T0 + 70)
    mb.attach_request(request(), SCH)
    assert mb.late == 1
    d = decide(mb, SCH, T0 + 80)
    assert d is not None and d.model_id == "B" and d.waited_ms == 80


def test_duplicates_first_wins():
    mb = opened()
    mb.add_score(score("B", p=0.1), T0 + 1)
    assert mb.add_score(score("B", p=0.2), T0 + 2) == DUPLICATE
    assert not mb.attach_request(request(), SCH)
    assert mb.duplicates == 2
    assert mb.scores["B"]["outputs"]["numbers"]["p"] == 0.1


def test_next_deadline_sequencing():
    mb = opened()
    seq = []
    now = T0
    mb.add_score(score("canary"), now)
    seq.append(next_deadline(mb, SCH, now))      # only the deadline matters
    now = T0 + 5
    mb.add_score(score("C"), now)
    seq.append(next_deadline(mb, SCH, now))      # C acceptable at 30 ms
    now = T0 + 8
    mb.add_score(score("B"), now)
    seq.append(next_deadline(mb, SCH, now))      # B better, acceptable at 20 ms
    assert decide(mb, SCH, T0 + 19) is None
    now = T0 + 20                                # the timer fires
    d = decide(mb, SCH, now)
    assert seq == [T0 + 50, T0 + 30, T0 + 20]
    assert d is not None and d.model_id == "B"
    mb.close(now)
    assert next_deadline(mb, SCH, now) is None and decide(mb, SCH, T0 + 50) is None


def test_schedule_change_does_not_reroute_open_mailbox():
    mb = opened()
    other = parse_schedule({"id": "s2", "stages": [{"model": "X", "wait_ms": 5}],
                            "deadline_ms": 500})
    mb.add_score(score("B"), T0 + 1)
    assert mb.stages == (Stage("A", 20), Stage("B", 30), Stage("C", 40))
    d = decide(mb, other, T0 + 20)  # stages and deadline are the snapshot's
    assert d is not None and d.model_id == "B"
    assert mb.schedule_id == "s1"


def test_split_routes_at_open_time():
    sch = parse_schedule({
        "id": "split", "deadline_ms": 50,
        "split": {"field": "inputs.labels.user_id", "variants": [
            {"name": "old", "weight": 50, "stages": [{"model": "A", "wait_ms": 20}]},
            {"name": "new", "weight": 50, "stages": [{"model": "A2", "wait_ms": 20}]}]},
    })
    picked = set()
    for i in range(40):
        mb = Mailbox(f"r{i}")
        mb.attach_request(request(rid=f"r{i}", user=f"user-{i}"), sch)
        picked.add(mb.stages[0].model)
        assert mb.stages == sch.stages_for(request(user=f"user-{i}"))
    assert picked == {"A", "A2"}


def test_tombstone_counts_late_scores_and_expires():
    mb = opened()
    mb.add_score(score("A"), T0 + 2)
    assert decide(mb, SCH, T0 + 2) is not None
    mb.close(T0 + 2)
    assert is_late(mb) and not is_late(None) and not is_late(opened())
    assert mb.add_score(score("B"), T0 + 30) == LATE
    assert not mb.attach_request(request(), SCH)
    assert mb.late == 2 and mb.scores == {} and mb.request is None
    assert cleanup_at(mb, SCH) == T0 + 2 + TOMBSTONE_MS
    assert len(mb.to_bytes()) < 120


def test_state_round_trip_and_request_slimmed():
    mb = opened()
    mb.add_score(score("B"), T0 + 4)
    assert mb.request is not None and "inputs" not in mb.request
    assert "internal_state" not in mb.request
    back = Mailbox.from_bytes(mb.to_bytes())
    assert back == mb
    assert decide(back, SCH, T0 + 20) == decide(mb, SCH, T0 + 20)
    with pytest.raises(ValueError, match="state format"):
        import pickle

        Mailbox.from_bytes(pickle.dumps((99,)))


@pytest.mark.parametrize("setup, reason", [
    (lambda mb: mb.add_score(score("A"), T0 + 3), "preferred"),
    (lambda mb: mb.add_score(score("B"), T0 + 3), "fallback"),
    (lambda mb: None, "default"),
])
def test_build_result_encodes_as_result(setup, reason):
    sch = SCH
    mb = opened()
    setup(mb)
    d = decide(mb, sch, T0 + 55)
    assert d is not None and d.reason == reason
    res = build_result(mb, d, "s1", lambda: envelope("rendezvous", "0.1.0"))
    data = codec_for("Result").encode(res)
    back = codec_for("Result").decode(data)
    assert back == res
    assert res["request_id"] == "r1" and res["entity_key"] == "card-9"
    assert res["request_timestamp"] == T0 and res["waited_ms"] == 55
    assert res["schedule_id"] == "s1"
    hops = [h["component"] for h in res["provenance"]["hops"]]
    assert hops[:2] == ["client", "augment"] and hops[-1] == "rendezvous"
    if d.model_id:
        assert hops == ["client", "augment", f"model-{d.model_id}", "rendezvous"]
        assert res["model_version"] == f"{d.model_id}-1.0"
    assert res["provenance"]["tags"] == {"channel": "web"}
    assert res["provenance"]["trace"] == {"trace_id": "t" * 32, "parent_span_id": "p1"}


def test_build_result_none_and_default_envelope():
    mb = opened(NO_DEFAULT)
    d = decide(mb, NO_DEFAULT, T0 + 50)
    assert d is not None
    res = build_result(mb, d)
    assert res["outputs"] is None and res["reason"] == "none" and res["schedule_id"] == "s1"
    codec_for("Result").encode(res)
    with pytest.raises(ValueError, match="no request"):
        build_result(Mailbox("orphan"), d)
