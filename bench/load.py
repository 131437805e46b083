"""Open-loop load generator for the rendezvous benchmarks (confluent-kafka).

Open loop: request *i* is due at ``start + offsets[i]`` (constant or Poisson arrivals)
whether or not earlier requests were answered, and its latency is measured from that
*intended* send time, not from when the generator got round to sending it. A stall
anywhere (the generator, the broker, the system) is therefore charged to every request it
delays: no coordinated omission. Many requests are in flight at once; answers are
correlated by request id on a return-address topic by a consumer thread, and latencies go
into an HdrHistogram.

The pure parts (arrival schedule, the open-loop send loop with an injectable clock, the
latency accounting) are tested without Kafka in ``tests/unit/test_bench.py``.

Sending costs little Python per request: each request is Avro-encoded before the clock
starts, without its leading envelope ``timestamp`` (the first field of every message, an
Avro long); at send time the current wall-clock ms is prepended as a zig-zag varint.

    .venv/bin/python -m bench.load --rates 1000,5000,10000 --seconds 3   # generator ceiling
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from udfs.codec import DecodeError, codec_for

NS_PER_MS = 1_000_000
#: HdrHistogram range: 1 µs .. 1 h, 3 significant digits (≤ 0.1% error)
HIST_MAX_US = 3_600_000_000
ARRIVALS = ("constant", "poisson")


# --------------------------------------------------------------------------- schedule


def arrival_offsets_ns(
    rate: float, seconds: float, arrivals: str = "constant", seed: int = 0
) -> np.ndarray:
    """Intended send times (ns after the start) of ``round(rate * seconds)`` requests.

    ``constant``: exactly ``1/rate`` apart. ``poisson``: exponential gaps with mean
    ``1/rate`` (reproducible by ``seed``); the first request is due at 0.
    """
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be positive, got {rate}, {seconds}")
    n = max(1, round(rate * seconds))
    if arrivals == "constant":
        return np.round(np.arange(n, dtype=np.float64) * (1e9 / rate)).astype(np.int64)
    if arrivals == "poisson":
        gaps = np.random.default_rng(seed).exponential(1e9 / rate, n)
        gaps[0] = 0.0
        return np.round(np.cumsum(gaps)).astype(np.int64)
    raise ValueError(f"arrivals must be one of {ARRIVALS}, got {arrivals!r}")


def open_loop(
    offsets_ns: np.ndarray,
    send: Callable[[int], None],
    *,
    clock: Callable[[], int] = time.monotonic_ns,
    sleep: Callable[[float], None] = time.sleep,
    start_ns: int | None = None,
    early_ns: int = 50_000,
) -> tuple[int, np.ndarray]:
    """Call ``send(i)`` at ``start + offsets_ns[i]`` for every i, never waiting for answers.

    When the loop is behind (a slow ``send``, a descheduled process) it sends what is due
    at once and does not shift the schedule: the intended times stay where they were, so
    the delay shows up in every affected request's latency. A request may go out up to
    ``early_ns`` early (sleeping less than that costs more than it is worth).
    Returns ``(start_ns, sent_ns)``, ``sent_ns[i]`` being when request i was handed over.
    """
    n = len(offsets_ns)
    start = clock() + 2 * NS_PER_MS if start_ns is None else start_ns
    sent = np.empty(n, dtype=np.int64)
    for i, due in enumerate((offsets_ns + start).tolist()):
        now = clock()
        wait = due - now
        if wait > early_ns:
            sleep(wait / 1e9)
            now = clock()
        send(i)
        sent[i] = now
    return start, sent


# --------------------------------------------------------------------------- accounting


@dataclass
class Tally:
    """Per request: when its first answer arrived (ns, -1: not yet) and how many did."""

    n: int
    recv_ns: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    received: int = 0

    def __post_init__(self) -> None:
        self.recv_ns = np.full(self.n, -1, dtype=np.int64)
        self.count = np.zeros(self.n, dtype=np.int32)

    def mark(self, i: int, t_ns: int) -> bool:
        """Record an answer for request i; True when it is the first one."""
        self.count[i] += 1
        if self.count[i] == 1:
            self.recv_ns[i] = t_ns
            self.received += 1
            return True
        return False

    @property
    def lost(self) -> int:
        return int(np.count_nonzero(self.count == 0))

    @property
    def duplicated(self) -> int:
        return int(np.maximum(self.count - 1, 0).sum())


def histogram_ms(values_ms: Iterable[float]) -> HdrHistogram:
    """An HdrHistogram (µs resolution, ≥ 1 µs) of values in ms."""
    h = HdrHistogram(1, HIST_MAX_US, 3)
    for v in values_ms:
        h.record_value(min(max(round(v * 1000), 1), HIST_MAX_US))
    return h


def percentiles_ms(h: HdrHistogram) -> dict[str, float]:
    if h.get_total_count() == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan"),
                "max_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "p50_ms": h.get_value_at_percentile(50.0) / 1000,
        "p99_ms": h.get_value_at_percentile(99.0) / 1000,
        "p999_ms": h.get_value_at_percentile(99.9) / 1000,
        "max_ms": h.get_max_value() / 1000,
        "mean_ms": round(h.get_mean_value() / 1000, 3),
    }


def latencies_ms(intended_ns: np.ndarray, recv_ns: np.ndarray) -> np.ndarray:
    """Latency of every answered request, from its *intended* send time (ms)."""
    ok = recv_ns >= 0
    return (recv_ns[ok] - intended_ns[ok]) / NS_PER_MS


def summarize(
    *,
    offered_rps: float,
    start_ns: int,
    offsets_ns: np.ndarray,
    sent_ns: np.ndarray,
    tally: Tally,
    deadline_ms: float,
) -> dict[str, Any]:
    """Throughput, latency percentiles (from intended send times), losses, duplicates,
    lateness (answered after the deadline, or never) and how late the generator sent."""
    intended = offsets_ns + start_ns
    lat = latencies_ms(intended, tally.recv_ns)
    h = histogram_ms(lat.tolist())
    n = tally.n
    last = int(tally.recv_ns.max()) if tally.received else start_ns
    span_s = max((last - start_ns) / 1e9, 1e-9)
    lag = histogram_ms(((sent_ns - intended) / NS_PER_MS).tolist())
    late = int(np.count_nonzero(lat > deadline_ms)) + tally.lost
    return {
        "offered_rps": offered_rps,
        "achieved_rps": round(tally.received / span_s, 1) if tally.received else 0.0,
        **percentiles_ms(h),
        "sent": n,
        "received": tally.received,
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "late_fraction": round(late / n, 5),
        "send_lag_p99_ms": lag.get_value_at_percentile(99.0) / 1000,
        "send_lag_max_ms": lag.get_max_value() / 1000,
        "send_span_s": round((int(sent_ns[-1]) - start_ns) / 1e9, 3),
    }


# --------------------------------------------------------------------------- Avro framing


def avro_long(n: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then a little-endian base-128 varint.

    >>> avro_long(0), avro_long(-1), avro_long(1), avro_long(64)
    (b'\\x00', b'\\x01', b'\\x02', b'\\x80\\x01')
    """
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def strip_leading_long(data: bytes) -> bytes:
    """The bytes after the Avro long that starts ``data`` (a message's ``timestamp``)."""
    for i, b in enumerate(data[:10]):
        if not b & 0x80:
            return data[i + 1:]
    raise ValueError("data does not start with an Avro long")


