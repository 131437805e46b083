"""Side-by-side benchmark of the rendezvous system against its baselines, in one run.

    .venv/bin/python -m bench                  # full: ~8-10 min on the 2-core machine
    .venv/bin/python -m bench --quick          # smoke test: 2 rates x 10 s, no scale-out
    .venv/bin/python -m bench --rates 100,300,1000 --seconds 15 --arrivals poisson

Systems, each measured open loop at every offered rate (``--rates``), after a warm-up and
with backlogs drained between rates:

- **B0**: bare Kafka round trip (produce to a topic, consume it back);
- **B1**: Kafka -> the pass-through PyFlink job (``jobs/passthrough.py``, the system's job
  configuration) -> Kafka;
- **R**: the full system (augment, 4 score jobs, rendezvous, decoy) with the demo models
  and a 50 ms schedule (fraud_gbm preferred until 20 ms, then fraud_logreg); then deadline
  adherence with the preferred model delayed 80 ms by fault injection (low rate: the delay
  blocks that job), and with both answering models delayed (the deadline decides);
- **R x2** (scale-out): the full system with parallelism 2 on 2-partition topics.

Everything runs on its own topics (prefix ``bench-<random>-``); every job started here is
cancelled and every topic made here deleted at the end, also on failure or Ctrl-C.
Results: ``bench/results/bench-<timestamp>.json``, ``latest.json`` (same document),
``latency.png``, and ``latest.md`` (the tables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load, profile, report, sysinfo
from bench.plot import plot
from rdv import jobctl
from rdv.kafka_io import create_topics
from rdv.pipeline import DEMO_MODELS, Pipeline, Topics
from rdv.settings import ROOT, Settings
from udfs.demo import generator

RESULTS = ROOT / "bench" / "results"
PREFERRED = "fraud_gbm"
SCHEDULE = {
    "id": "bench",
    "stages": [{"model": "fraud_gbm", "wait_ms": 20}, {"model": "fraud_logreg", "wait_ms": 40}],
    "deadline_ms": 50,
    "default": {"outputs": {"numbers": {"fraud_probability": 0.0},
                            "labels": {"decision": "review"}}},
    "ignore": ["fraud_canary", "fraud_rules"],
}
DELAY_PREFERRED = [{"target": "fraud_gbm", "kind": "delay", "delay_ms": 80}]
DELAY_BOTH = [*DELAY_PREFERRED, {"target": "fraud_logreg", "kind": "delay", "delay_ms": 80}]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rates_arg(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated rates, got {text!r}") from None
    if not out or any(r <= 0 for r in out):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return sorted(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench",
                                 description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=rates_arg, default=[100, 200, 300, 500, 1000],
                    help="offered rates, requests/s (default 100,200,300,500,1000)")
    ap.add_argument("--seconds", type=float, default=10, help="load per rate (default 10)")
    ap.add_argument("--warmup", type=float, default=30,
                    help="warm-up per system, s (default 30: the JVMs need ~25 s to compile "
                    "the hot paths of the full system)")
    ap.add_argument("--systems", default="B0,B1,R", help="subset of B0,B1,R")
    ap.add_argument("--scale-rates", type=rates_arg, default=None,
                    help="rates for R with parallelism 2 (default: --rates)")
    ap.add_argument("--no-scale-out", action="store_true", help="skip R with parallelism 2")
    ap.add_argument("--fault-rate", type=float, default=5, help="rate of the deadline runs")
    ap.add_argument("--fault-seconds", type=float, default=12)
    ap.add_argument("--arrivals", choices=load.ARRIVALS, default="constant")
    ap.add_argument("--deadline-ms", type=float, default=50)
    ap.add_argument("--drain-timeout", type=float, default=60,
                    help="how long to wait for the answers of a run after its last send")
    ap.add_argument("--ceiling-rates", type=rates_arg, default=[2000, 5000, 10000, 20000])
    ap.add_argument("--ceiling-seconds", type=float, default=3)
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--profile-rate", type=float, default=None,
                    help="py-spy the TaskManagers during R (parallelism 1) at this rate "
                         "(default: the highest rate <= 500)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: rates 200,500, 10 s each, short warm-up, no scale-out")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="leave jobs and topics (debugging)")
    ap.add_argument("--nice", type=int, default=-5,
                    help="the generator's nice value (default -5 when allowed: on a shared "
                         "2-core machine it must not queue behind the system it measures)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.warmup = [200.0, 500.0], 10.0, 4.0
        args.no_scale_out, args.fault_seconds = True, 8.0
        args.ceiling_rates, args.ceiling_seconds = [2000.0, 5000.0], 2.0
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not set(args.systems) <= {"B0", "B1", "R"}:
        ap.error(f"--systems: unknown {set(args.systems) - {'B0', 'B1', 'R'}}")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.s = settings
        self.bootstrap = settings.kafka_bootstrap
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        self.topics: list[str] = []
        self.jobs: dict[str, str] = {}
        self.pipelines: list[Pipeline] = []
        self.runs: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {"notes": []}
        self.profiles = generator.profiles(3000, seed=11)
        self.records = [r for r, _ in generator.transactions(5000, seed=5,
                                                             profiles=self.profiles)]
        self.producer = load.kafka_producer(self.bootstrap)
        self.tmp = Path(tempfile.mkdtemp(prefix="rdv-bench-"))

    # ------------------------------------------------------------------ helpers
    def topic(self, name: str, partitions: int = 2) -> str:
        t = self.prefix + name
        create_topics({t: partitions}, self.s)
        self.topics.append(t)
        return t

    def load(self, send: str, reply: str, codec: str, rate: float, seconds: float,
             **kw: Any) -> tuple[dict[str, Any], list[load.Answer | None]]:
        return load.run_load(
            bootstrap=self.bootstrap, send_topic=send, reply_topic=reply, reply_codec=codec,
            records=self.records, rate=rate, seconds=seconds, deadline_ms=self.args.deadline_ms,
            arrivals=self.args.arrivals, seed=int(rate), producer=self.producer,
            drain_timeout=kw.pop("drain_timeout", self.args.drain_timeout), **kw)

    def measure(self, system: str, parallelism: int, send: str, reply: str, codec: str,
                rates: Sequence[float], between: Callable[[], None] | None = None) -> None:
        """Every rate in turn; stops after a run that answered < half the offered rate
        (hopelessly saturated: higher rates would only queue)."""
        name = system if parallelism == 1 else f"{system}x{parallelism}"
        for rate in rates:
            meter = sysinfo.CpuMeter(threads=system == "R")
            meter.start()
            stats, answers = self.load(send, reply, codec, rate, self.args.seconds,
                                       keep_answers=system == "R")
            cpu = meter.stop()
            extra: dict[str, Any] = {"cpu": cpu, "arrivals": self.args.arrivals,
                                     "seconds": self.args.seconds}
            run = report.run_entry(system, parallelism, stats, answers,
                                   PREFERRED if system == "R" else None,
                                   self.args.deadline_ms, **extra)
            self.runs.append(run)
            log(f"{name:>5} @ {rate:>5.0f}/s: achieved {run['achieved_rps']:>6.0f}/s  "
                f"p50 {run['p50_ms']:6.1f}  p99 {run['p99_ms']:7.1f}  "
                f"p99.9 {run['p999_ms']:7.1f}  max {run['max_ms']:7.1f} ms  "
                f"lost {run['lost']} dup {run['duplicated']}  "
                + (f"preferred {run['preferred_fraction']:.1%}  " if system == "R" else "")
                + f"late {run['late_fraction']:.1%}  cpu(cores) "
                + " ".join(f"{k}={v:.2f}" for k, v in cpu["cores"].items()))
            if between is not None:
                between()
            if run["achieved_rps"] < 0.5 * rate:
                skipped = [r for r in rates if r > rate]
                if skipped:
                    note = f"{name}: saturated at {rate:.0f}/s; skipped {skipped}"
                    self.extra["notes"].append(note)
                    log(note)
                break

    # ------------------------------------------------------------------ systems
    def ceiling(self) -> None:
        log("generator ceiling (B0, bare topic)")
        t = self.topic("ceiling")
        self.extra["generator_ceiling"] = load.measure_ceiling(
            self.bootstrap, t, self.records, self.args.ceiling_rates, self.args.ceiling_seconds)
        log(f"generator ceiling: {self.extra['generator_ceiling']['ceiling_rps']:.0f}/s")

    def b0(self) -> None:
        t = self.topic("b0")
        log("B0: warm-up")
        self.load(t, t, "Request", 200, self.args.warmup)
        self.measure("B0", 1, t, t, "Request", self.args.rates)

    def b1(self) -> None:
        src, sink, dl = self.topic("b1-in"), self.topic("b1-out"), self.topic("b1-dl", 1)
        log("B1: submitting the passthrough job")
        job = jobctl.submit("passthrough", [
            "--source-topic", src, "--sink-topic", sink, "--group-id", f"{self.prefix}b1",
            "--bootstrap", self.bootstrap, "--deadletter-topic", dl, "--parallelism", "1",
        ], settings=self.s)
        self.jobs["B1 passthrough"] = job
        try:
            log("B1: warm-up")
            self.load(src, sink, "Request", 200, self.args.warmup)
            self.measure("B1", 1, src, sink, "Request", self.args.rates)
        finally:
            self.cancel("B1 passthrough")

    def pipeline(self, parallelism: int) -> Pipeline:
        topics = Topics(prefix=f"{self.prefix}r{parallelism}-")
        topics.create(partitions=2, settings=self.s)
        self.topics += [topics.raw, topics.input, topics.scores, topics.results,
                        topics.profiles, topics.control, topics.deadletter]
        p = Pipeline(topics, archive_dir=self.tmp / f"archive-{parallelism}",
                     allow_faults=parallelism == 1, parallelism=parallelism, settings=self.s)
        self.pipelines.append(p)
        p.load_profiles(self.profiles)
        log(f"R x{parallelism}: submitting {len(p.job_specs())} jobs")
        t0 = time.monotonic()
        p.start()
        log(f"R x{parallelism}: jobs running after {time.monotonic() - t0:.0f} s")
        p.send_schedule(SCHEDULE)
        return p

    def drain(self, p: Pipeline, timeout: float = 120) -> None:
        """No backlog: every model scored every input, and a probe is answered by a model."""
        models = sum(1 for k in p.jobs if k.startswith("score:"))
        deadline = time.monotonic() + timeout
        while load.topic_end(self.bootstrap, p.topics.scores) < models * load.topic_end(
                self.bootstrap, p.topics.input):
            if time.monotonic() > deadline:
                self.extra["notes"].append("drain: model jobs did not catch up in time")
                return
            time.sleep(0.3)
        while time.monotonic() < deadline:
            _, answers = self.load(p.topics.raw, p.topics.results, "Result", 5, 0.2,
                                   keep_answers=True, drain_timeout=10, grace=0)
            if answers and all(a is not None and a.model_id is not None for a in answers):
                return
            time.sleep(0.3)

    def r(self, parallelism: int, rates: Sequence[float]) -> None:
        p = self.pipeline(parallelism)
        t = p.topics
        log(f"R x{parallelism}: warm-up")
        self.load(t.raw, t.results, "Result", 80, self.args.warmup, drain_timeout=90)
        self.drain(p)
        self.measure("R", parallelism, t.raw, t.results, "Result", rates,
                     between=lambda: self.drain(p))
        if parallelism == 1:
            if not self.args.no_profile:
                self.profile_run(p)
            self.deadline_runs(p)
        p.stop()

    def deadline_runs(self, p: Pipeline) -> None:
        t = p.topics
        out: dict[str, Any] = {"deadline_ms": self.args.deadline_ms}
        for name, faults in (("preferred_delayed", DELAY_PREFERRED),
                             ("both_delayed", DELAY_BOTH)):
            log(f"deadline adherence: {name} at {self.args.fault_rate:.0f}/s")
            stats, answers = self.load(t.raw, t.results, "Result", self.args.fault_rate,
                                       self.args.fault_seconds, keep_answers=True,
                                       diagnostics={"faults": faults})
            run = report.run_entry("R", 1, stats, answers, PREFERRED, self.args.deadline_ms,
                                   faults=faults)
            run["overrun_ms"] = report.overrun(answers, self.args.deadline_ms)
            out[name] = run
            o = run["overrun_ms"]
            log(f"  answered {run['received']}/{run['sent']}: reasons {run.get('reasons')}; "
                f"answer - deadline p50 {o['p50']} p99 {o['p99']} max {o['max']} ms; "
                f"client p99 {run['p99_ms']:.1f} ms")
            self.drain(p)
        self.extra["deadline_adherence"] = out

    def profile_run(self, p: Pipeline) -> None:
        """A separate run (not in the table: py-spy costs a little CPU) with both
        TaskManagers' Python sampled, plus per-thread CPU of their JVMs."""
        rate, seconds = self.profile_rate, max(4.0, self.args.seconds)
        dur = int(seconds) - 2
        log(f"profile: R at {rate:.0f}/s with py-spy on the TaskManagers for {dur} s")
        procs = {k: v for k, v in sysinfo.find_processes().items()
                 if k.startswith("taskmanager")}
        spies = {role: (profile.start(pid, dur, self.tmp / f"{role}.folded"),
                        self.tmp / f"{role}.folded") for role, pid in procs.items()}
        meter = sysinfo.CpuMeter(threads=True)
        meter.start()
        stats, _ = self.load(p.topics.raw, p.topics.results, "Result", rate, seconds)
        out: dict[str, Any] = {"offered_rps": rate, "p50_ms": stats["p50_ms"],
                               "p99_ms": stats["p99_ms"], "cpu": meter.stop(),
                               "py_spy_seconds": dur, "py_spy_rate_hz": 100}
        for role, (proc, path) in spies.items():
            try:
                proc.wait(timeout=30)
                summ = profile.summarize(path.read_text() if path.exists() else "")
            except Exception as e:  # noqa: BLE001 - a profile is a bonus, not the run
                out[role] = {"error": str(e)}
                continue
            summ["python_busy_threads"] = round(summ["samples"] / (100 * dur), 2)
            out[role] = summ
            if path.exists():
                shutil.copy(path, self.args.out / f"profile-{role}.folded")
        self.extra["profile"] = out
        for role in procs:
            top = out.get(role, {}).get("self", [])[:6]
            log(f"  {role}: python busy {out.get(role, {}).get('python_busy_threads')} "
                f"threads; top self: {top}")
        self.drain(p)

    @property
    def profile_rate(self) -> float:
        if self.args.profile_rate is not None:
            return float(self.args.profile_rate)
        low = [r for r in self.args.rates if r <= 500]
        return float(max(low) if low else min(self.args.rates))

    # ------------------------------------------------------------------ cleanup
    def cancel(self, name: str) -> None:
        job = self.jobs.pop(name, None)
        if job is not None:
            try:
                jobctl.cancel(job, settings=self.s)
            except Exception as e:  # noqa: BLE001 - cancel the others too
                log(f"cancelling {name} ({job}): {e}")

    def cleanup(self) -> None:
        for name in list(self.jobs):
            self.cancel(name)
        for p in self.pipelines:
            p.stop()
        self.producer.flush(10)
        if self.topics:
            load.delete_topics(self.bootstrap, self.topics)
        shutil.rmtree(self.tmp, ignore_errors=True)


