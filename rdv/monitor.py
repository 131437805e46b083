"""``rdv monitor``: start the monitor job for a pipeline's topics, and print the current state.

The state is read back from what the monitor job (``jobs/monitor.py``) writes:

- the latest ``Alert`` records of ``<prefix>alerts`` (subject, combined score > threshold, the
  signals with the largest contributions);
- the latest ``alarm`` gauge per subject (combined score, threshold, on/off);
- per model and score number, the quantiles of the ``tdigest`` windows of the last
  ``--seconds`` (of event time, counted back from the newest window), merged over every tag
  combination by a :class:`udfs.meta.sketches.SketchStore` kept on disk
  (``<RDV_HOME>/monitor/sketches-<prefix>.sqlite``): each run adds the windows it has not seen
  yet (it remembers the offsets it consumed), so any longer range can be queried later too;
- per subject and stage, latency p50 / p99 of the ``hdr`` windows of the same range.

Wiring (done by the lead): ``rdv.monitor.register(sub)`` in ``rdv/cli.py``'s
``build_parser()``; :func:`start_monitor` (or :func:`monitor_args` for ``Pipeline.job_specs``)
starts the job for a :class:`rdv.pipeline.Topics`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdv.pipeline import Topics
from rdv.settings import Settings
from udfs.codec import codec_for
from udfs.meta.sketches import SketchStore, quantiles

QS = (0.5, 0.9, 0.99, 0.999)


def metrics_topic(topics: Topics) -> str:
    return topics.name("metrics")


def alerts_topic(topics: Topics) -> str:
    return topics.name("alerts")


def monitor_args(
    topics: Topics, settings: Settings | None = None, *, champion: str = "fraud_gbm",
    canary: str = "fraud_canary", with_input: bool = True, start_from: str = "latest",
    extra: Sequence[str] = (),
) -> list[str]:
    """The arguments of ``jobs/monitor.py`` for a pipeline's topics (for ``job_specs``:
    ``specs["monitor"] = ("monitor", monitor_args(t))``)."""
    s = settings or Settings.from_env()
    args = [
        "--bootstrap", s.kafka_bootstrap,
        "--scores-topic", topics.scores, "--results-topic", topics.results,
        "--metrics-topic", metrics_topic(topics), "--alerts-topic", alerts_topic(topics),
        "--deadletter-topic", topics.deadletter,
        "--champion", champion, "--canary", canary,
        "--group-id", f"{topics.prefix}monitor", "--start-from", start_from,
    ]
    if with_input:
        args += ["--input-topic", topics.input]
    return [*args, *extra]


def create_monitor_topics(
    topics: Topics, settings: Settings | None = None, partitions: int = 1
) -> None:
    from rdv.kafka_io import create_topics

    create_topics({metrics_topic(topics): partitions, alerts_topic(topics): partitions},
                  settings)


def start_monitor(topics: Topics, settings: Settings | None = None, **kw: Any) -> str:
    """Create ``<prefix>metrics`` / ``<prefix>alerts`` and submit the monitor job reading the
    pipeline's scores, results and input; returns the Flink job id (cancel it with
    ``rdv.jobctl.cancel``). Keyword arguments go to :func:`monitor_args`."""
    from rdv import jobctl

    create_monitor_topics(topics, settings)
    return jobctl.submit("monitor", monitor_args(topics, settings, **kw), settings=settings)


# --------------------------------------------------------------------------- reading back


@dataclass
class Snapshot:
    alerts: list[dict] = field(default_factory=list)  # oldest first
    alarms: dict[str, dict] = field(default_factory=dict)  # subject -> latest alarm gauge
    #: (subject, number) -> (n, [p50, p90, p99, p99.9])
    score_quantiles: dict[tuple[str, str], tuple[int, list[float]]] = field(default_factory=dict)
    #: (subject, stage) -> (n, p50 ms, p99 ms)
    latency: dict[tuple[str, str], tuple[int, float, float]] = field(default_factory=dict)
    range_ms: tuple[int, int] | None = None
    read: int = 0


_CONSUMED = """CREATE TABLE IF NOT EXISTS consumed (
    topic TEXT, partition INTEGER, next_offset INTEGER, PRIMARY KEY (topic, partition))"""


def store_path(prefix: str, settings: Settings | None = None) -> Path:
    s = settings or Settings.from_env()
    return Path(s.home) / "monitor" / f"sketches-{prefix or 'system'}.sqlite"


def _read(topic: str, since_wall_ms: int, resume: dict[int, int], s: Settings,
          timeout: float = 20.0) -> list[Any]:
    """Records of ``topic`` from ``since_wall_ms`` (or the resume offset, if later) to its
    current end."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                      fetch_max_wait_ms=50)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        ends = c.end_offsets(tps)
        by_time = c.offsets_for_times({tp: since_wall_ms for tp in tps})
        c.assign(tps)
        todo = {}
        for tp in tps:
            start = by_time[tp].offset if by_time.get(tp) is not None else ends[tp]
            start = max(start, resume.get(tp.partition, 0))
            if start < ends[tp]:
                c.seek(tp, start)
                todo[tp] = ends[tp]
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=200).items():
                for r in recs:
                    if tp in todo and r.offset < todo[tp]:
                        got.append(r)
                if tp in todo and c.position(tp) >= todo[tp]:
                    del todo[tp]
        return got
    finally:
        c.close()


