"""The per-request mailbox and the decision: which score (if any) answers a request, and when.

Pure logic, no Flink and no I/O: a keyed function (keyed by request id) holds one
:class:`Mailbox` in keyed state and drives it like this::

    on request r:  mb = state or Mailbox(r["request_id"])
                   if mb.answered: count a late duplicate; return
                   mb.attach_request(r, schedule)
    on score s:    mb = state or Mailbox.from_score(s, now)
                   if mb.add_score(s, now) == LATE: count it (mb is a tombstone); return
    then:          d = decide(mb, schedule, now)
                   if d: emit build_result(mb, d); mb.close(now)    # shrink to a tombstone
                   else: register a timer at next_deadline(mb, schedule, now)
                   register a timer at cleanup_at(mb, schedule) when it is not None
    on timer t:    decide(mb, schedule, t) as above; if mb.answered or orphaned and
                   t >= cleanup_at(mb, schedule): clear the state

Why a tombstone: after answering, the state shrinks to a few fields kept for
:data:`TOMBSTONE_MS` so late scores are *counted* (:func:`is_late`), not re-opened as a
new mailbox. A mailbox whose request never came (scores only) is an *orphan*: it is never
answered (no return address) and is dropped at :func:`cleanup_at`.

The clock origin is the request's ``timestamp`` (upstream time counts toward the deadline);
``now_ms`` is the caller's processing time. Each score's arrival time is recorded, and scores
that arrived after the deadline are never used, however late the deadline timer fires.

>>> from udfs.schedule import parse_schedule
>>> sch = parse_schedule({"id": "s", "stages": [{"model": "A", "wait_ms": 20},
...                      {"model": "B", "wait_ms": 30}], "deadline_ms": 50})
>>> mb = Mailbox("r1")
>>> mb.attach_request({"request_id": "r1", "timestamp": 1000, "entity_key": "u"}, sch)
True
>>> _ = mb.add_score({"model_id": "B", "outputs": {}, "error": None}, now_ms=1005)
>>> decide(mb, sch, 1005) is None, next_deadline(mb, sch, 1005)   # B waits for A until 1020
(True, 1020)
>>> decide(mb, sch, 1020)
Decision(model_id='B', reason='fallback', detail='fallback to B after 20 ms (A: no score)', \
waited_ms=20, scores_seen=1)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from udfs.schedule import Schedule, Stage

__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "LATE",
    "ORPHAN_MS",
    "TOMBSTONE_MS",
    "Decision",
    "Mailbox",
    "build_result",
    "cleanup_at",
    "decide",
    "is_late",
    "next_deadline",
]

Record = dict[str, Any]

#: how long an answered mailbox is kept as a tombstone, to count late scores
TOMBSTONE_MS = 60_000
#: how long past its deadline a mailbox waits for a request that has not come
ORPHAN_MS = 60_000

#: outcomes of :meth:`Mailbox.add_score`
ACCEPTED, DUPLICATE, LATE = "accepted", "duplicate", "late"

#: request fields not needed after routing; dropped so that keyed state stays small
_HEAVY = frozenset(("inputs", "external_state", "internal_state"))
_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer chosen for a mailbox: ``reason`` is preferred | fallback | default | none."""

    model_id: str | None
    score: Record | None = field(repr=False)
    reason: str
    detail: str
    waited_ms: int
    scores_seen: int = 0
    outputs: Record | None = field(default=None, repr=False)


