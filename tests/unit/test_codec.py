"""Every message type round-trips; bad bytes decode to a typed error, never an exception."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from udfs.codec import (
    MESSAGE_TYPES,
    SCHEMA_DIR,
    Codec,
    DecodeError,
    SchemaError,
    add_hop,
    codec_for,
    dead_letter,
    envelope,
)

FEATURES = {"numbers": {"amount": 12.5}, "labels": {"mcc": "5411"}, "refs": {"img": "s3://b/k"}}


def sample(kind: str) -> dict:
    rec = envelope("test", "1", tags={"region": "eu"})
    rec["provenance"]["trace"] = {"trace_id": "t" * 32, "parent_span_id": None}
    rec["diagnostics"] = {
        "trace": True,
        "log_level": "debug",
        "fallback_schedule": None,
        "faults": [{"target": "fraud_gbm", "kind": "delay", "delay_ms": 80}],
    }
    body: dict = {
        "Request": dict(
            request_id="r1",
            entity_key="card-1",
            return_address="results",
            inputs=FEATURES,
            external_state={
                "source": "profiles",
                "as_of": 5,
                "numbers": {"avg": 1.0},
                "labels": {},
                "missing": ["segment"],
            },
            internal_state={"card_velocity_kmh": 912.0},
        ),
        "Score": dict(
            request_id="r1",
            entity_key="card-1",
            model_id="m",
            model_version="2",
            outputs=FEATURES,
            latency_us=120,
            request_timestamp=4,
            error=None,
        ),
        "Result": dict(
            request_id="r1",
            entity_key="card-1",
            model_id="m",
            model_version="2",
            outputs=FEATURES,
            reason="fallback",
            detail="fallback after 20 ms",
            schedule_id="demo",
            request_timestamp=4,
            waited_ms=20,
            scores_seen=2,
        ),
        "Control": dict(
            kind="transition",
            key="rendezvous",
            document=None,
            token={"job": "rendezvous", "epoch": 3, "new_owner": "b"},
        ),
        "Profile": dict(entity_key="card-1", numbers={"avg_amount": 40.0},
                        labels={"home_country": "NL"}),
        "Metric": dict(
            name="score",
            subject="m",
            window_start=0,
            window_end=10_000,
            tags={"channel": "web"},
            kind="tdigest",
            count=10,
            value=None,
            sketch=b"\x01\x02",
        ),
        "Span": dict(
            trace_id="t",
            span_id="s",
            parent_span_id=None,
            name="score",
            component="score:m",
            start_us=1,
            end_us=2,
            attributes={"k": "v"},
        ),
        "Alert": dict(
            subject="m",
            score=4.2,
            threshold=3.0,
            message="drift",
            signals=[{"name": "rate", "value": 1.0, "quantile": 0.999, "log_odds": 3.0}],
        ),
        "DeadLetter": dict(
            component="augment",
            source_topic="raw",
            partition=0,
            offset=7,
            reason="bad",
            key=b"k",
            payload=b"\xff",
        ),
    }[kind]
    rec.update(body)
    return rec


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_every_message_type_round_trips(kind: str) -> None:
    codec = codec_for(kind)
    rec = sample(kind)
    assert codec.decode(codec.encode(rec)) == rec


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_every_schema_file_carries_the_common_envelope(kind: str) -> None:
    fields = [f["name"] for f in json.loads((SCHEMA_DIR / f"{kind}.avsc").read_text())["fields"]]
    assert fields[:4] == ["timestamp", "message_id", "provenance", "diagnostics"]


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_corrupt_bytes_decode_to_a_typed_error(kind: str) -> None:
    codec = codec_for(kind)
    good = codec.encode(sample(kind))
    rng = random.Random(kind)
    bad_inputs = [
        b"",
        None,
        good[: len(good) // 2],
        good + b"\x00",
        b"\xff" * 40,
        bytes(rng.randrange(256) for _ in range(200)),
    ]
    for _ in range(300):  # random single-byte corruptions: never an exception
        b = bytearray(good)
        b[rng.randrange(len(b))] = rng.randrange(256)
        bad_inputs.append(bytes(b))
    errors = 0
    for data in bad_inputs:
        got = codec.decode(data)
        if isinstance(got, DecodeError):
            errors += 1
            assert got.reason and got.schema == codec.fullname
    assert errors >= 6  # at least the deliberately broken ones


def test_wrong_message_type_is_rejected() -> None:
    score = codec_for("Score").encode(sample("Score"))
    got = codec_for("Request").decode(score)
    assert isinstance(got, DecodeError)


def test_envelope_message_id_is_checked() -> None:
    rec = sample("Score")
    rec["message_id"] = "not-hex"
    got = codec_for("Score").decode(codec_for("Score").encode(rec))
    assert isinstance(got, DecodeError) and "message_id" in got.reason


def test_encoding_a_misshapen_record_is_a_schema_error() -> None:
    rec = sample("Score")
    del rec["model_id"]
    with pytest.raises(SchemaError, match="rdv.Score"):
        codec_for("Score").encode(rec)


def test_add_hop_and_dead_letter() -> None:
    rec = add_hop(sample("Request"), "augment", "0.1.0", at_ms=99)
    assert rec["provenance"]["hops"][-1] == {
        "component": "augment",
        "version": "0.1.0",
        "timestamp": 99,
    }
    dl = dead_letter("augment", "bad", b"\x00", source_topic="raw", partition=1, offset=2)
    assert codec_for("DeadLetter").decode(codec_for("DeadLetter").encode(dl)) == dl


def test_evolution_old_bytes_decode_with_the_history_schema(tmp_path: Path) -> None:
    """The documented rule: add a field with a default at the end; old bytes still decode."""
    d = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, d)
    (d / "history").mkdir(exist_ok=True)
    shutil.copy(d / "Score.avsc", d / "history" / "Score.v1.avsc")
    new = json.loads((d / "Score.avsc").read_text())
    new["fields"].append({"name": "calibrated", "type": "boolean", "default": False})
    (d / "Score.avsc").write_text(json.dumps(new))

    old_bytes = Codec("Score", SCHEMA_DIR).encode(sample("Score"))
    got = Codec("Score", d).decode(old_bytes)
    assert isinstance(got, dict) and got["calibrated"] is False
    assert got["model_id"] == "m"
