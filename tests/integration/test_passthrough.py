"""The first job end to end on the real platform: N requests plus garbage in, N stamped
requests out, exactly the garbage in the dead-letter topic."""

from __future__ import annotations

from rdv.kafka_io import consume, create_topics, produce, unique_topic
from udfs.codec import codec_for, envelope

N = 500


def _request(i: int) -> dict:
    r = envelope("test-client", "0", tags={"channel": "web"})
    r.update(
        request_id=f"req-{i}",
        entity_key=f"card-{i % 37}",
        return_address="results",
        inputs={
            "numbers": {"amount": i * 1.5},
            "labels": {"country": "NL"},
            "refs": {"receipt": f"s3://bucket/{i}.png"},
        },
        internal_state={"card_velocity_kmh": float(i)} if i % 2 else None,
    )
    return r


def test_requests_are_stamped_and_garbage_goes_to_deadletter(run_job) -> None:
    codec = codec_for("Request")
    src, dst, dlq = unique_topic("pt-in"), unique_topic("pt-out"), unique_topic("pt-dlq")
    create_topics({src: 2, dst: 2, dlq: 1})
    run_job(
        "passthrough",
        "--source-topic",
        src,
        "--sink-topic",
        dst,
        "--deadletter-topic",
        dlq,
        "--group-id",
        f"g-{src}",
    )

    sent = [_request(i) for i in range(N)]
    good = codec.encode(sent[0])
    garbage: list[tuple[bytes | None, bytes | None]] = [
        (b"g1", b"\x00\x01\x02 not avro at all"),
        (b"g2", b""),
        (b"g3", None),  # a tombstone
        (b"g4", good[:-7]),  # truncated
        (b"g5", good + b"\x00\x00"),  # trailing bytes
        (b"g6", codec_for("Hop").encode({"component": "x", "version": "1", "timestamp": 1})),
        (b"g7", b'{"request_id": "json?"}'),
    ]
    records = [(r["entity_key"].encode(), codec.encode(r)) for r in sent]
    mixed = records[:100] + garbage + records[100:]
    produce(src, mixed)

    out = consume([dst], expect=N, timeout=90)
    dead = consume([dlq], expect=len(garbage), timeout=30)

    assert len(out) == N
    by_id = {r["request_id"]: r for r in sent}
    for m in out:
        got = codec.decode(m.value)
        assert isinstance(got, dict), got
        want = by_id.pop(got["request_id"])
        hops = got["provenance"]["hops"]
        assert [h["component"] for h in hops] == ["test-client", "passthrough"]
        assert hops[1]["timestamp"] >= hops[0]["timestamp"]
        assert m.key == want["entity_key"].encode()
        for field in (
            "message_id",
            "timestamp",
            "entity_key",
            "inputs",
            "internal_state",
            "return_address",
            "diagnostics",
        ):
            assert got[field] == want[field], field
        assert got["provenance"]["tags"] == {"channel": "web"}
    assert by_id == {}

    dl_codec = codec_for("DeadLetter")
    letters = [dl_codec.decode(m.value) for m in dead]
    assert len(letters) == len(garbage)
    assert all(isinstance(d, dict) for d in letters)
    assert sorted((d["key"], d["payload"]) for d in letters) == sorted(
        (k, v or b"") for k, v in garbage
    )
    for d in letters:
        assert d["component"] == "passthrough" and d["source_topic"] == src
        assert d["offset"] >= 0 and d["reason"]
    reasons = {d["key"]: d["reason"] for d in letters}
    assert reasons[b"g2"] == reasons[b"g3"] == "empty message"
    assert reasons[b"g5"].startswith("trailing bytes")


def test_stop_with_savepoint_and_resume_loses_and_repeats_nothing(platform) -> None:  # noqa: ANN001
    """The job's state (Kafka offsets under the source's stable uid) survives a
    stop-with-savepoint and a resubmission from it."""
    from rdv import jobctl

    codec = codec_for("Request")
    src, dst = unique_topic("sp-in"), unique_topic("sp-out")
    create_topics({src: 2, dst: 2})
    args = ["--source-topic", src, "--sink-topic", dst, "--group-id", f"g-{src}"]
    job = jobctl.submit("passthrough", args)
    first = [_request(i) for i in range(100)]
    produce(src, [(r["entity_key"].encode(), codec.encode(r)) for r in first])
    assert len(consume([dst], expect=100, timeout=60)) == 100

    path = jobctl.savepoint(job, stop=True)
    second = [_request(i) for i in range(100, 200)]  # arrive while the job is stopped
    produce(src, [(r["entity_key"].encode(), codec.encode(r)) for r in second])
    resumed = jobctl.submit("passthrough", args, savepoint=path)
    try:
        assert len(consume([dst], expect=200, timeout=60)) >= 200
        out = consume([dst], timeout=30, idle=3)  # all of it, duplicates included
        ids = [codec.decode(m.value)["request_id"] for m in out]  # type: ignore[index]
        assert sorted(ids) == sorted(r["request_id"] for r in first + second)
    finally:
        jobctl.cancel(resumed)
