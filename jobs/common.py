"""Kafka I/O shared by every job.

Records cross the Java/Python boundary as raw bytes: the source hands Python a
``RAW_RECORD`` row (topic, partition, offset, timestamp, key, value) and the sink takes an
``OUT_RECORD`` row (topic, key, value). Decoding happens in Python, so bad bytes become
dead letters instead of job failures, and one sink serves every output topic (results go
to the return address each request names; dead letters to ``deadletter``).
The two (de)serialisers are ``deploy/java`` (io.rendezvous.flink.Raw*).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pyflink.common import Row, Types, WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from rdv.settings import Settings
from udfs.codec import codec_for, dead_letter

RAW_RECORD = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "key", "value"],
    [
        Types.STRING(),
        Types.INT(),
        Types.LONG(),
        Types.LONG(),
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
    ],
)
OUT_RECORD = Types.ROW_NAMED(
    ["topic", "key", "value"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)

VERSION = "0.1.0"


def out(topic: str, key: bytes | None, value: bytes) -> Row:
    return Row(topic, key, value)


def dead_letter_row(
    component: str, deadletter_topic: str, reason: str, topic: str, partition: int,
    offset: int, key: bytes | None, payload: bytes | None,
) -> Row:
    """An OUT_RECORD row carrying a DeadLetter for a record a job could not use: the
    reason, the original bytes and key, and where the record was read from."""
    dl = dead_letter(component, reason, payload or b"", key=key, source_topic=topic,
                     partition=partition, offset=offset, version=VERSION)
    return Row(deadletter_topic, key, codec_for("DeadLetter").encode(dl))


@dataclass(frozen=True)
class KafkaConfig:
    """Where a job reads and writes; every field can come from ``RDV_*`` env or ``--flag``."""

    bootstrap: str = field(default_factory=lambda: Settings.from_env().kafka_bootstrap)
    group_id: str = ""
    deadletter_topic: str = "deadletter"
    start_from: str = "committed"  # committed | earliest | latest
    parallelism: int = 1

    def __post_init__(self) -> None:
        if self.start_from not in ("committed", "earliest", "latest"):
            raise ValueError(
                f"start_from must be one of committed, earliest, latest; got {self.start_from!r}"
            )
        if self.parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {self.parallelism}")


def config_from_args(cls: type, argv: Sequence[str] | None, prog: str) -> Any:
    """Build a (frozen dataclass) job config from env ``RDV_<FIELD>`` then ``--field``."""
    parser = argparse.ArgumentParser(prog=prog)
    for f in fields(cls):
        default = os.environ.get("RDV_" + f.name.upper())
        kind = (
            f.type
            if isinstance(f.type, type)
            else {"int": int, "float": float}.get(str(f.type), str)
        )
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=default,
            help=f"(env RDV_{f.name.upper()})",
        )
    ns = parser.parse_args(argv)
    kwargs = {}
    for f in fields(cls):
        v = getattr(ns, f.name)
        if isinstance(v, str) and str(f.type) in ("int", "bool"):  # defaults from env
            try:
                v = int(v) if str(f.type) == "int" else _flag(v)
            except (ValueError, argparse.ArgumentTypeError) as e:
                parser.error(f"RDV_{f.name.upper()}: {e}")
        if v is not None:
            kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        parser.error(str(e))


def _flag(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def kafka_source(
    topics: Sequence[str], kafka: KafkaConfig, *, group_id: str | None = None
) -> KafkaSource:
    jvm = get_gateway().jvm
    starts = {
        "earliest": KafkaOffsetsInitializer.earliest(),
        "latest": KafkaOffsetsInitializer.latest(),
        # first start of a group: read from the beginning so nothing is missed (built in
        # Java: PyFlink's helper expects the shaded SQL connector jar)
        "committed": KafkaOffsetsInitializer(
            jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer.committedOffsets(
                jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
            )
        ),
    }
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(kafka.bootstrap)
        .set_topics(*topics)
        .set_group_id(group_id or kafka.group_id or "rdv-" + "-".join(topics))
        .set_starting_offsets(starts[kafka.start_from])
        .set_property("partition.discovery.interval.ms", "10000")
        .set_property("client.id.prefix", group_id or kafka.group_id or "rdv")
    )
    builder._j_builder.setDeserializer(jvm.io.rendezvous.flink.RawRecordDeserializer())
    return builder.build()


def read(
    env: StreamExecutionEnvironment,
    topics: Sequence[str],
    kafka: KafkaConfig,
    *,
    uid: str,
    group_id: str | None = None,
) -> DataStream:
    """A RAW_RECORD stream from Kafka topics, with a stable uid (offsets live in state)."""
    return (
        env.from_source(
            kafka_source(topics, kafka, group_id=group_id),
            WatermarkStrategy.no_watermarks(),
            f"kafka: {','.join(topics)}",
            type_info=RAW_RECORD,
        )
        .uid(uid)
        .name(f"kafka: {','.join(topics)}")
    )


def kafka_sink(kafka: KafkaConfig) -> KafkaSink:
    """A sink of OUT_RECORD rows; at-least-once (a replay after failure may duplicate, which
    the rendezvous' tombstones absorb; exactly-once would hold results until a checkpoint)."""
    jvm = get_gateway().jvm
    builder = KafkaSink.builder()
    # set on the Java builder directly: PyFlink's setter introspects fields that only its
    # own serialisers have
    builder._j_builder.setRecordSerializer(jvm.io.rendezvous.flink.RawRecordSerializer())
    return (
        builder.set_bootstrap_servers(kafka.bootstrap)
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .set_property("linger.ms", "0")
        .set_property("acks", "1")
        .set_property("max.block.ms", "10000")
        .build()
    )


def write(stream: DataStream, kafka: KafkaConfig, *, uid: str) -> None:
    stream.sink_to(kafka_sink(kafka)).uid(uid).name("kafka sink")


class Counts:
    """Per-operator event counts, as Flink counters ``<group>.<name>``, updated in batches.

    Counting is a Python int add; the deltas go to the Flink counters (a call into the JVM
    each) at most every ``flush_ms`` — a per-event ``Counter.inc`` cost ~4% of a
    TaskManager's Python time at 200 req/s. Python *gauges* are not used at all: the
    metrics thread calls them outside the task thread, and in thread mode that crashed a
    TaskManager (SIGSEGV in ``take_gil``) when a job was cancelled.
    """

    def __init__(self, runtime_context: Any, group: str, names: Sequence[str],
                 flush_ms: int = 200) -> None:
        self.values: dict[str, int] = dict.fromkeys(names, 0)
        self._pending: dict[str, int] = dict.fromkeys(names, 0)
        self._flush_ns = flush_ms * 1_000_000
        self._last = time.monotonic_ns()
        mg = runtime_context.get_metrics_group().add_group(group)
        self._counters = {n: mg.counter(n) for n in names}

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n
        self._pending[name] += n
        if time.monotonic_ns() - self._last >= self._flush_ns:
            self.flush()

    @property
    def pending(self) -> bool:
        return any(self._pending.values())

    def flush(self) -> None:
        for name, n in self._pending.items():
            if n:
                self._counters[name].inc(n)
                self._pending[name] = 0
        self._last = time.monotonic_ns()