def prioritize(nice: int) -> int:
    """Set this process's nice value before any thread starts (threads inherit it)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def free_slots(s: Settings) -> int:
    info = jobctl._rest("GET", "/overview", settings=s)
    return int(info.get("slots-available", 0))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prioritize(args.nice)
    s = Settings.from_env()
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    bench = Bench(args, s)
    machine = sysinfo.machine(s)
    log(f"bench {bench.prefix}*: rates {args.rates} x {args.seconds:.0f} s, "
        f"systems {args.systems}, {machine['nproc']} cores, "
        f"load {machine['load_average_at_start']}")
    others = [j for j in jobctl.list_jobs(s) if j["state"] == "RUNNING"]
    if others:
        note = f"{len(others)} other jobs were running on the cluster at the start"
        bench.extra["notes"].append(note)
        log("warning: " + note + " (results will be noisier)")
    failed: str | None = None
    try:
        if not args.no_ceiling:
            bench.ceiling()
        if "B0" in args.systems:
            bench.b0()
        if "B1" in args.systems:
            bench.b1()
        if "R" in args.systems:
            bench.r(1, args.rates)
            if not args.no_scale_out:
                need = 2 * (len(DEMO_MODELS) + 3)
                if free_slots(s) >= need:
                    bench.r(2, args.scale_rates or args.rates)
                else:
                    note = f"scale-out skipped: fewer than {need} free slots"
                    bench.extra["notes"].append(note)
                    log(note)
    except KeyboardInterrupt:
        failed = "interrupted"
        log("interrupted: cleaning up and writing what was measured")
    except Exception as e:
        failed = f"{type(e).__name__}: {e}"
        log(f"failed: {failed}")
        raise
    finally:
        if not args.keep:
            bench.cleanup()
        write(bench, args, machine, started, time.monotonic() - t0, failed)
    return 1 if failed else 0


def write(bench: Bench, args: argparse.Namespace, machine: Mapping[str, Any],
          started: datetime, duration: float, failed: str | None) -> None:
    deadline = bench.extra.get("deadline_adherence", {})
    overrun_p99 = deadline.get("preferred_delayed", {}).get("overrun_ms", {}).get("p99")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(generator_nice=os.getpriority(os.PRIO_PROCESS, 0), schedule=SCHEDULE,
                  models=list(DEMO_MODELS), preferred_model=PREFERRED,
                  prefix=bench.prefix, command=" ".join(["python -m bench", *sys.argv[1:]]))
    doc = report.summary(
        bench.runs, args.deadline_ms, overrun_p99,
        started_at=started.isoformat(timespec="seconds"), duration_s=round(duration, 1),
        failed=failed, machine=machine, config=config, **bench.extra)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    text = json.dumps(doc, indent=1, allow_nan=False)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    if doc["runs"]:
        plot(doc, args.out / "latency.png", args.deadline_ms)
    md = markdown(doc)
    (args.out / "latest.md").write_text(md)
    print("\n" + md)
    log(f"wrote {args.out / f'bench-{stamp}.json'}, latest.json, latency.png, latest.md "
        f"({duration / 60:.1f} min)")


def markdown(doc: Mapping[str, Any]) -> str:
    def fmt(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:g}"

    lines = [f"Command: `{doc['config']['command']}` ({doc['started_at']}, "
             f"{doc['duration_s'] / 60:.1f} min)", "", report.table(doc["runs"]), ""]
    if doc["ratios"]:
        lines += [report.ratio_table(doc["ratios"]), ""]
    ms = doc["max_sustained_rps"]
    lines.append("Max sustained rate with p99 < deadline: "
                 + ", ".join(f"{k} {fmt(v)}/s" for k, v in ms.items())
                 + f" (by parallelism: {doc['max_sustained_rps_by_parallelism']})")
    lines.append(f"Deadline overrun p99 (preferred model delayed): "
                 f"{fmt(doc['deadline_overrun_p99_ms'])} ms")
    da = doc.get("deadline_adherence") or {}
    for name in ("preferred_delayed", "both_delayed"):
        if name in da:
            o = da[name]["overrun_ms"]
            lines.append(f"- {name}: answer − deadline p50 {fmt(o['p50'])}, p99 {fmt(o['p99'])},"
                         f" max {fmt(o['max'])} ms; reasons {da[name].get('reasons')}")
    gc = doc.get("generator_ceiling")
    if gc:
        lines.append(f"Generator ceiling (B0, bare topic): {fmt(gc['ceiling_rps'])}/s")
    for n in doc.get("notes", []):
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
