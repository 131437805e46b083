"""augment: raw → input. Adds external state (a profile per entity, kept in Flink keyed
state from the compacted ``profiles`` topic) and shared internal state (card velocity: the
speed implied by the entity's last two card-present transactions) to every request, so
that every model sees identical inputs and the decoy archives exactly those.

Keyed by entity (the Kafka key of both topics), so each entity's requests keep their
partition order. The features come from one function (``--features module:function``,
default the demo's :func:`udfs.demo.generator.augment_features`) that training uses too.
External state that is missing is recorded as missing (``external_state.missing``), never
invented.

DISCUSSION — state clean-up. Two values per entity: the latest profile (replaced on every
profile update; cleared by a tombstone, i.e. a null value, on ``profiles``) and the last
card-present point (replaced on each card-present transaction). Both are bounded by the
number of entities; an entity that is gone for good is removed by a profile tombstone.
Flink's state TTL would expire the rest, but PyFlink 2.2 cannot configure TTL in thread
mode (it tries to start a Py4J gateway inside the TaskManager), so for now the bound is
the number of entities.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedProcessFunction, StreamExecutionEnvironment
from pyflink.datastream.state import ValueStateDescriptor

from jobs.common import (
    OUT_RECORD,
    VERSION,
    Counts,
    KafkaConfig,
    config_from_args,
    dead_letter_row,
    read,
    write,
)
from udfs.codec import DecodeError, add_hop, codec_for
from udfs.profiles import to_flat

FeatureFn = Callable[[dict, dict | None, dict | None], tuple[dict, dict]]


@dataclass(frozen=True)
class AugmentConfig(KafkaConfig):
    raw_topic: str = "raw"
    profiles_topic: str = "profiles"
    input_topic: str = "input"
    features: str = "udfs.demo.generator:augment_features"
    point: str = "udfs.demo.generator:card_present_point"


def _load(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


class Augment(KeyedProcessFunction):
    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        # no state TTL: in thread mode PyFlink 2.2 converts a TTL config by starting a Py4J
        # gateway inside the TaskManager, which fails (measured); see DISCUSSION
        self.profile = runtime_context.get_state(
            ValueStateDescriptor("profile", Types.PICKLED_BYTE_ARRAY())
        )
        self.point = runtime_context.get_state(
            ValueStateDescriptor("last-card-present", Types.STRING())
        )
        self.requests = codec_for("Request")
        self.profiles = codec_for("Profile")
        self.features: FeatureFn = _load(self.config.features)
        self.card_point = _load(self.config.point)
        self.counts = Counts(runtime_context, "augment", ("augmented", "missing_external_state"))

    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        topic, partition, offset, _, key, payload = value
        if topic == self.config.profiles_topic:
            if payload is None:  # a tombstone: the entity's profile is gone
                self.profile.clear()
                return
            prof = self.profiles.decode(payload)
            if isinstance(prof, DecodeError):
                yield self._dead(prof.reason, value)
                return
            self.profile.update(payload)
            return
        req = self.requests.decode(payload)
        if isinstance(req, DecodeError):
            yield self._dead(req.reason, value)
            return
        entity = ctx.get_current_key()
        if req["entity_key"] != entity:
            yield self._dead(
                f"Kafka key {entity!r} differs from entity_key {req['entity_key']!r}: produce "
                "requests keyed by their entity_key", value)
            return
        raw_profile = self.profile.value()
        decoded = self.profiles.decode(raw_profile) if raw_profile else None
        profile = to_flat(decoded) if isinstance(decoded, dict) else None
        prev_json = self.point.value()
        prev = json.loads(prev_json) if prev_json else None
        external, internal = self.features(req, profile, prev)
        if external.get("missing"):
            self.counts.inc("missing_external_state")
        req["external_state"] = external
        req["internal_state"] = internal
        here = self.card_point(req)
        if here is not None:
            self.point.update(json.dumps(here))
        add_hop(req, "augment", VERSION)
        self.counts.inc("augmented")
        yield Row(self.config.input_topic, key, self.requests.encode(req))

    def _dead(self, reason: str, value: Row) -> Row:
        topic, partition, offset, _, key, payload = value
        return dead_letter_row("augment", self.config.deadletter_topic, reason, topic,
                               partition, offset, key, payload)


def build_augment(source: DataStream, config: AugmentConfig) -> DataStream:
    """RAW_RECORD (raw + profiles, keyed by entity on Kafka) in; OUT_RECORD out."""
    return (
        source.key_by(lambda r: (r[4] or b"").decode("utf-8", "replace"), key_type=Types.STRING())
        .process(Augment(config), output_type=OUT_RECORD)
        .uid("augment-state")
        .name("augment")
    )


def main(argv: Sequence[str] | None = None) -> None:
    config: AugmentConfig = config_from_args(AugmentConfig, argv, "augment")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    group = config.group_id or f"augment-{config.raw_topic}"
    source = read(env, [config.profiles_topic, config.raw_topic], config, uid="augment-source",
                  group_id=group)
    write(build_augment(source, config), config, uid="augment-sink")
    env.execute(f"augment {config.raw_topic}->{config.input_topic}")


if __name__ == "__main__":
    main()
