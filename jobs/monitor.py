"""monitor: live meta analytics, ``scores`` + ``results`` (+ ``input``) → ``metrics``, ``alerts``.

What it computes (DESIGN.md §6, the pure building blocks are :mod:`udfs.meta`), all on
*event time* — the ``timestamp`` of each record, never the wall clock (except to keep
windows closing when all traffic stops, see "clock" below):

- **score sketches**: per model × request-tag combination × window (``--window-ms``) a
  t-digest of every number of the score's outputs (``score.<number>``, Metric kind
  ``tdigest``), for ``rdv monitor`` and any later merge (:class:`udfs.meta.sketches.SketchStore`);
- **latency**: per model, an HdrHistogram of ``Score.latency_us`` (``latency.score``), and for
  the rendezvous one of ``Result.waited_ms`` (``latency.waited``), per ``--latency-window-ms``
  window (Metric kind ``hdr``);
- **per-window signals** of every model (subject = model id): ``score_shift`` (√n·KS distance
  of the window's scores, as quantiles against the model's own reference = its previous
  ``--reference-windows`` windows, from uniform), ``score_rate`` (event-rate change surprise,
  −log10 p, of the model's scores), ``bin_rate`` (largest surprise over the per-score-bin
  rates; equal-mass bins from the first reference), ``drift`` (k-means distance exceedance
  surprise on the vector of all output numbers, clusters fitted on the first reference
  period), ``latency_p99`` (ms) and ``error_rate``; of the rendezvous (subject
  ``rendezvous``): ``result_rate``, ``waited_p99`` and ``fallback_share``; of the input
  (subject ``input``, only with ``--input-topic``): ``request_rate``;
- **comparison**: every score's reference quantile is paired by request id with the
  champion's and the canary's (:class:`udfs.meta.compare.RequestPairer`); per window the
  fraction of requests whose quantiles differ by more than ``--disagree-x`` becomes the
  signal ``disagree_vs_<reference>`` of the compared model (and a ``disagree.<reference>``
  gauge metric);
- **one combined alarm per subject** (:class:`udfs.meta.alarm.CombinedAlarm`): once per window
  every signal → quantile of its own history → base-10 log-odds → summed, against the
  threshold from ``--alarm-hours-per-week``; a rising edge writes an ``Alert`` naming the
  subject and the signals (largest contribution first) to ``alerts``; every evaluation also
  writes ``alarm`` and ``signal.<name>`` gauges to ``metrics``.

Undecodable records go to the dead-letter topic.

Dataflow::

    kafka(scores, results[, input]) → decode → keyBy(subject) → [monitor] ──► metrics
        [monitor] ─ quantile rows → keyBy(request id) → [pair] ─ pairs ─┐
        [monitor] ─ window signals ───────────────────── keyBy(subject) → [alarm] ──► alerts

Cost: per score a buffered digest append, a t-digest ``cdf`` (normalisation), a bisect (bin),
two rate-detector appends, a 1×d nearest-centre search and an HdrHistogram record; everything
else (flushes, KS, rate tests, alarm) happens once per window and subject.

**Clock.** Each ``monitor`` subtask keeps its own event-time clock: the smallest, over the
source partitions that delivered within the last ``--idle-ms`` of wall time, of the largest
timestamp seen from each (a per-partition watermark, so a partition read ahead while a backlog
is caught up does not close windows the others are still filling). A window
``[s, s + window_ms)`` closes when the clock passes ``s + window_ms + lateness_ms``; records
older than a closed window still go into the sketches (a second, partial window record with
the same start, which the store merges) and into the next open evaluation.
Event-rate detectors are fed each window's timestamps in sorted order when it closes.
When a subtask sees no record for ``--idle-ms`` of processing time, its clock moves on with the
wall clock, so windows keep closing and a stoppage of all traffic is still reported.
*Limitation:* a partition is only known once it delivered; when a backlog is read (``--start-from
earliest`` / ``committed`` after downtime) the source may fetch one partition far ahead of
another (about 1 MB per partition and fetch), and records more than ``lateness_ms`` behind
the clock are *late*: they are still sketched (partial windows, flushed by the next timer) but
counted in the next open evaluation window, which distorts that window's rate signals. Live
(``--start-from latest``, the default) the skew between partitions is milliseconds; for a
replay use one partition, or a ``lateness_ms`` that covers the skew.

DISCUSSION — keys and state clean-up. ``monitor`` and ``alarm`` are keyed by *subject* (model
id, ``rendezvous``, ``input``): every model's state lives in exactly one subtask, and the job
scales with the number of models. ``pair`` is keyed by *request id*. All the analytic state is
kept in **Python memory** of each subtask (t-digests, HdrHistograms, rate predictors, k-means
centres, rolling signal histories), not in Flink state: it is updated per record, and
(un)pickling it per record into keyed state would cost more than the analytics (there is no
state TTL in thread mode either). It is bounded: open windows are removed when flushed (at
most ``(lateness / window) + 2`` per subject × tag set), the reference keeps
``reference_windows`` digests, rate detectors keep ``max(ns) + 1`` timestamps each, the
pairer keeps at most ``--pair-pending`` requests (oldest evicted, counted), the alarm histories
``history`` values per signal; a subject silent for ``--forget-windows`` windows is dropped
with all its state. **Lost on restart** (failover, upgrade, cancel): the open, not yet emitted
windows (at most ``window + lateness`` of sketches), the references and bins (rebuilt after
``reference_windows`` windows), the rate predictors (warm again after 5 buckets), the drift
clusters (refitted on the next reference period), the pairs in flight, and the alarm's signal
histories — so after a restart the alarm is blind for ``min_history`` windows (and its
empirical threshold recalibrates). Everything already written (metrics, alerts) stays on Kafka.
The only Flink state is the source offsets; by default the job starts from the latest offsets
(``--start-from latest``): a restarted monitor does not re-emit windows it already wrote.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastdigest import TDigest, merge_all
from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    StreamExecutionEnvironment,
)

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
from udfs.meta.alarm import CombinedAlarm
from udfs.meta.compare import Comparison, Pair, RequestPairer
from udfs.meta.drift import ClusterDrift
from udfs.meta.latency import WindowedLatency
from udfs.meta.rates import (
    HOUR_MS,
    KeyedRateDetectors,
    RateChangeDetector,
    RatePredictor,
    bin_index,
)
from udfs.meta.sketches import ScoreSketcher, quantile_bin_edges

COMPONENT = "monitor"
RENDEZVOUS = "rendezvous"
INPUT = "input"

#: internal rows between the operators are plain tuples (never classes of this module: the
#: job's module is pickled by value and is not importable in the TaskManager)
EVENTS = Types.PICKLED_BYTE_ARRAY()
DEAD_LETTERS = OutputTag("monitor-deadletter", OUT_RECORD)
QUANTILES = OutputTag("monitor-quantiles", Types.PICKLED_BYTE_ARRAY())
SIGNALS = OutputTag("monitor-signals", Types.PICKLED_BYTE_ARRAY())

Out = tuple[str, Any]  # ("out", (topic, key, value)) | ("q", row) | ("sig", row)


@dataclass(frozen=True)
class MonitorConfig(KafkaConfig):
    start_from: str = "latest"
    scores_topic: str = "scores"
    results_topic: str = "results"
    #: optional: request arrivals (rate of ``input``); empty = not read
    input_topic: str = ""
    metrics_topic: str = "metrics"
    alerts_topic: str = "alerts"
    champion: str = "fraud_gbm"
    canary: str = "fraud_canary"
    #: the output number that is "the score" (normalised, binned, compared); a score without
    #: it uses its first number in name order
    score_name: str = "fraud_probability"
    #: comma-separated request tags that split the sketches ("*" = all, "" = none)
    tag_keys: str = "*"
    window_ms: int = 10_000
    latency_window_ms: int = 5_000
    lateness_ms: int = 2_000
    idle_ms: int = 5_000
    reference_windows: int = 6
    min_reference_n: int = 200
    score_bins: int = 10
    drift_k: int = 4
    drift_window: int = 500
    drift_fit_n: int = 5_000
    rate_bucket_ms: int = 10_000
    rate_halflife_ms: int = 600_000
    disagree_x: float = 0.2
    min_window_n: int = 10
    pair_pending: int = 50_000
    alarm_hours_per_week: float = 1.0
    min_history: int = 100
    history: int = 10_000
    forget_windows: int = 360
    max_centroids: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window_ms", "latency_window_ms", "idle_ms", "reference_windows",
                     "score_bins", "drift_k", "drift_window", "rate_bucket_ms",
                     "min_history", "history", "forget_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if HOUR_MS % self.rate_bucket_ms:
            raise ValueError(f"rate_bucket_ms must divide an hour, got {self.rate_bucket_ms}")
        if not 0 < float(self.disagree_x) < 1:
            raise ValueError(f"disagree_x must be in (0, 1), got {self.disagree_x}")
        if float(self.alarm_hours_per_week) <= 0:
            raise ValueError("alarm_hours_per_week must be > 0")
        if not self.scores_topic:
            raise ValueError("--scores-topic is required")

    @property
    def references(self) -> tuple[str, ...]:
        """Reference models in order of authority (champion first)."""
        return tuple(m for m in (self.champion, self.canary) if m)


# ----------------------------------------------------------------------------- decoding


class EventDecoder:
    """Raw Kafka record → a compact event tuple, or a dead letter.

    - score: ``("score", model_id, ts, request_id, numbers, latency_us, tags, error, src)``
    - result: ``("result", "rendezvous", ts, request_id, reason, waited_ms, model_id, src)``
    - request: ``("request", "input", ts, request_id, src)``

    ``[1]`` is the subject (the key of the monitor), ``[2]`` the event time, ``[-1]`` the
    source partition (``topic:partition``: the monitor's clock follows the slowest one).
    """

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.scores = codec_for("Score")
        self.results = codec_for("Result")
        self.requests = codec_for("Request")
        keys = config.tag_keys.strip()
        self.tag_keys: frozenset[str] | None = (
            None if keys == "*" else frozenset(k.strip() for k in keys.split(",") if k.strip())
        )

    def _tags(self, rec: dict) -> dict[str, str]:
        tags = (rec.get("provenance") or {}).get("tags") or {}
        if self.tag_keys is None:
            return dict(tags)
        return {k: v for k, v in tags.items() if k in self.tag_keys}

    def decode(self, value: Sequence[Any]) -> tuple[tuple | None, tuple | None]:
        """(event, None) or (None, dead letter (topic, key, value))."""
        topic, partition, offset, _, key, payload = value
        c = self.config
        src = f"{topic}:{partition}"
        if topic == c.scores_topic:
            rec = self.scores.decode(payload)
            if not isinstance(rec, DecodeError):
                return ("score", rec["model_id"], rec["timestamp"], rec["request_id"],
                        dict(rec["outputs"]["numbers"]), int(rec["latency_us"]),
                        self._tags(rec), rec["error"] is not None, src), None
        elif c.input_topic and topic == c.input_topic:
            rec = self.requests.decode(payload)
            if not isinstance(rec, DecodeError):
                return ("request", INPUT, rec["timestamp"], rec["request_id"], src), None
        else:
            rec = self.results.decode(payload)
            if not isinstance(rec, DecodeError):
                return ("result", RENDEZVOUS, rec["timestamp"], rec["request_id"],
                        rec["reason"], int(rec["waited_ms"]), rec["model_id"] or "", src), None
        assert isinstance(rec, DecodeError)
        return None, dead_letter_row(COMPONENT, c.deadletter_topic, rec.reason, topic,
                                     partition, offset, key, payload)


# ----------------------------------------------------------------------------- monitor


def ks_uniform(qs: Sequence[float]) -> float:
    """√n · Kolmogorov-Smirnov distance of quantiles from Uniform(0, 1) (≈ 0.87 on average
    under the null, whatever n; grows like √n under a shift).

    >>> round(ks_uniform([0.1, 0.3, 0.5, 0.7, 0.9]), 3)
    0.224
    >>> ks_uniform([0.99] * 100) > 9
    True
    """
    n = len(qs)
    if n == 0:
        return 0.0
    s = np.sort(np.asarray(qs, dtype=float))
    i = np.arange(1, n + 1)
    d = max(float((i / n - s).max()), float((s - (i - 1) / n).max()))
    return math.sqrt(n) * d


@dataclass
class _Window:
    """What one subject accumulates for one evaluation window."""

    n: int = 0
    errors: int = 0
    qs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # µs (scores) / ms (results)
    fallbacks: int = 0
    times: list[int] = field(default_factory=list)  # fed to the rate detectors in order
    bins: list[tuple[int, int]] = field(default_factory=list)  # (ts, score bin)


class _Subject:
    """The analytic state of one subject (a model, the rendezvous or the input)."""

    def __init__(self, name: str, kind: str, config: MonitorConfig) -> None:
        c = config
        self.name, self.kind, self.config = name, kind, c
        self.windows: dict[int, _Window] = {}
        self.next_eval: int | None = None  # start of the next window to evaluate
        self.last_ts = 0  # event time clamps: rate detectors need non-decreasing times
        self.last_bin_ts = 0
        self.last_seen = 0
        self.rate = self._rate_detector()
        # reference (models only): digests of the primary score of the last closed windows
        self.ref_digests: deque[TDigest] = deque(maxlen=c.reference_windows)
        self.reference: TDigest | None = None
        self.bins: list[float] | None = None
        self.bin_rates: KeyedRateDetectors | None = None
        self.drift: ClusterDrift | None = None
        self.drift_keys: tuple[str, ...] | None = None
        self.drift_fit: list[list[float]] = []

    def _rate_detector(self) -> RateChangeDetector:
        c = self.config
        return RateChangeDetector(
            ns=(1, 10, 100), predictor=RatePredictor(
                bucket_ms=c.rate_bucket_ms, halflife_ms=c.rate_halflife_ms, warmup_buckets=5))

    def window(self, ts: int) -> _Window:
        wms = self.config.window_ms
        start = ts - ts % wms
        if self.next_eval is None:
            self.next_eval = start
        start = max(start, self.next_eval)  # late: into the first open window
        w = self.windows.get(start)
        if w is None:
            w = self.windows[start] = _Window()
        return w

    def feed_rates(self, w: _Window) -> None:
        """Feed a closing window's events to the rate detectors in time order (records of
        several partitions interleave out of order; the detectors need ordered times)."""
        for ts in sorted(w.times):
            self.last_ts = max(self.last_ts, ts)
            self.rate.update(self.last_ts)
        if self.bin_rates is not None:
            for ts, b in sorted(w.bins):
                self.last_bin_ts = max(self.last_bin_ts, ts)
                self.bin_rates.update(b, self.last_bin_ts)

    # ---- models only
    def normalise(self, score: float) -> float | None:
        if self.reference is None:
            return None
        return min(1.0, max(0.0, float(self.reference.cdf(score))))

    def add_reference(self, digest: TDigest) -> None:
        c = self.config
        self.ref_digests.append(digest)
        n = sum(d.n_values for d in self.ref_digests)
        if len(self.ref_digests) < c.reference_windows or n < c.min_reference_n:
            return
        self.reference = merge_all(list(self.ref_digests), c.max_centroids)
        if self.bins is None:
            self.bins = quantile_bin_edges(self.reference, c.score_bins)
            self.bin_rates = KeyedRateDetectors(self._rate_detector)
        if self.drift is None and self.drift_keys and len(self.drift_fit) >= 50:
            self.drift = ClusterDrift(k=c.drift_k, seed=0, window=c.drift_window).fit(
                np.asarray(self.drift_fit, dtype=float))
            self.drift_fit = []

    def vector(self, numbers: dict[str, float]) -> list[float] | None:
        if self.drift_keys is None:
            self.drift_keys = tuple(sorted(numbers))
        if not self.drift_keys or any(k not in numbers for k in self.drift_keys):
            return None
        return [float(numbers[k]) for k in self.drift_keys]


class MonitorCore:
    """Everything the ``monitor`` operator does, without Flink: ``process(event, wall_ms)``
    per event and ``idle(wall_ms)`` from a timer; both return outputs
    ``("out", (topic, key, value))`` (metrics to Kafka), ``("q", (request_id, model, q, ts))``
    (to the pairer) and ``("sig", (subject, window_start, window_end, {signal: value}))``
    (to the alarm)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.metric_codec = codec_for("Metric")
        self.sketchers: dict[str, ScoreSketcher] = {}
        self.latency = WindowedLatency(config.latency_window_ms)
        self.subjects: dict[str, _Subject] = {}
        #: event time of this subtask: the smallest of the largest timestamps of the source
        #: partitions that delivered within the last ``idle_ms`` of wall time (a watermark:
        #: a partition read ahead, e.g. when catching up a backlog, does not close windows
        #: whose records are still coming through the other partitions)
        self.clock = 0
        self.partitions: dict[str, list[int]] = {}  # src -> [largest ts, wall ms]
        self.late_pending = False
        self.last_wall = 0  # wall time of the last event (for idle advance)
        self.flushed_upto = 0
        # the clock is looked at only when it crosses a multiple of this (cheap per event)
        self.step = math.gcd(config.window_ms, config.latency_window_ms)
        self.counts: dict[str, int] = dict.fromkeys(
            ("events", "late", "windows", "metrics", "forgotten"), 0)

    def subject(self, name: str, kind: str) -> _Subject:
        s = self.subjects.get(name)
        if s is None:
            s = self.subjects[name] = _Subject(name, kind, self.config)
        return s

    # ------------------------------------------------------------------ per event
    def process(self, event: tuple, wall_ms: int = 0) -> list[Out]:
        kind, name, ts = event[0], event[1], int(event[2])
        self.counts["events"] += 1
        self.last_wall = wall_ms
        if ts < self.flushed_upto:
            self.counts["late"] += 1
            self.late_pending = True  # its partial window is flushed by the next timer
        s = self.subject(name, kind)
        s.last_seen = max(s.last_seen, ts)
        w = s.window(ts)
        w.n += 1
        w.times.append(ts)
        out: list[Out] = []
        if kind == "score":
            out.extend(self._score(s, w, event, ts))
        elif kind == "result":
            _, _, _, _, reason, waited_ms, _, _ = event
            w.latencies.append(float(waited_ms))
            if reason != "preferred":
                w.fallbacks += 1
            self.latency.update(RENDEZVOUS, "waited", max(1, waited_ms) * 1000, ts)
        part = self.partitions.get(event[-1])
        if part is None:
            part = self.partitions[event[-1]] = [ts, wall_ms]
        part[0], part[1] = max(part[0], ts), wall_ms
        live = [p[0] for p in self.partitions.values()
                if p[1] >= wall_ms - self.config.idle_ms]
        clock = min(live) if live else ts
        if clock > self.clock:
            crossed = (clock - self.config.lateness_ms) // self.step != (
                self.clock - self.config.lateness_ms) // self.step
            self.clock = clock
            if crossed:
                out.extend(self.advance())
        return out

    def _score(self, s: _Subject, w: _Window, event: tuple, ts: int) -> list[Out]:
        _, model, _, request_id, numbers, latency_us, tags, error, _ = event
        if error:
            w.errors += 1
        self.latency.update(model, "score", latency_us, ts)
        w.latencies.append(float(latency_us))
        for number, v in numbers.items():
            sk = self.sketchers.get(number)
            if sk is None:
                sk = self.sketchers[number] = ScoreSketcher(self.config.window_ms,
                                                            self.config.max_centroids)
            sk.update(model, tags, v, ts)
        score = self._primary(numbers)
        if score is None:
            return []
        vec = s.vector(numbers)
        if vec is not None:
            if s.drift is not None:
                s.drift.update(vec, ts)
            elif len(s.drift_fit) < self.config.drift_fit_n:
                s.drift_fit.append(vec)
        q = s.normalise(score)
        if q is None:
            return []
        w.qs.append(q)
        if s.bins is not None and s.bin_rates is not None:
            w.bins.append((ts, bin_index(score, s.bins)))
        return [("q", (request_id, model, q, ts))]

    def _primary(self, numbers: dict[str, float]) -> float | None:
        if self.config.score_name in numbers:
            return float(numbers[self.config.score_name])
        if numbers:
            return float(numbers[min(numbers)])
        return None

    # ------------------------------------------------------------------ clock
    def idle(self, wall_ms: int) -> list[Out]:
        """No event for a while: let event time follow the wall clock."""
        gap = wall_ms - self.last_wall
        if self.last_wall and gap >= self.config.idle_ms and self.partitions:
            self.clock = max(self.clock, max(p[0] for p in self.partitions.values())) + gap
            self.last_wall = wall_ms
            return self.advance()
        if self.late_pending:
            return self.advance()
        return []

    def advance(self) -> list[Out]:
        """Close and emit everything that ended ``lateness_ms`` before the clock."""
        c = self.config
        upto = self.clock - c.lateness_ms
        out: list[Out] = []
        if upto - upto % c.window_ms > self.flushed_upto or self.late_pending:
            out.extend(self._flush_sketches(upto))
        self.late_pending = False
        for lw in self.latency.flush(upto):
            out.append(self._metric(lw.metric_record(COMPONENT, VERSION)))
        for s in list(self.subjects.values()):
            out.extend(self._evaluate(s, upto))
        return out

    def _flush_sketches(self, upto: int) -> list[Out]:
        c = self.config
        out: list[Out] = []
        primary: dict[tuple[str, int], list[TDigest]] = {}
        for number, sk in self.sketchers.items():
            for cw in sk.flush(upto):
                out.append(self._metric(cw.metric_record(f"score.{number}", COMPONENT,
                                                         VERSION)))
                if number == c.score_name or (
                        c.score_name not in self.sketchers and number == min(self.sketchers)):
                    primary.setdefault((cw.model, cw.window_start), []).append(cw.tdigest())
        for (model, _), digests in sorted(primary.items(), key=lambda kv: kv[0][1]):
            s = self.subjects.get(model)
            if s is not None:
                s.add_reference(digests[0] if len(digests) == 1
                                else merge_all(digests, c.max_centroids))
        self.flushed_upto = upto - upto % c.window_ms
        return out

    def _evaluate(self, s: _Subject, upto: int) -> list[Out]:
        c = self.config
        out: list[Out] = []
        if s.next_eval is None:
            return out
        if upto - s.last_seen > c.forget_windows * c.window_ms:
            del self.subjects[s.name]  # silent for long: a retired model
            self.counts["forgotten"] += 1
            return out
        steps = 0
        while s.next_eval + c.window_ms <= upto:
            start, end = s.next_eval, s.next_eval + c.window_ms
            w = s.windows.pop(start, None) or _Window()
            s.next_eval = end
            steps += 1
            if steps > 100:  # a jump of the clock: skip the long empty stretch
                s.windows = {k: v for k, v in s.windows.items() if k >= end}
                continue
            self.counts["windows"] += 1
            out.append(("sig", (s.name, start, end, self.signals(s, w, end))))
        return out

    def signals(self, s: _Subject, w: _Window, end: int) -> dict[str, float]:
        c = self.config
        sig: dict[str, float] = {}
        s.feed_rates(w)
        rate = s.rate.check(end)
        if s.kind == "score":
            if rate.tests:
                sig["score_rate"] = rate.surprise
            if len(w.qs) >= c.min_window_n:
                sig["score_shift"] = ks_uniform(w.qs)
            if s.bin_rates is not None:
                st = s.bin_rates.check(end)
                if any(x.tests for x in st.values()):
                    sig["bin_rate"] = max(x.surprise for x in st.values())
            if s.drift is not None:
                sig["drift"] = s.drift.status().surprise
            if w.latencies:
                sig["latency_p99"] = float(np.percentile(w.latencies, 99)) / 1000.0
            if w.n:
                sig["error_rate"] = w.errors / w.n
        elif s.kind == "result":
            if rate.tests:
                sig["result_rate"] = rate.surprise
            if w.latencies:
                sig["waited_p99"] = float(np.percentile(w.latencies, 99))
            if w.n:
                sig["fallback_share"] = w.fallbacks / w.n
        elif rate.tests:
            sig["request_rate"] = rate.surprise
        return sig

    def _metric(self, rec: dict) -> Out:
        self.counts["metrics"] += 1
        key = f"{rec['name']}|{rec['subject']}".encode()
        return ("out", (self.config.metrics_topic, key, self.metric_codec.encode(rec)))