# --------------------------------------------------------------------------- Kafka


def high_watermarks(consumer: Consumer, topic: str, timeout: float = 10) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ValueError(f"topic {topic!r} does not exist")
    out = []
    for p in sorted(meta.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        out.append(TopicPartition(topic, p, high))
    return out


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30) -> None:
    from confluent_kafka.admin import AdminClient

    names = list(names)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the futures
    futures = admin.delete_topics(names, operation_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as e:
            print(f"  could not delete topic {name}: {e}")


def topic_end(bootstrap: str, topic: str) -> int:
    """Sum of a topic's end offsets (how many records it ever got)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        return sum(tp.offset for tp in high_watermarks(c, topic))
    finally:
        c.close()


@dataclass
class Answer:
    """What the receiver keeps of an R result (for B0/B1 answers: nothing)."""

    model_id: str | None
    reason: str
    decided_ms: int  # result timestamp - request timestamp (when the rendezvous answered)


class Receiver(threading.Thread):
    """Reads the return-address topic from its current end; counts every answer whose
    request id is ``<tag>-<index>`` (first arrival time and the number of copies)."""

    def __init__(self, bootstrap: str, topic: str, codec_name: str, tag: str, n: int,
                 keep_answers: bool = False) -> None:
        super().__init__(name=f"bench-recv-{tag}", daemon=True)
        self.codec = codec_for(codec_name)
        self.prefix = tag + "-"
        self.tally = Tally(n)
        self.answers: list[Answer | None] = [None] * n if keep_answers else []
        self.keep_answers = keep_answers
        self.foreign = 0  # answers of other runs (earlier warm-ups, probes)
        self.undecodable = 0
        self._stop_at: list[TopicPartition] | None = None
        self._stopping = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 100,
            "fetch.error.backoff.ms": 10,
        })
        # start at the current end: every answer to this run is sent after this point
        self._start_at = {tp.partition: tp.offset for tp in high_watermarks(self.consumer, topic)}
        self.consumer.assign([TopicPartition(topic, p, o) for p, o in self._start_at.items()])
        self.topic = topic
        self.bootstrap = bootstrap

    def run(self) -> None:
        c = self.consumer
        while True:
            # block for the first message only (consume() would wait for a full batch or
            # its whole timeout), then take what is already there
            first = c.poll(0.05)
            msgs = [first, *c.consume(num_messages=1000, timeout=0)] if first else []
            now = time.monotonic_ns()
            for m in msgs:
                if m.error() is not None:
                    continue
                self._one(m.value(), now)
            if self._stopping.is_set() and not msgs and self._caught_up():
                return

    def _one(self, value: bytes | None, now: int) -> None:
        rec = self.codec.decode(value)
        if isinstance(rec, DecodeError):
            self.undecodable += 1
            return
        rid: str = rec["request_id"]
        if not rid.startswith(self.prefix):
            self.foreign += 1
            return
        i = int(rid[len(self.prefix):])
        if self.tally.mark(i, now) and self.keep_answers:
            self.answers[i] = Answer(rec.get("model_id"), rec.get("reason", ""),
                                     int(rec["timestamp"]) - int(rec["request_timestamp"]))

    def _caught_up(self) -> bool:
        assert self._stop_at is not None
        pos = {tp.partition: tp.offset for tp in self.consumer.position(self._stop_at)}
        # a partition nothing was read from has no position yet (negative)
        return all(max(pos.get(tp.partition, -1), self._start_at.get(tp.partition, 0))
                   >= tp.offset for tp in self._stop_at)

    def finish(self, timeout: float, grace: float = 1.0) -> None:
        """Wait until every request is answered (or ``timeout``), then ``grace`` seconds
        more for duplicates, then read up to the topic's end and stop."""
        deadline = time.monotonic() + timeout
        while self.tally.received < self.tally.n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(grace)
        # a second client: the consumer is busy in the thread (its calls would block)
        meta = Consumer({"bootstrap.servers": self.bootstrap,
                         "group.id": f"bench-{uuid.uuid4().hex}"})
        try:
            self._stop_at = high_watermarks(meta, self.topic)
        finally:
            meta.close()
        self._stopping.set()
        self.join(timeout=30)
        self.consumer.close()


def kafka_producer(bootstrap: str) -> Producer:
    # the same settings as the system's client (rdv.client): no lingering, leader ack
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1,
                     "queue.buffering.max.messages": 1_000_000})


