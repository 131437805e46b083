"""rendezvous: input + scores + control → one result per request, on time, by the schedule.

Keyed by request id. Each request opens a *mailbox* in keyed state; scores fill it; the
live *schedule* (broadcast from the compacted ``control`` topic, changeable at run time)
decides when and with which score to answer; processing-time timers wake the mailbox at
the schedule's stage boundaries and its hard deadline. The result goes to the request's
return address. The decision logic is pure Python in :mod:`udfs.mailbox` and
:mod:`udfs.schedule`; this module only drives it.

DISCUSSION — state clean-up. A mailbox lives from its first message (a request, or a score
that overtook it) until it is answered; it then shrinks to a tombstone of a few fields,
kept for ``tombstone_ms`` so that late scores are *counted* rather than re-opening the
mailbox and producing a second answer, and is then cleared by a timer. A mailbox whose
request never arrives (an orphan: scores only, no return address) is cleared
``orphan_ms`` after its would-be deadline. So every key's state is bounded in time, and
the counters show it: opened − answered − orphans dropped (open mailboxes) and answered −
tombstones cleared (tombstones) return to zero when traffic stops. The schedule lives in
broadcast state, which is snapshotted with the job, and is re-read from the compacted
``control`` topic from the beginning on every start, so the last schedule sent wins.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedBroadcastProcessFunction,
    OutputTag,
    ProcessFunction,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

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
from udfs.codec import DecodeError, codec_for, envelope
from udfs.mailbox import (
    LATE,
    Mailbox,
    build_result,
    cleanup_at,
    decide,
    next_deadline,
)
from udfs.schedule import DEFAULT_SCHEDULE, Schedule, ScheduleError, parse_schedule

ROUTED = Types.ROW_NAMED(
    ["request_id", "kind", "topic", "partition", "offset", "key", "payload"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.INT(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
DEAD_LETTERS = OutputTag("deadletter", OUT_RECORD)
SCHEDULES = MapStateDescriptor("schedules", Types.STRING(), Types.STRING())
LIVE = "__live__"


@dataclass(frozen=True)
class RendezvousConfig(KafkaConfig):
    input_topic: str = "input"
    scores_topic: str = "scores"
    control_topic: str = "control"
    #: results may only go to topics whose name starts with this (requests naming any
    #: other return address are dead-lettered rather than written anywhere)
    return_prefix: str = "results"
    tombstone_ms: int = 10_000
    orphan_ms: int = 30_000


class RouteByRequest(ProcessFunction):
    """Key every request and score by request id; undecodable input goes to dead letters.

    Scores are keyed by request id on Kafka already, so only requests (keyed by entity) are
    decoded here.
    """

    def __init__(self, config: RendezvousConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.requests = codec_for("Request")
        self.scores = codec_for("Score")

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        topic, partition, offset, _, key, payload = value
        if topic == self.config.scores_topic:
            if key:
                yield Row(key.decode("utf-8", "replace"), "score", topic, partition, offset,
                          key, payload)
                return
            rec: Any = self.scores.decode(payload)
            kind = "score"
        else:
            rec = self.requests.decode(payload)
            kind = "request"
        if isinstance(rec, DecodeError):
            yield DEAD_LETTERS, self._dead(rec.reason, value)
            return
        yield Row(rec["request_id"], kind, topic, partition, offset, key, payload)

    def _dead(self, reason: str, value: Row) -> Row:
        topic, partition, offset, _, key, payload = value
        return dead_letter_row("rendezvous", self.config.deadletter_topic, reason, topic,
                               partition, offset, key, payload)


class MailboxFunction(KeyedBroadcastProcessFunction):
    """One mailbox per request id; the live schedule from broadcast state."""

    def __init__(self, config: RendezvousConfig) -> None:
        self.config = config

    # ------------------------------------------------------------------ lifecycle
    def open(self, runtime_context: Any) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("mailbox", Types.PICKLED_BYTE_ARRAY())
        )
        self.requests = codec_for("Request")
        self.scores = codec_for("Score")
        self.results = codec_for("Result")
        self.control = codec_for("Control")
        self.schedules: dict[str, Schedule] = {}
        self.live: Schedule | None = None
        # open mailboxes = mailboxes_opened - results_* - orphans_dropped;
        # tombstones = results_* - tombstones_cleared (see rdv.jobctl.mailbox_state)
        self.counts = Counts(runtime_context, "rendezvous", (
            "mailboxes_opened", "results_preferred", "results_fallback", "results_default",
            "results_none", "tombstones_cleared", "late_scores", "duplicate_scores",
            "orphans_dropped", "dead_letters", "schedules_applied", "bad_return_address"))
        self.flush_timer = 0

    def _inc(self, name: str, n: int = 1) -> None:
        self.counts.inc(name, n)

    def _flush_later(self, ctx: Any) -> None:
        """Make sure batched counts reach Flink even when traffic stops (a timer on the
        current key; any key will do)."""
        if self.counts.pending and not self.flush_timer:
            self.flush_timer = ctx.timer_service().current_processing_time() + 250
            ctx.timer_service().register_processing_time_timer(self.flush_timer)

    # ------------------------------------------------------------------ schedules
    def process_broadcast_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        topic, partition, offset, _, key, payload = value
        rec = self.control.decode(payload)
        if isinstance(rec, DecodeError):
            yield self._dead(rec.reason, topic, partition, offset, key, payload)
            return
        if rec["kind"] != "schedule":
            return
        try:
            schedule = parse_schedule(rec["document"] or "")
        except ScheduleError as e:
            yield self._dead(f"invalid schedule: {e}", topic, partition, offset, key, payload)
            return
        state = ctx.get_broadcast_state(SCHEDULES)
        state.put(schedule.id, schedule.to_json())
        # the last schedule sent is the live one; any stored one can be named per request
        # (diagnostics.fallback_schedule)
        state.put(LIVE, schedule.id)
        self.live = schedule
        self.schedules[schedule.id] = schedule
        self._inc("schedules_applied")

    def _schedule(self, ctx: Any, schedule_id: str | None = None) -> Schedule:
        """The live schedule, or the one a request asked for by id (diagnostics)."""
        if schedule_id:
            found = self.schedules.get(schedule_id)
            if found is None:
                doc = ctx.get_broadcast_state(SCHEDULES).get(schedule_id)
                if doc:
                    found = self.schedules[schedule_id] = parse_schedule(doc)
            if found is not None:
                return found
        if self.live is None:
            # after a restore the Python cache is empty: rebuild it from broadcast state
            state = ctx.get_broadcast_state(SCHEDULES)
            live_id = state.get(LIVE)
            doc = state.get(live_id) if live_id else None
            self.live = parse_schedule(doc) if doc else None
        return self.live or DEFAULT_SCHEDULE

    # ------------------------------------------------------------------ mailboxes
    def process_element(self, value: Row, ctx: Any) -> Iterator[Row]:
        request_id, kind, topic, partition, offset, key, payload = value
        now = ctx.timer_service().current_processing_time()
        raw = self.state.value()
        mb = Mailbox.from_bytes(raw) if raw is not None else None
        if kind == "request":
            req = self.requests.decode(payload)
            if isinstance(req, DecodeError):
                yield self._dead(req.reason, topic, partition, offset, key, payload)
                return
            if not req["return_address"].startswith(self.config.return_prefix):
                self._inc("bad_return_address")
                yield self._dead(
                    f"return_address {req['return_address']!r} is not allowed: it must start "
                    f"with {self.config.return_prefix!r}", topic, partition, offset, key, payload)
                return
            diag = req.get("diagnostics") or {}
            schedule = self._schedule(ctx, diag.get("fallback_schedule"))
            if mb is None:
                mb = Mailbox(request_id)
                self._inc("mailboxes_opened")
            if not mb.attach_request(req, schedule):
                self._store(mb)
                return
        else:
            score = self.scores.decode(payload)
            if isinstance(score, DecodeError):
                yield self._dead(score.reason, topic, partition, offset, key, payload)
                return
            if mb is None:
                mb = Mailbox.from_score(score, now)
                self._inc("mailboxes_opened")
            before = mb.duplicates
            if mb.add_score(score, now) == LATE:
                self._inc("late_scores")
            elif mb.duplicates > before:
                self._inc("duplicate_scores")
            schedule = self._schedule(ctx)
        yield from self._advance(mb, schedule, now, ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        if timestamp == self.flush_timer:
            self.flush_timer = 0
            self.counts.flush()
        raw = self.state.value()
        if raw is None:
            return
        mb = Mailbox.from_bytes(raw)
        schedule = self._schedule(ctx)
        now = max(timestamp, ctx.timer_service().current_processing_time())
        clear_at = cleanup_at(mb, schedule, self.config.tombstone_ms, self.config.orphan_ms)
        if clear_at is not None and now >= clear_at:
            self._inc("tombstones_cleared" if mb.answered else "orphans_dropped")
            self.state.clear()
            self._flush_later(ctx)
            return
        # decide at the boundary the timer stands for: scores that came after it don't count
        yield from self._advance(mb, schedule, timestamp, ctx)

    def _advance(self, mb: Mailbox, schedule: Schedule, now: int, ctx: Any) -> Iterator[Row]:
        timers = ctx.timer_service()
        if not mb.answered and mb.request is not None:
            decision = decide(mb, schedule, now)
            if decision is not None:
                result = build_result(mb, decision, mb.schedule_id, _envelope)
                address = mb.request["return_address"]
                mb.close(timers.current_processing_time())
                self._inc("results_" + decision.reason)
                yield Row(address, mb.request_id.encode(), self.results.encode(result))
            else:
                at = next_deadline(mb, schedule, now)
                if at is not None:
                    timers.register_processing_time_timer(at)
        clear_at = cleanup_at(mb, schedule, self.config.tombstone_ms, self.config.orphan_ms)
        if clear_at is not None:
            timers.register_processing_time_timer(clear_at)
        self._store(mb)
        self._flush_later(ctx)

    def _store(self, mb: Mailbox) -> None:
        self.state.update(mb.to_bytes())

    def _dead(self, reason: str, topic: str, partition: int, offset: int, key: bytes | None,
              payload: bytes | None) -> Row:
        self._inc("dead_letters")
        return dead_letter_row("rendezvous", self.config.deadletter_topic, reason, topic,
                               partition, offset, key, payload)


def _envelope() -> dict:
    return envelope("rendezvous", VERSION)


def build_rendezvous(
    requests_and_scores: DataStream, control: DataStream, config: RendezvousConfig
) -> DataStream:
    """RAW_RECORD streams in (input+scores, control); OUT_RECORD (results, dead letters) out."""
    routed = (
        requests_and_scores.process(RouteByRequest(config), output_type=ROUTED)
        .uid("rendezvous-route")
        .name("route by request id")
    )
    schedules = control.broadcast(SCHEDULES)
    results = (
        routed.key_by(lambda r: r[0], key_type=Types.STRING())
        .connect(schedules)
        .process(MailboxFunction(config), output_type=OUT_RECORD)
        .uid("rendezvous-mailboxes")
        .name("mailboxes")
    )
    return results.union(routed.get_side_output(DEAD_LETTERS))


def main(argv: Sequence[str] | None = None) -> None:
    config: RendezvousConfig = config_from_args(RendezvousConfig, argv, "rendezvous")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    group = config.group_id or f"rendezvous-{config.input_topic}"
    data = read(env, [config.input_topic, config.scores_topic], config,
                uid="rendezvous-source", group_id=group)
    control_cfg = KafkaConfig(bootstrap=config.bootstrap, start_from="earliest")
    control = read(env, [config.control_topic], control_cfg, uid="rendezvous-control",
                   group_id=f"{group}-control-{int(time.time())}")
    write(build_rendezvous(data, control, config), config, uid="rendezvous-sink")
    env.execute(f"rendezvous {config.input_topic}+{config.scores_topic}")


if __name__ == "__main__":
    main()