# ----------------------------------------------------------------------------- pairing


class PairCore:
    """Per request id: pairs every model's quantile with the champion's and the canary's.
    In: ``(request_id, model, q, ts)``; out: ``("pair", model, reference, q_model, q_ref,
    ts, request_id)`` (the model is the subject of the alarm that gets it)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.pairer = RequestPairer(config.references, max_pending=config.pair_pending)

    def process(self, row: tuple) -> list[tuple]:
        request_id, model, q, ts = row
        return [("pair", p.model, p.reference, p.q_model, p.q_reference, ts, request_id)
                for p in self.pairer.update(request_id, model, q)]


# ----------------------------------------------------------------------------- alarm


class AlarmCore:
    """Per subject: the window's comparisons and the one combined alarm.

    In: pair rows (from :class:`PairCore`) and signal rows ``("sig", subject, start, end,
    signals)``; out: ``("out", (topic, key, value))`` alerts and gauges."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.alarms: dict[str, CombinedAlarm] = {}
        # subject -> window start -> reference -> Comparison
        self.pairs: dict[str, dict[int, dict[str, Comparison]]] = {}
        self.alert_codec = codec_for("Alert")
        self.metric_codec = codec_for("Metric")
        self.evaluated: dict[str, int] = {}
        self.counts: dict[str, int] = dict.fromkeys(("pairs", "evaluations", "alerts"), 0)

    def process(self, row: tuple) -> list[Out]:
        if row[0] == "pair":
            self._pair(row)
            return []
        _, subject, start, end, signals = row
        return self._evaluate(subject, start, end, dict(signals))

    def _pair(self, row: tuple) -> None:
        _, model, reference, q_model, q_ref, ts, request_id = row
        self.counts["pairs"] += 1
        c = self.config
        start = ts - ts % c.window_ms
        start = max(start, self.evaluated.get(model, start))  # late: into the next evaluation
        refs = self.pairs.setdefault(model, {}).setdefault(start, {})
        cmp = refs.get(reference)
        if cmp is None:
            cmp = refs[reference] = Comparison(x=c.disagree_x, per_stratum=3, max_centroids=50)
        cmp.update(Pair(request_id, model, reference, q_model, q_ref))

    def _evaluate(self, subject: str, start: int, end: int,
                  signals: dict[str, float]) -> list[Out]:
        c = self.config
        out: list[Out] = []
        self.evaluated[subject] = end
        windows = self.pairs.get(subject, {})
        merged: dict[str, list[Comparison]] = {}
        for ws in [ws for ws in windows if ws < end]:
            for ref, cmp in windows.pop(ws).items():
                merged.setdefault(ref, []).append(cmp)
        samples: list[str] = []
        for ref, cmps in sorted(merged.items()):
            n = sum(x.n for x in cmps)
            k = sum(x.n_disagree for x in cmps)
            if n >= c.min_window_n:
                signals[f"disagree_vs_{ref}"] = k / n
            out.append(self._gauge(f"disagree.{ref}", subject, start, end, k / n if n else 0.0,
                                   n))
            top = sorted((s for x in cmps for s in x.most_disagreeing(3)),
                         key=lambda s: -abs(s.q_model - s.q_reference))[:3]
            samples += [f"{s.request_id} ({s.q_model:.2f} vs {ref} {s.q_reference:.2f})"
                        for s in top]
        if not signals:
            return out
        alarm = self.alarms.get(subject)
        if alarm is None:
            alarm = self.alarms[subject] = CombinedAlarm(
                subject, alarm_hours_per_week=c.alarm_hours_per_week,
                eval_interval_ms=c.window_ms, history=c.history, min_history=c.min_history,
                component=COMPONENT, version=VERSION)
        ev = alarm.evaluate(signals, end)
        self.counts["evaluations"] += 1
        for name, value in sorted(signals.items()):
            out.append(self._gauge(f"signal.{name}", subject, start, end, value, 1))
        if ev.signals:
            out.append(self._gauge("alarm", subject, start, end, ev.score, len(ev.signals),
                                   {"threshold": f"{ev.threshold:.4g}",
                                    "calibration": ev.calibration,
                                    "alarming": str(ev.alarming).lower()}))
        if ev.alert is not None:
            alert = ev.alert
            if samples:
                alert["message"] += "; most disagreeing: " + ", ".join(samples)
            self.counts["alerts"] += 1
            out.append(("out", (c.alerts_topic, subject.encode(),
                                self.alert_codec.encode(alert))))
        return out

    def _gauge(self, name: str, subject: str, start: int, end: int, value: float, count: int,
               tags: dict[str, str] | None = None) -> Out:
        rec = envelope(COMPONENT, VERSION)
        rec.update(name=name, subject=subject, window_start=start, window_end=end,
                   tags=dict(tags or {}), kind="gauge", count=int(count), value=float(value),
                   sketch=None)
        return ("out", (self.config.metrics_topic, f"{name}|{subject}".encode(),
                        self.metric_codec.encode(rec)))