@dataclass
class Prepared:
    """Requests encoded ahead of time (without their leading timestamp)."""

    tag: str
    keys: list[bytes]
    rests: list[bytes]


def prepare(records: Sequence[Mapping[str, Any]], tag: str, return_address: str,
            diagnostics: Mapping[str, Any] | None = None) -> Prepared:
    """Encode Request records as ``<tag>-<index>`` addressed to ``return_address``."""
    codec = codec_for("Request")
    keys, rests = [], []
    for i, r in enumerate(records):
        rec = dict(r)
        rec["request_id"] = f"{tag}-{i:08d}"
        rec["return_address"] = return_address
        if diagnostics is not None:
            rec["diagnostics"] = {"trace": False, "log_level": None, "fallback_schedule": None,
                                  "faults": [], **diagnostics}
        keys.append(str(rec["entity_key"]).encode())
        rests.append(strip_leading_long(codec.encode(rec)))
    return Prepared(tag, keys, rests)


def send_all(producer: Producer, topic: str, prep: Prepared, offsets_ns: np.ndarray,
             ) -> tuple[int, np.ndarray]:
    """Send prepared requests open loop; each gets the wall-clock ms of its real send."""
    keys, rests = prep.keys, prep.rests
    produce, poll = producer.produce, producer.poll

    def send(i: int) -> None:
        value = avro_long(time.time_ns() // NS_PER_MS) + rests[i]
        while True:
            try:
                produce(topic, value=value, key=keys[i])
                break
            except BufferError:  # local queue full: a generator stall, charged to latency
                poll(0.005)
        if i & 31 == 0:
            poll(0)

    start, sent = open_loop(offsets_ns, send)
    producer.flush(30)
    return start, sent


def run_load(
    *,
    bootstrap: str,
    send_topic: str,
    reply_topic: str,
    reply_codec: str,
    records: Sequence[Mapping[str, Any]],
    rate: float,
    seconds: float,
    deadline_ms: float = 50.0,
    arrivals: str = "constant",
    seed: int = 0,
    diagnostics: Mapping[str, Any] | None = None,
    keep_answers: bool = False,
    drain_timeout: float = 60.0,
    grace: float = 1.0,
    producer: Producer | None = None,
) -> tuple[dict[str, Any], list[Answer | None]]:
    """One open-loop run: ``round(rate*seconds)`` requests (cycling through ``records``)
    to ``send_topic``, answers awaited on ``reply_topic``; returns (stats, answers)."""
    offsets = arrival_offsets_ns(rate, seconds, arrivals, seed)
    n = len(offsets)
    tag = f"b{uuid.uuid4().hex[:10]}"
    prep = prepare([records[i % len(records)] for i in range(n)], tag, reply_topic,
                   diagnostics)
    recv = Receiver(bootstrap, reply_topic, reply_codec, tag, n, keep_answers=keep_answers)
    recv.start()
    time.sleep(0.3)  # let the consumer connect and fetch before the clock starts
    own = producer is None
    prod = producer or kafka_producer(bootstrap)
    cpu0 = time.process_time()
    try:
        start, sent = send_all(prod, send_topic, prep, offsets)
    finally:
        recv.finish(timeout=drain_timeout, grace=grace)
        if own:
            prod.flush(10)
    stats = summarize(offered_rps=rate, start_ns=start, offsets_ns=offsets, sent_ns=sent,
                      tally=recv.tally, deadline_ms=deadline_ms)
    stats["generator_cpu_s"] = round(time.process_time() - cpu0, 3)
    stats["foreign_answers"] = recv.foreign
    stats["undecodable_answers"] = recv.undecodable
    return stats, recv.answers


# --------------------------------------------------------------------------- ceiling


def ceiling(runs: Sequence[Mapping[str, Any]]) -> float:
    """The highest offered rate the generator kept up with against a bare topic (B0):
    it sent on schedule (p99 send lag < 5 ms), got everything back, at ≥ 97% of the rate."""
    ok = [r["offered_rps"] for r in runs
          if r["send_lag_p99_ms"] < 5 and r["lost"] == 0
          and r["achieved_rps"] >= 0.97 * r["offered_rps"]]
    return float(max(ok)) if ok else 0.0


def measure_ceiling(bootstrap: str, topic: str, records: Sequence[Mapping[str, Any]],
                    rates: Sequence[float], seconds: float) -> dict[str, Any]:
    runs = []
    producer = kafka_producer(bootstrap)
    for rate in rates:
        stats, _ = run_load(bootstrap=bootstrap, send_topic=topic, reply_topic=topic,
                            reply_codec="Request", records=records, rate=rate,
                            seconds=seconds, drain_timeout=20, grace=0.2, producer=producer)
        runs.append(stats)
        print(f"  generator @ {rate:>7.0f}/s: achieved {stats['achieved_rps']:>8.0f}/s "
              f"send lag p99 {stats['send_lag_p99_ms']:.1f} ms, "
              f"round trip p50/p99 {stats['p50_ms']:.1f}/{stats['p99_ms']:.1f} ms, "
              f"cpu {stats['generator_cpu_s']:.2f} s", flush=True)
        if stats["achieved_rps"] < 0.8 * rate:
            break  # far past the ceiling
    return {"ceiling_rps": ceiling(runs), "seconds": seconds, "runs": runs}


def main(argv: Sequence[str] | None = None) -> None:
    from kafka.errors import KafkaError

    from rdv.kafka_io import create_topics
    from rdv.settings import Settings
    from udfs.demo import generator

    ap = argparse.ArgumentParser(prog="python -m bench.load",
                                 description="measure the load generator's own ceiling (B0)")
    ap.add_argument("--rates", default="1000,2000,5000,10000,20000")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    s = Settings.from_env()
    topic = f"bench-{uuid.uuid4().hex[:6]}-ceiling"
    try:
        create_topics({topic: 2}, s)
    except (KafkaError, KafkaException) as e:
        raise SystemExit(f"cannot create {topic}: {e}") from e
    recs = [r for r, _ in generator.transactions(2000, seed=5)]
    try:
        out = measure_ceiling(s.kafka_bootstrap, topic, recs,
                              [float(r) for r in args.rates.split(",")], args.seconds)
    finally:
        delete_topics(s.kafka_bootstrap, [topic])
    print(json.dumps({"ceiling_rps": out["ceiling_rps"]}))


if __name__ == "__main__":
    main()
