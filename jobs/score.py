"""score: the generic model scaffold (the "pre-lined container"), input → scores.

Runs any model package (udfs/model_package.py: a directory with manifest.yaml, the
``predict`` entry point, artifacts and pinned requirements). The scaffold owns Kafka I/O,
provenance, timing, errors and metrics; a failing prediction becomes a score with
``error`` set, never a crash. Each model runs as its own Flink job so that it can be
deployed, stopped and upgraded alone (``rdv model deploy PATH``).

Fault injection (``diagnostics.faults`` naming this model: delay or fail) is honoured only
when the deployment enables it (``--allow-faults true``; never in production).

DISCUSSION — state. A stateless model has no state besides the source offsets. A stateful
model (``stateful: true`` in its manifest) gets its per-entity state in Flink keyed state
(keyed by the Kafka key = entity key), so it is snapshotted in savepoints and restored with
the job; it lives as long as the entity, and a model that wants expiry says so in the
state it returns (``None`` clears it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    FlatMapFunction,
    KeyedProcessFunction,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import ValueStateDescriptor

from jobs.common import (
    OUT_RECORD,
    Counts,
    KafkaConfig,
    config_from_args,
    dead_letter_row,
    read,
    write,
)
from udfs.codec import DecodeError, codec_for
from udfs.model_package import load_manifest, load_model, score_request


@dataclass(frozen=True)
class ScoreConfig(KafkaConfig):
    model_dir: str = ""
    input_topic: str = "input"
    scores_topic: str = "scores"
    allow_faults: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model_dir:
            raise ValueError("--model-dir is required: the path of a model package directory")
        if not (Path(self.model_dir) / "manifest.yaml").exists():
            raise ValueError(f"--model-dir {self.model_dir}: no manifest.yaml there")


class Scorer:
    """Decode, predict (with the scaffold's timing, errors, faults), encode."""

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config

    def setup(self, runtime_context: Any = None) -> None:
        self.model = load_model(self.config.model_dir)
        self.requests = codec_for("Request")
        self.scores = codec_for("Score")
        self.component = f"score:{self.model.name}"
        self.counts = (
            Counts(runtime_context, "model", ("scored", "errors"))
            if runtime_context is not None else None
        )

    def score(self, value: Row, state: dict | None = None) -> tuple[Row, dict | None]:
        topic, partition, offset, _, key, payload = value
        req = self.requests.decode(payload)
        if isinstance(req, DecodeError):
            return dead_letter_row(self.component, self.config.deadletter_topic, req.reason,
                                   topic, partition, offset, key, payload), state
        fault = self._fault(req)
        if fault is not None and fault["kind"] == "delay":
            time.sleep(fault["delay_ms"] / 1000)
        score, new_state = score_request(self.model, req, state)
        if fault is not None and fault["kind"] == "fail":
            score["outputs"] = {"numbers": {}, "labels": {}, "refs": {}}
            score["error"] = "injected failure (diagnostics.faults)"
        if self.counts is not None:
            self.counts.inc("scored")
            if score["error"]:
                self.counts.inc("errors")
        out = Row(self.config.scores_topic, req["request_id"].encode(), self.scores.encode(score))
        return out, new_state

    def _fault(self, req: dict) -> dict | None:
        if not self.config.allow_faults:
            return None
        for f in (req.get("diagnostics") or {}).get("faults") or ():
            if f["target"] == self.model.name:
                return f
        return None


class StatelessScore(FlatMapFunction):
    def __init__(self, config: ScoreConfig) -> None:
        self.scorer = Scorer(config)

    def open(self, runtime_context: Any) -> None:
        self.scorer.setup(runtime_context)

    def flat_map(self, value: Row) -> Iterator[Row]:
        yield self.scorer.score(value)[0]


class StatefulScore(KeyedProcessFunction):
    """Per-entity model state in Flink keyed state (snapshotted, restorable)."""

    def __init__(self, config: ScoreConfig) -> None:
        self.scorer = Scorer(config)

    def open(self, runtime_context: Any) -> None:
        self.scorer.setup(runtime_context)
        self.state = runtime_context.get_state(
            ValueStateDescriptor("model-state", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        state = self.state.value()
        out, new_state = self.scorer.score(value, state)
        if new_state is None:
            self.state.clear()
        elif new_state is not state:
            self.state.update(new_state)
        yield out


def build_score(source: DataStream, config: ScoreConfig) -> DataStream:
    """RAW_RECORD requests in, OUT_RECORD scores (and dead letters) out."""
    manifest = load_manifest(config.model_dir)
    uid = f"score-{manifest.name}"
    if manifest.stateful:
        return (
            source.key_by(lambda r: (r[4] or b"").decode("utf-8", "replace"),
                          key_type=Types.STRING())
            .process(StatefulScore(config), output_type=OUT_RECORD)
            .uid(f"{uid}-model").name(f"model {manifest.name} {manifest.version}")
        )
    return (
        source.flat_map(StatelessScore(config), output_type=OUT_RECORD)
        .uid(f"{uid}-model").name(f"model {manifest.name} {manifest.version}")
    )


def main(argv: Sequence[str] | None = None) -> None:
    config: ScoreConfig = config_from_args(ScoreConfig, argv, "score")
    manifest = load_manifest(config.model_dir)
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    group = config.group_id or f"score-{manifest.name}-{config.input_topic}"
    source = read(env, [config.input_topic], config, uid=f"score-{manifest.name}-source",
                  group_id=group)
    write(build_score(source, config), config, uid=f"score-{manifest.name}-sink")
    env.execute(f"score {manifest.name} {manifest.version} {config.input_topic}")


if __name__ == "__main__":
    main()