# ----------------------------------------------------------------------------- Flink


def _emit(outs: Iterable[Out]) -> Iterator[Any]:
    for kind, row in outs:
        if kind == "out":
            yield Row(*row)
        elif kind == "q":
            yield QUANTILES, row
        else:
            yield SIGNALS, ("sig", *row)


class DecodeFunction(ProcessFunction):
    def __init__(self, config: MonitorConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.decoder = EventDecoder(self.config)
        self.counts = Counts(runtime_context, "monitor", ("decoded", "dead_letters"))

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        event, dead = self.decoder.decode(value)
        if event is not None:
            self.counts.inc("decoded")
            yield event
        elif dead is not None:
            self.counts.inc("dead_letters")
            yield DEAD_LETTERS, Row(*dead)


class MonitorFunction(KeyedProcessFunction):
    """Keyed by subject; the state is the subtask's :class:`MonitorCore` (Python memory)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.core = MonitorCore(self.config)
        self.counts = Counts(runtime_context, "monitor", ("events", "windows", "metrics"))
        self.timer_at = 0

    def _count(self) -> None:
        for name in ("events", "windows", "metrics"):
            delta = self.core.counts[name] - self.counts.values[name]
            if delta:
                self.counts.inc(name, delta)

    def process_element(self, value: tuple, ctx: Any) -> Iterator[Any]:
        now = ctx.timer_service().current_processing_time()
        yield from _emit(self.core.process(value, now))
        if not self.timer_at:
            self.timer_at = now + self.config.idle_ms
            ctx.timer_service().register_processing_time_timer(self.timer_at)
        self._count()

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        self.timer_at = 0
        yield from _emit(self.core.idle(timestamp))
        self.timer_at = timestamp + self.config.idle_ms
        ctx.timer_service().register_processing_time_timer(self.timer_at)
        self._count()
        self.counts.flush()


class PairFunction(KeyedProcessFunction):
    """Keyed by request id; the pending requests are the subtask's :class:`PairCore`."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.core = PairCore(self.config)

    def process_element(self, value: tuple, ctx: Any) -> Iterator[Any]:
        yield from self.core.process(value)


class AlarmFunction(KeyedProcessFunction):
    """Keyed by subject; comparisons and alarms are the subtask's :class:`AlarmCore`."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config

    def open(self, runtime_context: Any) -> None:
        self.core = AlarmCore(self.config)
        self.counts = Counts(runtime_context, "monitor", ("evaluations", "alerts"))

    def process_element(self, value: tuple, ctx: Any) -> Iterator[Any]:
        for _, row in self.core.process(value):
            yield Row(*row)
        for name in ("evaluations", "alerts"):
            delta = self.core.counts[name] - self.counts.values[name]
            if delta:
                self.counts.inc(name, delta)


def build_monitor(source: DataStream, config: MonitorConfig) -> DataStream:
    """RAW_RECORD (scores, results, input) in; OUT_RECORD (metrics, alerts, dead letters) out."""
    events = (
        source.process(DecodeFunction(config), output_type=EVENTS)
        .uid("monitor-decode").name("decode")
    )
    monitored = (
        events.key_by(lambda e: e[1], key_type=Types.STRING())
        .process(MonitorFunction(config), output_type=OUT_RECORD)
        .uid("monitor-subjects").name("sketches, latency, signals per subject")
    )
    pairs = (
        monitored.get_side_output(QUANTILES)
        .key_by(lambda r: r[0], key_type=Types.STRING())
        .process(PairFunction(config), output_type=EVENTS)
        .uid("monitor-pairs").name("pair with champion and canary")
    )
    alarms = (
        monitored.get_side_output(SIGNALS).union(pairs)
        .key_by(lambda r: r[1], key_type=Types.STRING())
        .process(AlarmFunction(config), output_type=OUT_RECORD)
        .uid("monitor-alarms").name("combined alarm per subject")
    )
    return monitored.union(alarms, events.get_side_output(DEAD_LETTERS))


def main(argv: Sequence[str] | None = None) -> None:
    config: MonitorConfig = config_from_args(MonitorConfig, argv, "monitor")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(config.parallelism)
    topics = [config.scores_topic, config.results_topic]
    if config.input_topic:
        topics.append(config.input_topic)
    group = config.group_id or f"monitor-{config.scores_topic}"
    source = read(env, [t for t in topics if t], config, uid="monitor-source", group_id=group)
    write(build_monitor(source, config), config, uid="monitor-sink")
    env.execute(f"monitor {config.scores_topic}+{config.results_topic}")


if __name__ == "__main__":
    main()
