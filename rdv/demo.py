"""``rdv demo``: the whole system on this machine in one command.

It brings the local platform up, trains the demo models if their artifacts are missing,
creates the system topics, loads the demo customer profiles, starts the pipeline (augment,
one score job per demo model, rendezvous, decoy) unless it already runs, publishes
``models/demo-schedule.yaml``, and then drives open-loop card-transaction traffic through
:class:`rdv.client.RendezvousClient`: requests leave at their scheduled times whatever the
answers do (no waiting per request, so a slow system shows up as latency and outstanding
requests, not as a lower request rate). A live line every 2 s and a final summary show
who answered, why, and how fast.

The first seconds after the jobs start are slow (the JVMs compile hot code, the consumers
join), so a short low-rate warm-up runs first and is not counted in the summary.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from rdv.commands import (
    describe_schedule,
    installed_commands,
    live_jobs,
    rel,
    schedule_notes,
    score_jobs,
)
from rdv.settings import ROOT, Settings

if TYPE_CHECKING:
    from rdv.client import RendezvousClient
    from rdv.pipeline import Topics

SCHEDULE_FILE = ROOT / "models" / "demo-schedule.yaml"
REPORT_EVERY_S = 2.0
WARMUP = "warm-up"
MEASURED = "measured"


@dataclass
class DemoOptions:
    rate: float = 200.0
    seconds: float = 60.0
    warmup_seconds: float = 5.0
    warmup_rate: float = 50.0
    keep: bool = False
    stop: bool = False
    prefix: str = ""
    cards: int = 2000
    seed: int = 7
    timeout: float = 5.0


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    latencies: list[float] = field(default_factory=list)
    #: (who answered: model id, or "(default)" / "(none)"; reason) -> count
    answers: Counter = field(default_factory=Counter)

    def add(self, who: str, reason: str, latency_ms: float) -> None:
        self.answered += 1
        self.latencies.append(latency_ms)
        self.answers[(who, reason)] += 1

    def share(self, reasons: tuple[str, ...]) -> float:
        n = sum(c for (_, r), c in self.answers.items() if r in reasons)
        return 100.0 * n / self.answered if self.answered else 0.0

    def by_who(self) -> list[tuple[str, float]]:
        who: Counter = Counter()
        for (w, _), c in self.answers.items():
            who[w] += c
        return [(w, 100.0 * c / self.answered) for w, c in who.most_common()]


class Stats:
    """Counts per phase and per 2-s window; results arrive on the client's listener thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phases: dict[str, Tally] = {WARMUP: Tally(), MEASURED: Tally()}
        self.window = Tally()
        self.pending: dict[str, str] = {}  # request id -> phase

    def on_send(self, request_id: str, phase: str) -> None:
        with self.lock:
            self.pending[request_id] = phase
            self.phases[phase].sent += 1
            self.window.sent += 1

    def on_result(self, request_id: str, result: dict, latency_ms: float) -> None:
        model = result.get("model_id")
        reason = result["reason"]
        who = model or f"({reason})"
        with self.lock:
            phase = self.pending.pop(request_id, None)
            if phase is None:
                return
            self.phases[phase].add(who, reason, latency_ms)
            self.window.add(who, reason, latency_ms)

    def take_window(self) -> tuple[Tally, int]:
        with self.lock:
            w, self.window = self.window, Tally()
            return w, len(self.pending)

    def outstanding(self, phase: str | None = None) -> int:
        with self.lock:
            return sum(1 for p in self.pending.values() if phase is None or p == phase)


# --------------------------------------------------------------------------- traffic


