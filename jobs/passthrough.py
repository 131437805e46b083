"""passthrough: the smallest real job — Avro requests in, the same requests out with one
more provenance hop, undecodable records to the dead-letter topic.

It is the first job end to end on the platform and the bare-hop baseline (B1) of the
benchmarks: Kafka → decode → stamp → encode → Kafka, with the same configuration as every
job of the system.

State: none besides the Kafka source's offsets (uid ``passthrough-source``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pyflink.common import Row
from pyflink.datastream import DataStream, FlatMapFunction, StreamExecutionEnvironment

from jobs.common import (
    OUT_RECORD,
    VERSION,
    KafkaConfig,
    config_from_args,
    dead_letter_row,
    read,
    write,
)
from udfs.codec import DecodeError, add_hop, codec_for


@dataclass(frozen=True)
class PassthroughConfig(KafkaConfig):
    source_topic: str = "raw"
    sink_topic: str = "passthrough"
    component: str = "passthrough"


class Stamp(FlatMapFunction):
    """Decode a request, add a provenance hop, re-encode; or emit a dead letter."""

    def __init__(self, config: PassthroughConfig) -> None:
        self.config = config

    def open(self, runtime_context: object) -> None:
        self.codec = codec_for("Request")

    def flat_map(self, value: Row) -> Iterator[Row]:
        yield self.stamp(value[0], value[1], value[2], value[4], value[5])

    def stamp(
        self, topic: str, partition: int, offset: int, key: bytes | None, payload: bytes | None
    ) -> Row:
        cfg = self.config
        rec = self.codec.decode(payload)
        if isinstance(rec, DecodeError):
            return dead_letter_row(cfg.component, cfg.deadletter_topic, rec.reason, topic,
                                   partition, offset, key, payload)
        add_hop(rec, cfg.component, VERSION)
        return Row(cfg.sink_topic, key, self.codec.encode(rec))


def build_passthrough(source: DataStream, config: PassthroughConfig) -> DataStream:
    """Wire the job: RAW_RECORD stream in, OUT_RECORD stream (oks and dead letters) out."""
    return (
        source.flat_map(Stamp(config), output_type=OUT_RECORD)
        .uid("passthrough-stamp")
        .name("stamp")
    )


def main(argv: Sequence[str] | None = None) -> None:
    config: PassthroughConfig = config_from_args(PassthroughConfig, argv, "passthrough")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    source = read(
        env,
        [config.source_topic],
        config,
        uid="passthrough-source",
        group_id=config.group_id or f"passthrough-{config.sink_topic}",
    )
    write(build_passthrough(source, config), config, uid="passthrough-sink")
    env.execute(f"passthrough {config.source_topic}->{config.sink_topic}")


if __name__ == "__main__":
    main()
