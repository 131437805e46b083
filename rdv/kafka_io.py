"""Small Kafka helpers for the CLI, the client, the demo and the tests (kafka-python)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from rdv.settings import Settings


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def producer(settings: Settings | None = None, **kw: object) -> KafkaProducer:
    s = settings or Settings.from_env()
    opts: dict[str, object] = dict(bootstrap_servers=s.kafka_bootstrap, linger_ms=0, acks=1)
    opts.update(kw)
    return KafkaProducer(**opts)


def produce(
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    settings: Settings | None = None,
) -> int:
    p = producer(settings, linger_ms=5, batch_size=256 * 1024)
    n = 0
    for key, value in records:
        p.send(topic, key=key, value=value)
        n += 1
    p.flush()
    p.close()
    return n


def create_topics(
    names: dict[str, int],
    settings: Settings | None = None,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    s = settings or Settings.from_env()
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, client_id="rdv-admin")
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(n, p, 1, topic_configs=(configs or {}).get(n, {}))
            for n, p in names.items()
            if n not in existing
        ]
        if new:
            admin.create_topics(new, timeout_ms=30_000)
    finally:
        admin.close()
    _wait_metadata(list(names), s)


def _wait_metadata(topics: list[str], s: Settings, timeout: float = 30) -> None:
    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.partitions_for_topic(t) for t in topics):
                return
            time.sleep(0.1)
        raise TimeoutError(f"topics {topics} have no metadata after {timeout} s")
    finally:
        c.close()


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def consume(
    topics: list[str],
    *,
    expect: int | None = None,
    timeout: float = 60.0,
    idle: float | None = None,
    settings: Settings | None = None,
) -> list[Message]:
    """Read topics from the beginning until ``expect`` messages arrived, or until nothing
    new arrived for ``idle`` seconds, or ``timeout``; returns what was read."""
    s = settings or Settings.from_env()
    c = KafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (c.partitions_for_topic(t) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = c.poll(timeout_ms=100)
            for recs in batch.values():
                for r in recs:
                    got.append(Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
                last = time.monotonic()
            if expect is not None and len(got) >= expect:
                break
            if idle is not None and time.monotonic() - last > idle:
                break
        return got
    finally:
        c.close()
