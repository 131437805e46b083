"""decoy: input → archive. Looks like a model, emits no score, and archives every input
exactly as the models saw it (external and internal state included) in self-describing
Avro container files, partitioned by the request's hour:

    <archive_dir>/dt=YYYY-MM-DD/hour=HH/part-<topic>-<partition>.avro

Each file holds ``Request`` records (schema embedded in the file header), so an archive
can be read with any Avro tool and replayed to a topic (``rdv replay``) byte for byte:
re-encoding a record with the same schema gives exactly the bytes that were on ``input``.

DISCUSSION — state and durability. Records are buffered per Kafka partition (the key)
and appended to the partition's file on a processing-time timer ``flush_ms`` after the
first buffered record, so an idle stream never leaves records unwritten. The buffer is
in Python memory, not Flink state: after a failure the job resumes from the last
checkpointed Kafka offsets and re-appends what was in flight, so the archive is
at-least-once; replay de-duplicates by ``message_id``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedProcessFunction, StreamExecutionEnvironment

from jobs.common import (
    OUT_RECORD,
    Counts,
    KafkaConfig,
    config_from_args,
    dead_letter_row,
    read,
    write,
)
from rdv.settings import Settings
from udfs.codec import DecodeError, codec_for


@dataclass(frozen=True)
class DecoyConfig(KafkaConfig):
    input_topic: str = "input"
    archive_dir: str = field(default_factory=lambda: str(Settings.from_env().home / "archive"))
    flush_ms: int = 500


def archive_path(root: Path, timestamp_ms: int, topic: str, partition: int) -> Path:
    """Where a request of this time and log position is archived (hour partitions, UTC).

    >>> archive_path(Path("/a"), 0, "input", 3).as_posix()
    '/a/dt=1970-01-01/hour=00/part-input-3.avro'
    """
    t = time.gmtime(timestamp_ms / 1000)
    return root / time.strftime("dt=%Y-%m-%d/hour=%H", t) / f"part-{topic}-{partition}.avro"


def read_archive(root: Path | str) -> Iterator[dict]:
    """Every archived request, file by file (oldest hour first). A file being appended to
    may end in a partial block: what precedes it is read, the partial block is skipped."""
    for f in sorted(Path(root).glob("dt=*/hour=*/*.avro")):
        with open(f, "rb") as fo:
            try:
                yield from fastavro.reader(fo)  # type: ignore[misc]
            except (EOFError, ValueError, OSError):
                continue


class Archive(KeyedProcessFunction):
    def __init__(self, config: DecoyConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.codec = codec_for("Request")
        self.root = Path(self.config.archive_dir)
        self.buffers: dict[tuple[str, int], list[tuple[int, dict]]] = {}
        self.counts = Counts(runtime_context, "decoy", ("archived",))

    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        topic, partition, offset, _, key, payload = value
        req = self.codec.decode(payload)
        if isinstance(req, DecodeError):
            yield dead_letter_row("decoy", self.config.deadletter_topic, req.reason, topic,
                                  partition, offset, key, payload)
            return
        buf = self.buffers.setdefault((topic, partition), [])
        if not buf:
            t = ctx.timer_service().current_processing_time() + self.config.flush_ms
            ctx.timer_service().register_processing_time_timer(t)
        buf.append((req["timestamp"], req))

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        topic, partition = ctx.get_current_key().rsplit(":", 1)
        self.flush(topic, int(partition))
        return iter(())

    def flush(self, topic: str, partition: int) -> None:
        buf = self.buffers.pop((topic, partition), [])
        by_file: dict[Path, list[dict]] = {}
        for ts, rec in buf:
            by_file.setdefault(archive_path(self.root, ts, topic, partition), []).append(rec)
        for path, recs in by_file.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            # a+b: fastavro reads the existing header and appends blocks with its sync marker
            with open(path, "a+b") as fo:
                fastavro.writer(fo, self.codec.schema, recs, codec="null")
            self.counts.inc("archived", len(recs))

    def close(self) -> None:
        for topic, partition in list(self.buffers):
            self.flush(topic, partition)


def build_decoy(source: DataStream, config: DecoyConfig) -> DataStream:
    """RAW_RECORD requests in; only dead letters out (the archive is written by the job)."""
    return (
        source.key_by(lambda r: f"{r[0]}:{r[1]}", key_type=Types.STRING())
        .process(Archive(config), output_type=OUT_RECORD)
        .uid("decoy-archive")
        .name("archive")
    )


def main(argv: Sequence[str] | None = None) -> None:
    config: DecoyConfig = config_from_args(DecoyConfig, argv, "decoy")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    group = config.group_id or f"decoy-{config.input_topic}"
    source = read(env, [config.input_topic], config, uid="decoy-source", group_id=group)
    write(build_decoy(source, config), config, uid="decoy-sink")
    env.execute(f"decoy {config.input_topic}")


if __name__ == "__main__":
    main()