def collect(
    prefix: str = "", seconds: float = 300, settings: Settings | None = None,
    path: Path | str | None = None, max_alerts: int = 10,
) -> Snapshot:
    """Read ``<prefix>metrics`` and ``<prefix>alerts`` back into a :class:`Snapshot`."""
    from hdrh.histogram import HdrHistogram

    s = settings or Settings.from_env()
    topics = Topics(prefix)
    p = Path(path) if path is not None else store_path(prefix, s)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    store = SketchStore(str(p))
    store.db.execute(_CONSUMED)
    mt, at = metrics_topic(topics), alerts_topic(topics)
    resume = {part: off for part, off in store.db.execute(
        "SELECT partition, next_offset FROM consumed WHERE topic=?", (mt,))}
    since = int(time.time() * 1000 - seconds * 1000)
    snap = Snapshot()
    metric, alert = codec_for("Metric"), codec_for("Alert")
    hdrs: list[dict] = []
    newest = 0
    with store.db:
        for r in _read(mt, since, resume, s):
            snap.read += 1
            m = metric.decode(r.value)
            store.db.execute("INSERT OR REPLACE INTO consumed VALUES (?, ?, ?)",
                             (mt, r.partition, r.offset + 1))
            if not isinstance(m, dict):
                continue
            if m["kind"] == "tdigest" and m["sketch"]:
                store.add(f"{m['subject']}|{m['name']}", m["tags"], m["window_start"],
                          m["window_end"], m["count"], m["sketch"])
                newest = max(newest, m["window_end"])
            elif m["kind"] == "hdr" and m["sketch"]:
                hdrs.append(m)
                newest = max(newest, m["window_end"])
            elif m["kind"] == "gauge" and m["name"] == "alarm":
                old = snap.alarms.get(m["subject"])
                if old is None or old["window_end"] <= m["window_end"]:
                    snap.alarms[m["subject"]] = m
    if not newest:
        row = store.db.execute("SELECT MAX(window_end) FROM windows").fetchone()
        newest = int(row[0] or 0)
    if newest:
        lo = newest - int(seconds * 1000)
        snap.range_ms = (lo, newest)
        names = [r[0] for r in store.db.execute(
            "SELECT DISTINCT model FROM windows WHERE window_start >= ? AND window_start < ?",
            (lo, newest))]
        for name in sorted(names):
            d = store.query(name, lo, newest)
            if d is not None:
                subject, metric_name = name.split("|", 1)
                number = metric_name.removeprefix("score.")
                snap.score_quantiles[(subject, number)] = (int(d.n_values), quantiles(d, QS))
        merged: dict[tuple[str, str], Any] = {}
        for m in hdrs:
            if m["window_start"] < lo:
                continue
            key = (m["subject"], m["name"].removeprefix("latency."))
            h = HdrHistogram.decode(m["sketch"])
            if key in merged:
                merged[key].add(h)
            else:
                merged[key] = h
        for key, h in merged.items():
            scale = 1000.0  # recorded in µs
            snap.latency[key] = (int(h.get_total_count()),
                                 h.get_value_at_percentile(50.0) / scale,
                                 h.get_value_at_percentile(99.0) / scale)
    for r in _read(at, since, {}, s):
        a = alert.decode(r.value)
        if isinstance(a, dict):
            snap.alerts.append(a)
    snap.alerts = snap.alerts[-max_alerts:]
    store.close()
    return snap


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(snap: Snapshot, seconds: float) -> str:
    lines = [f"alerts (latest {len(snap.alerts)} in the last {seconds:g} s):"]
    for a in reversed(snap.alerts):
        top = ", ".join(f"{x['name']} {x['log_odds']:.1f}" for x in a["signals"][:4])
        lines.append(f"  {_time(a['timestamp'])}  {a['subject']:<14} score {a['score']:.1f} > "
                     f"{a['threshold']:.1f}  {top}")
    if not snap.alerts:
        lines.append("  none")
    lines.append("alarm state (latest evaluation per subject):")
    for subject, m in sorted(snap.alarms.items()):
        on = "ON " if m["tags"].get("alarming") == "true" else "off"
        lines.append(f"  {subject:<14} {on} score {m['value']:.2f} / threshold "
                     f"{m['tags'].get('threshold', '?')} ({m['count']} signals, "
                     f"{m['tags'].get('calibration', '?')})")
    if not snap.alarms:
        lines.append("  no evaluation yet")
    if snap.range_ms:
        lo, hi = snap.range_ms
        lines.append(f"score quantiles, windows {_time(lo)} - {_time(hi)} (all tags merged):")
        lines.append(f"  {'model':<14} {'number':<20} {'n':>8} "
                     + " ".join(f"{'p' + format(q * 100, 'g'):>9}" for q in QS))
        for (subject, number), (n, vals) in sorted(snap.score_quantiles.items()):
            lines.append(f"  {subject:<14} {number:<20} {n:>8} "
                         + " ".join(f"{v:>9.4g}" for v in vals))
        lines.append("latency (HdrHistogram windows of the same range):")
        lines.append(f"  {'subject':<14} {'stage':<10} {'n':>8} {'p50 ms':>9} {'p99 ms':>9}")
        for (subject, stage), (n, p50, p99) in sorted(snap.latency.items()):
            lines.append(f"  {subject:<14} {stage:<10} {n:>8} {p50:>9.2f} {p99:>9.2f}")
    else:
        lines.append("no metric windows yet (is the monitor job running? `rdv monitor --start`)")
    return "\n".join(lines)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from rdv.commands import check_prefix

    prefix = check_prefix(args.prefix)
    if args.start:
        job_id = start_monitor(Topics(prefix))
        print(f"monitor job {job_id} started on {prefix or '(system)'} topics")
    snap = collect(prefix, args.seconds)
    print(render(snap, args.seconds))
    return 0


def register(subparsers: Any) -> None:
    """Add ``rdv monitor`` to the CLI: ``register(sub)`` in ``rdv.cli.build_parser``."""
    p = subparsers.add_parser(
        "monitor", help="print the monitor's current state: alerts, score quantiles, latency",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--prefix", default="", help="topic prefix of the pipeline (default: none)")
    p.add_argument("--seconds", type=float, default=300.0,
                   help="how far back to look (default: 300)")
    p.add_argument("--start", action="store_true",
                   help="first start the monitor job on the prefix's topics")
    p.set_defaults(func=_cmd_monitor)