class Driver:
    """Open-loop traffic: request i leaves at start + i / rate, answered or not."""

    HEADER = (f"{'time':>6}  {'phase':<8} {'sent/s':>6} {'answ/s':>6} {'outst':>5} "
              f"{'p50 ms':>6} {'p99 ms':>6} {'fallbk':>6} {'dflt/none':>9}  answered by")

    def __init__(self, client: RendezvousClient, stats: Stats,
                 requests: Iterator[dict]) -> None:
        self.client = client
        self.stats = stats
        self.requests = requests
        self.t_start = time.monotonic()
        self.last_report = self.t_start
        self.phase = WARMUP
        self.max_lag_s = 0.0

    def _on_done(self, request_id: str, sent_ms: int, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        received = self.client.received_at(request_id) or time.time_ns() // 1_000_000
        self.stats.on_result(request_id, fut.result(), received - sent_ms)

    def maybe_report(self, now: float, force: bool = False) -> None:
        span = now - self.last_report
        if span < REPORT_EVERY_S and not force:
            return
        self.last_report = now
        w, outstanding = self.stats.take_window()
        lat = sorted(w.latencies)
        who = ", ".join(f"{m} {p:.0f}%" for m, p in w.by_who()) or "-"
        span = max(span, 1e-3)
        print(f"{now - self.t_start:5.0f}s  {self.phase:<8} {w.sent / span:6.0f} "
              f"{w.answered / span:6.0f} {outstanding:5d} {percentile(lat, 50):6.0f} "
              f"{percentile(lat, 99):6.0f} {w.share(('fallback',)):5.1f}% "
              f"{w.share(('default', 'none')):8.1f}%  {who}", flush=True)

    def run_phase(self, phase: str, rate: float, seconds: float) -> None:
        self.phase = phase
        n = max(1, round(rate * seconds))
        t0 = time.monotonic()
        for i in range(n):
            due = t0 + i / rate
            while True:
                now = time.monotonic()
                self.maybe_report(now)
                if now >= due:
                    break
                time.sleep(max(0.0, min(due - now, self.last_report + REPORT_EVERY_S - now)))
            self.max_lag_s = max(self.max_lag_s, now - due)
            req = next(self.requests)
            # the schedule's clock starts at the request timestamp: stamp it as it leaves
            req["timestamp"] = time.time_ns() // 1_000_000
            rid = req["request_id"]
            self.stats.on_send(rid, phase)
            fut = self.client.send(req)
            fut.add_done_callback(partial(self._on_done, rid, req["timestamp"]))

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for outstanding answers, still reporting."""
        self.client.flush()
        deadline = time.monotonic() + timeout
        while self.stats.outstanding() and time.monotonic() < deadline:
            time.sleep(0.05)
            self.maybe_report(time.monotonic())
        self.maybe_report(time.monotonic(), force=True)


def demo_requests(opts: DemoOptions, cards: list[dict], n: int) -> Iterator[dict]:
    from udfs.demo.generator import transactions

    run = uuid.uuid4().hex[:6]  # fresh request ids: a rerun never meets old tombstones
    for req, _label in transactions(n, opts.seed, profiles=cards, id_prefix=f"demo-{run}"):
        yield req


# --------------------------------------------------------------------------- set-up


def missing_artifacts() -> list[str]:
    from rdv.pipeline import DEMO_MODELS
    from udfs.model_package import load_manifest

    out = []
    for m in DEMO_MODELS:
        manifest = load_manifest(ROOT / "models" / m)
        if not all(manifest.artifact_path(a).is_file() for a in manifest.artifacts):
            out.append(m)
    return out


def running_pipeline(topics: Topics) -> dict[str, str]:
    """Pipeline job keys (as in Pipeline.job_specs) that already run on these topics."""
    names = {
        f"augment {topics.raw}->{topics.input}": "augment",
        f"rendezvous {topics.input}+{topics.scores}": "rendezvous",
        f"decoy {topics.input}": "decoy",
        f"monitor {topics.scores}+{topics.results}": "monitor",
    }
    found = {names[j["name"]]: j["id"] for j in live_jobs() if j["name"] in names}
    for sj in score_jobs():
        if sj.input_topic == topics.input:
            found[f"score:{sj.model}"] = sj.job_id
    return found


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run_demo(opts: DemoOptions) -> int:
    from rdv.client import RendezvousClient
    from rdv.pipeline import Pipeline, Topics
    from rdv.platform import Platform
    from udfs.demo import generator
    from udfs.schedule import parse_schedule

    settings = Settings.from_env()
    topics = Topics(prefix=opts.prefix)

    step("platform: Kafka + Flink (rdv up)")
    platform = Platform(settings)
    platform.up()
    for s in platform.status():
        print(f"    {s.name:<6} {'up' if s.running else 'DOWN':<5} {s.address:<24} {s.detail}")

    missing = missing_artifacts()
    if missing:
        step(f"training {', '.join(missing)} (artifacts missing; rdv train)")
        from udfs.demo.train import train_all

        train_all(ROOT / "models", models=tuple(missing), log=lambda m: print(f"    {m}"))
    else:
        print("==> models: trained artifacts present in models/ (retrain: rdv train)")

    step(f"topics: {topics.raw} -> {topics.input} -> {topics.scores} -> {topics.results} "
         f"(+ {topics.profiles}, {topics.control}, {topics.deadletter})")
    topics.create(settings=settings)

    pipe = Pipeline(topics, settings=settings, monitor=True)
    cards = generator.profiles(opts.cards, opts.seed)
    n_prof = pipe.load_profiles(cards)
    print(f"    loaded {n_prof} customer profiles onto {topics.profiles} (external state)")

    running = running_pipeline(topics)
    wanted = list(pipe.job_specs())
    todo = [k for k in wanted if k not in running]
    started: dict[str, str] = {}
    if todo:
        step(f"pipeline: submitting {len(todo)} Flink job(s): {', '.join(todo)} "
             "(two at a time, ~10 s each on this machine)")
        t0 = time.monotonic()
        started = pipe.start(only=todo)
        print(f"    running after {time.monotonic() - t0:.0f} s")
    else:
        print("==> pipeline: already running (augment, rendezvous, decoy, monitor, "
              f"{len(wanted) - 4} score jobs)")
    if running and todo:
        print(f"    already running: {', '.join(sorted(running))}")

    step(f"schedule: {rel(SCHEDULE_FILE)} -> {topics.control}")
    pipe.send_schedule(SCHEDULE_FILE)
    sched = parse_schedule(SCHEDULE_FILE.read_text())
    for line in describe_schedule(sched) + schedule_notes(sched):
        print(f"    {line}")

    stats = Stats()
    warm_rate = min(opts.warmup_rate, opts.rate)
    n_total = (round(warm_rate * opts.warmup_seconds) if opts.warmup_seconds > 0 else 0) \
        + round(opts.rate * opts.seconds) + 1
    interrupted = False
    with RendezvousClient(raw_topic=topics.raw, return_address=topics.results,
                          settings=settings, component="rdv-demo") as client:
        driver = Driver(client, stats, demo_requests(opts, cards, n_total))
        try:
            if opts.warmup_seconds > 0:
                step(f"warm-up: {opts.warmup_seconds:g} s at {warm_rate:g} req/s while the JVMs "
                     "compile hot code (not counted in the summary)")
                print(Driver.HEADER, flush=True)
                driver.run_phase(WARMUP, warm_rate, opts.warmup_seconds)
            step(f"traffic: {opts.seconds:g} s at {opts.rate:g} req/s, open loop "
                 f"(to {topics.raw}, answers on {topics.results})")
            print(Driver.HEADER, flush=True)
            driver.run_phase(MEASURED, opts.rate, opts.seconds)
        except KeyboardInterrupt:
            interrupted = True
            print("\n    interrupted: stopping the traffic", flush=True)
        driver.drain(0.5 if interrupted else opts.timeout)
        unanswered = stats.outstanding(MEASURED)

    print_summary(opts, stats, warm_rate, unanswered, driver.max_lag_s)
    print_next_steps(opts, topics, started)
    if opts.stop and started:
        step(f"stopping the {len(started)} job(s) this demo started (--stop)")
        pipe.stop()
    return 130 if interrupted else 0


# --------------------------------------------------------------------------- reporting


def print_summary(opts: DemoOptions, stats: Stats, warm_rate: float, unanswered: int,
                  max_lag_s: float) -> None:
    t = stats.phases[MEASURED]
    lat = sorted(t.latencies)
    warm = (f", after a {opts.warmup_seconds:g} s warm-up at {warm_rate:g} req/s "
            "(not counted)" if opts.warmup_seconds > 0 else "")
    print()
    print(f"== summary: {opts.seconds:g} s at {opts.rate:g} req/s{warm}")
    print(f"   sent                  {t.sent:7d}   ({t.sent / max(opts.seconds, 1e-9):.1f} req/s)")
    pct = 100.0 * t.answered / t.sent if t.sent else 0.0
    print(f"   answered              {t.answered:7d}   ({pct:.2f} %)")
    print(f"   {f'not answered in {opts.timeout:g} s':<21} {unanswered:7d}")
    if lat:
        print("   latency (client send -> result received, ms)")
        print(f"       p50 {percentile(lat, 50):.0f}   p90 {percentile(lat, 90):.0f}   "
              f"p99 {percentile(lat, 99):.0f}   p99.9 {percentile(lat, 99.9):.0f}   "
              f"max {lat[-1]:.0f}")
    print(f"   fallback rate {t.share(('fallback',)):.1f} %   "
          f"default/none rate {t.share(('default', 'none')):.1f} %")
    if t.answers:
        print(f"   {'answered by':<18} {'reason':<10} {'count':>7} {'share':>8}")
        for (who, reason), c in sorted(t.answers.items(), key=lambda kv: -kv[1]):
            print(f"   {who:<18} {reason:<10} {c:7d} {100.0 * c / t.answered:7.1f} %")
    if max_lag_s > 0.1:
        print(f"   note: the sender fell behind its schedule by up to {max_lag_s * 1000:.0f} ms "
              "(this machine is saturated; latencies include that queueing)")


def print_next_steps(opts: DemoOptions, topics: Topics, started: dict[str, str]) -> None:
    have = installed_commands()
    p = f" --prefix {opts.prefix}" if opts.prefix else ""
    tips = [
        ("status", "rdv status", "the platform, its addresses and the running job count"),
        ("job", "rdv job list", "the pipeline's jobs: augment, one per model, rendezvous, decoy"),
        ("model", f"rdv model list{p}", "which models score the live input"),
        ("schedule", f"rdv schedule show{p}", "the live schedule"),
        ("send", f"rdv send{p} --entity-key card-000042 --amount 2500",
         "one request, and who answered it and why"),
        ("schedule", f"rdv schedule set {rel(SCHEDULE_FILE)}{p}",
         "change the policy at run time (edit a copy: prefer fraud_logreg, shorter deadline)"),
        ("sql", "rdv sql \"SELECT model_id, reason, COUNT(*) FROM results GROUP BY model_id, "
         "reason\"", "query the streams"),
        ("replay", f"rdv replay {rel(Settings.from_env().home / 'archive')} --source-topic "
         f"{topics.input} --topic {topics.input}-dev --create",
         "the decoy's archive, for a model in development"),
        ("demo", "rdv demo --rate 100 --seconds 60", "more traffic"),
    ]
    print()
    print("== what to try next")
    for cmd, line, why in tips:
        if cmd in have:
            print(f"   # {why}\n   {line}")
    if opts.stop and started:
        return
    if opts.keep:
        print("   the pipeline keeps running (--keep); stop everything with: rdv down")
    else:
        print("   the pipeline is still running; stop everything with: rdv down "
              "(or one job: rdv job cancel JOB_ID)")