@dataclass(slots=True)
class Mailbox:
    """Everything known about one request until it is answered (then a tiny tombstone).

    ``stages`` and ``deadline_ms`` are snapshotted when the request arrives, so a schedule
    change never re-routes or re-times an open mailbox. ``request`` keeps only the fields a
    result needs (inputs are dropped after routing).
    """

    request_id: str
    request: Record | None = None
    opened_at_ms: int = 0
    schedule_id: str = ""
    stages: tuple[Stage, ...] = ()
    deadline_ms: int = 0
    scores: dict[str, Record] = field(default_factory=dict)
    arrivals: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    late: int = 0
    answered: bool = False
    answered_at_ms: int = 0

    @classmethod
    def from_score(cls, score: Record, now_ms: int) -> Mailbox:
        """A mailbox opened by a score that overtook its request (clock from the score)."""
        return cls(score["request_id"], opened_at_ms=int(score.get("request_timestamp") or now_ms))

    def attach_request(self, request: Record, schedule: Schedule) -> bool:
        """Route the request and snapshot its stages; False if already attached/answered."""
        if self.answered or self.request is not None:
            if self.answered:
                self.late += 1
            else:
                self.duplicates += 1
            return False
        self.request = {k: v for k, v in request.items() if k not in _HEAVY}
        self.opened_at_ms = int(request["timestamp"])
        self.schedule_id = schedule.id
        self.stages = schedule.stages_for(request)
        self.deadline_ms = schedule.deadline_ms
        cutoff = self.opened_at_ms + self.deadline_ms
        self.late += sum(1 for t in self.arrivals.values() if t > cutoff)
        return True

    def add_score(self, score: Record, now_ms: int) -> str:
        """Record a score arriving at ``now_ms``: ACCEPTED, DUPLICATE (first one wins) or LATE
        (mailbox answered, or past its deadline: kept for the record but never used)."""
        if self.answered:
            self.late += 1
            return LATE
        model = score["model_id"]
        if model in self.scores:
            self.duplicates += 1
            return DUPLICATE
        self.scores[model] = score
        self.arrivals[model] = now_ms
        if self.request is not None and now_ms > self.opened_at_ms + self.deadline_ms:
            self.late += 1
            return LATE
        return ACCEPTED

    def close(self, now_ms: int) -> None:
        """Mark answered and shrink to a tombstone (counters kept, payloads dropped)."""
        self.answered = True
        self.answered_at_ms = now_ms
        self.request = None
        self.stages = ()
        self.scores = {}
        self.arrivals = {}

    def to_bytes(self) -> bytes:
        """Compact state bytes: a pickled tuple of plain values (no class paths inside)."""
        return pickle.dumps(
            (_STATE_FORMAT, self.request_id, self.request, self.opened_at_ms, self.schedule_id,
             tuple((s.model, s.wait_ms) for s in self.stages), self.deadline_ms, self.scores,
             self.arrivals, self.duplicates, self.late, self.answered, self.answered_at_ms),
            protocol=5,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Mailbox:
        """Inverse of :meth:`to_bytes`."""
        t = pickle.loads(data)
        if t[0] != _STATE_FORMAT:
            raise ValueError(f"unknown mailbox state format {t[0]}")
        (_, rid, req, opened, sid, stages, deadline, scores, arrivals, dup, late, answered,
         answered_at) = t
        return cls(rid, req, opened, sid, tuple(Stage(m, w) for m, w in stages), deadline,
                   scores, arrivals, dup, late, answered, answered_at)


def is_late(mailbox: Mailbox | None) -> bool:
    """True when the state is a tombstone: anything arriving now is counted, not used."""
    return mailbox is not None and mailbox.answered


def cleanup_at(
    mailbox: Mailbox, schedule: Schedule, tombstone_ms: int = TOMBSTONE_MS,
    orphan_ms: int = ORPHAN_MS,
) -> int | None:
    """When the state may be cleared: tombstone expiry, or orphan expiry (no request yet);
    None for an open mailbox (:func:`decide` always answers it by its deadline)."""
    if mailbox.answered:
        return mailbox.answered_at_ms + tombstone_ms
    if mailbox.request is None:
        return mailbox.opened_at_ms + schedule.deadline_ms + orphan_ms
    return None


def _scan(mb: Mailbox, ignore: frozenset[str], elapsed: int) -> tuple[int, int, bool]:
    """(index of the best usable stage or -1, its start offset, whether an earlier stage
    could still deliver). Allocation-free apart from the returned tuple."""
    cutoff = mb.opened_at_ms + mb.deadline_ms
    scores, arrivals = mb.scores, mb.arrivals
    start = 0
    pending = False
    for k, stage in enumerate(mb.stages):
        model = stage.model
        if model not in ignore:
            s = scores.get(model)
            if s is None:
                pending = True
            elif not s.get("error") and arrivals[model] <= cutoff:
                return k, start, pending
        start = stage.wait_ms
    return -1, 0, pending


def decide(mailbox: Mailbox, schedule: Schedule, now_ms: int) -> Decision | None:
    """The answer at ``now_ms``, or None while it is worth waiting.

    The earliest acceptable stage with a usable score answers (stage 0 immediately:
    "preferred"). A later stage answers early when every earlier stage has reported unusably.
    At the deadline, the best usable score that arrived before it, else the default/none.
    """
    mb = mailbox
    if mb.answered or mb.request is None:
        return None
    elapsed = now_ms - mb.opened_at_ms
    k, start, pending = _scan(mb, schedule.ignore, elapsed)
    if k >= 0:
        if start <= elapsed or not pending:
            return _answer(mb, schedule, k, max(elapsed, 0))
        return None
    if elapsed >= mb.deadline_ms or (mb.stages and not pending):
        return _fallback_default(mb, schedule, max(elapsed, 0))
    return None


def next_deadline(mailbox: Mailbox, schedule: Schedule, now_ms: int) -> int | None:
    """The next absolute time (epoch ms) at which :func:`decide` could answer with no new
    input: the start of the stage holding the best waiting score, else the deadline.
    ``<= now_ms`` means decide() answers now; None when there is nothing to time."""
    mb = mailbox
    if mb.answered or mb.request is None:
        return None
    elapsed = now_ms - mb.opened_at_ms
    k, start, pending = _scan(mb, schedule.ignore, elapsed)
    if k >= 0:
        return now_ms if start <= elapsed or not pending else mb.opened_at_ms + start
    if mb.stages and not pending:
        return now_ms
    return mb.opened_at_ms + mb.deadline_ms


def _seen(mb: Mailbox, elapsed: int) -> int:
    cutoff = mb.opened_at_ms + min(elapsed, mb.deadline_ms)
    return sum(1 for t in mb.arrivals.values() if t <= cutoff)


def _why(mb: Mailbox, ignore: frozenset[str], upto: int) -> str:
    """Why the stages before ``upto`` did not answer, e.g. 'A: error: timeout, B: no score'."""
    cutoff = mb.opened_at_ms + mb.deadline_ms
    parts = []
    for stage in mb.stages[:upto]:
        m = stage.model
        s = mb.scores.get(m)
        if m in ignore:
            parts.append(f"{m}: ignored")
        elif s is None:
            parts.append(f"{m}: no score")
        elif s.get("error"):
            parts.append(f"{m}: error: {str(s['error'])[:60]}")
        elif mb.arrivals[m] > cutoff:
            parts.append(f"{m}: after deadline")
    return ", ".join(parts)


def _answer(mb: Mailbox, schedule: Schedule, k: int, waited: int) -> Decision:
    model = mb.stages[k].model
    score = mb.scores[model]
    if k == 0:
        reason, detail = "preferred", f"preferred {model} after {waited} ms"
    else:
        reason = "fallback"
        detail = f"fallback to {model} after {waited} ms ({_why(mb, schedule.ignore, k)})"
    return Decision(model, score, reason, detail, waited, _seen(mb, waited), score["outputs"])


def _fallback_default(mb: Mailbox, schedule: Schedule, waited: int) -> Decision:
    why = _why(mb, schedule.ignore, len(mb.stages)) or "no stages"
    early = waited < mb.deadline_ms
    when = f"after {waited} ms" + (", every stage model failed" if early else " (deadline)")
    seen = _seen(mb, waited)
    if schedule.default is not None:
        return Decision(None, None, "default", f"default {when}: {why}", waited, seen,
                        schedule.default.outputs)
    return Decision(None, None, "none", f"none {when}: {why}; no default", waited, seen)


def _default_envelope() -> Record:
    from importlib.metadata import PackageNotFoundError, version

    from udfs.codec import envelope

    try:
        v = version("rendezvous-flink")
    except PackageNotFoundError:
        v = "0"
    return envelope("rendezvous", v)


def build_result(
    mailbox: Mailbox,
    decision: Decision,
    schedule_id: str | None = None,
    envelope_fn: Callable[[], Record] | None = None,
) -> Record:
    """The ``rdv.Result`` record for a decision (call before :meth:`Mailbox.close`).

    Provenance: the request's hops, then the chosen score's own hops (the model), then the
    rendezvous hop from ``envelope_fn()`` (default ``codec.envelope("rendezvous", version)``);
    tags merged, trace context and diagnostics copied from the request.
    """
    req = mailbox.request
    if req is None:
        raise ValueError(f"mailbox {mailbox.request_id!r} has no request to answer")
    env = (envelope_fn or _default_envelope)()
    rprov = req.get("provenance") or {}
    hops = list(rprov.get("hops") or ())
    score = decision.score
    if score is not None:
        hops.extend(h for h in (score.get("provenance") or {}).get("hops") or () if h not in hops)
    hops.extend(env["provenance"]["hops"])
    tags = dict(rprov.get("tags") or {})
    tags.update(env["provenance"].get("tags") or {})
    return {
        "timestamp": env["timestamp"],
        "message_id": env["message_id"],
        "provenance": {"hops": hops, "tags": tags, "trace": rprov.get("trace")},
        "diagnostics": req.get("diagnostics"),
        "request_id": mailbox.request_id,
        "entity_key": req.get("entity_key", ""),
        "model_id": decision.model_id,
        "model_version": None if score is None else score.get("model_version"),
        "outputs": decision.outputs,
        "reason": decision.reason,
        "detail": decision.detail,
        "schedule_id": mailbox.schedule_id if schedule_id is None else schedule_id,
        "request_timestamp": mailbox.opened_at_ms,
        "waited_ms": decision.waited_ms,
        "scores_seen": decision.scores_seen,
    }
