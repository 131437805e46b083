"""The user-facing ``rdv`` commands: train, model deploy/list/retire, schedule set/check/show,
send and replay. ``rdv/cli.py`` parses the arguments and calls these; ``rdv demo`` lives in
``rdv/demo.py``.

Errors the user must fix raise :class:`UsageError` (``rdv`` prints the message and exits 2);
a command that ran but did not succeed (no result within the timeout) raises
:class:`CommandFailed` (exit 1). Each message says what to do next.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdv.platform import PlatformError
from rdv.settings import Settings

#: Kafka's legal topic characters; a prefix is glued in front of the system topic names
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_SOURCE_TOPIC = re.compile(r"kafka: ([^\s,]+)")


class UsageError(Exception):
    """Bad arguments or input files: ``rdv`` prints the message and exits 2."""


class CommandFailed(Exception):
    """The command ran but did not succeed (e.g. no result in time): exit 1."""


def note(msg: str) -> None:
    """Human-readable progress on stderr (stdout stays machine-readable where it matters)."""
    print(msg, file=sys.stderr, flush=True)


def rel(path: Path | str) -> str:
    """``path`` relative to the working directory when below it, else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def check_prefix(prefix: str) -> str:
    if not _TOPIC_CHARS.match(prefix) or len(prefix) > 100:
        raise UsageError(
            f"--prefix {prefix!r}: a topic prefix may only use letters, digits, '.', '_' and '-'"
        )
    return prefix


# --------------------------------------------------------------------------- kafka helpers


def existing_topics(settings: Settings | None = None) -> set[str]:
    """Names of the topics on the broker; PlatformError (with the fix) if Kafka is down."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    s = settings or Settings.from_env()
    try:
        c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=10_000)
    except KafkaError as e:
        raise PlatformError(
            f"Kafka not reachable at {s.kafka_bootstrap} ({type(e).__name__}): "
            "start the platform with `rdv up`"
        ) from None
    try:
        return set(c.topics())
    finally:
        c.close()


def require_topics(names: Iterable[str], hint: str, settings: Settings | None = None) -> None:
    have = existing_topics(settings)
    missing = [n for n in names if n not in have]
    if missing:
        raise UsageError(f"topic(s) {', '.join(missing)} do not exist; {hint}")


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class ScoreJob:
    job_id: str
    model: str
    version: str
    state: str
    input_topic: str

    @property
    def prefix(self) -> str | None:
        """The topic prefix of the pipeline this job scores for (None if unrecognisable)."""
        t = self.input_topic
        return t[: -len("input")] if t.endswith("input") else None


def live_jobs(settings: Settings | None = None) -> list[dict]:
    from rdv import jobctl

    return [
        j for j in jobctl.list_jobs(settings)
        if j["state"] in ("RUNNING", "CREATED", "INITIALIZING", "RESTARTING", "RECONCILING")
    ]


def job_source_topic(job_id: str, settings: Settings | None = None) -> str:
    """The Kafka topic a job reads (from its source vertex name ``kafka: <topic>``)."""
    from rdv import jobctl

    for v in jobctl.job(job_id, settings).get("vertices", []):
        m = _SOURCE_TOPIC.search(v.get("name", ""))
        if m:
            return m.group(1)
    return "?"


def score_jobs(settings: Settings | None = None) -> list[ScoreJob]:
    """The score jobs that run (job name ``score <model> <version> <input topic>``)."""
    out = []
    for j in live_jobs(settings):
        parts = j["name"].split()
        if len(parts) in (3, 4) and parts[0] == "score":
            topic = parts[3] if len(parts) == 4 else job_source_topic(j["id"], settings)
            out.append(ScoreJob(j["id"], parts[1], parts[2], j["state"], topic))
    return out


# --------------------------------------------------------------------------- train


def train(n: int, seed: int, models: list[str] | None, out: Path | None) -> int:
    from udfs.demo.train import MODELS, SOURCE_DIR, train_all

    target = out or SOURCE_DIR
    note(f"training {', '.join(models or MODELS)} into {rel(target)} "
         f"({n} synthetic transactions, seed {seed})")
    train_all(target, n=n, seed=seed, models=tuple(models or MODELS))
    print(f"trained; deploy with: rdv model deploy {rel(target)}/<model>")
    return 0


# --------------------------------------------------------------------------- models


def validate_package(path: Path) -> Any:
    """The package's manifest, or UsageError saying what is wrong with it."""
    from udfs.model_package import ModelPackageError, load_manifest

    if not path.exists():
        raise UsageError(f"model package {path}: no such directory")
    try:
        manifest = load_manifest(path)
    except ModelPackageError as e:
        raise UsageError(f"invalid model package: {e}") from None
    missing = [a for a in manifest.artifacts if not manifest.artifact_path(a).is_file()]
    if missing:
        raise UsageError(
            f"model package {manifest.package_dir}: artifact(s) {', '.join(missing)} missing; "
            "train the model first (the demo models: `rdv train`)"
        )
    return manifest


def model_deploy(path: Path, *, prefix: str, allow_faults: bool, parallelism: int) -> int:
    from rdv.pipeline import Pipeline, Topics

    manifest = validate_package(path)
    topics = Topics(prefix=check_prefix(prefix))
    require_topics([topics.input, topics.scores, topics.deadletter],
                   "start the platform (`rdv up`) or, for a --prefix, its pipeline first")
    for j in score_jobs():
        if j.model == manifest.name and j.input_topic == topics.input:
            raise UsageError(
                f"{manifest.name} v{j.version} already scores {topics.input} as job {j.job_id}; "
                f"retire it first (rdv model retire {manifest.name})"
            )
    package_dir = manifest.package_dir.resolve()
    pipe = Pipeline(topics, models=[str(package_dir)], allow_faults=allow_faults,
                    parallelism=parallelism)
    note(f"submitting score job for {manifest.name} v{manifest.version} "
         f"({topics.input} -> {topics.scores}){' with fault injection' if allow_faults else ''}")
    jobs = pipe.start(only=[f"score:{package_dir.name}"])
    print(jobs[f"score:{package_dir.name}"])
    note(f"{manifest.name} runs in preproduction (scored and recorded, not answering) until a "
         "schedule names it: rdv schedule set FILE")
    return 0


def model_list(prefix: str | None) -> int:
    jobs = score_jobs()
    if prefix is not None:
        jobs = [j for j in jobs if j.input_topic == f"{check_prefix(prefix)}input"]
    if not jobs:
        print("no score job running; deploy one with: rdv model deploy PATH")
        return 0
    print(f"{'MODEL':<16} {'VERSION':<8} {'STATE':<9} {'INPUT':<24} JOB")
    for j in sorted(jobs, key=lambda j: (j.input_topic, j.model)):
        print(f"{j.model:<16} {j.version:<8} {j.state:<9} {j.input_topic:<24} {j.job_id}")
    return 0


def model_retire(name: str, *, prefix: str | None, version: str | None) -> int:
    from rdv import jobctl

    jobs = [j for j in score_jobs() if j.model == name
            and (version is None or j.version == version)
            and (prefix is None or j.input_topic == f"{check_prefix(prefix)}input")]
    if not jobs:
        raise UsageError(f"no running score job for model {name!r}"
                         f"{f' v{version}' if version else ''}"
                         f"{f' on {prefix}input' if prefix is not None else ''}; "
                         "see `rdv model list`")
    if len(jobs) > 1:
        listing = "; ".join(f"v{j.version} on {j.input_topic} (job {j.job_id})" for j in jobs)
        raise UsageError(f"{len(jobs)} score jobs run model {name!r}: {listing}; "
                         "pick one with --prefix or --version")
    j = jobs[0]
    note(f"stopping {j.model} v{j.version} (job {j.job_id}) with a savepoint")
    location = jobctl.savepoint(j.job_id, stop=True)
    print(location)
    note("retired; the savepoint above keeps the job's state and offsets for a roll-back")
    if j.prefix is not None:
        try:
            live = latest_schedule(j.prefix)
        except (PlatformError, UsageError):
            live = None
        if live is not None:
            from udfs.schedule import parse_schedule

            sched = parse_schedule(live["document"])
            staged = {st.model for st in sched.stages} | {
                st.model for v in (sched.split.variants if sched.split else ()) for st in v.stages}
            if name in staged:
                note(f"warning: the live schedule {sched.id!r} still names {name}; requests now "
                     "fall through to the next stage or the default. Update it with "
                     "`rdv schedule set FILE`")
    return 0


# --------------------------------------------------------------------------- schedules


def load_schedule_file(path: Path) -> Any:
    """The parsed schedule in ``path``, or UsageError listing every problem."""
    from udfs.schedule import ScheduleError, parse_schedule

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"schedule file {path}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise UsageError(f"schedule file {path}: cannot read it as text ({e})") from None
    try:
        return parse_schedule(text)
    except ScheduleError as e:
        lines = "\n".join(f"  - {p}" for p in e.problems)
        n = len(e.problems)
        raise UsageError(
            f"schedule file {path} is invalid ({n} problem{'s' if n != 1 else ''}):\n{lines}\n"
            "fix the file and run `rdv schedule check FILE` again"
        ) from None


def describe_schedule(s: Any) -> list[str]:
    """A few human lines about a Schedule (what answers when)."""

    def stage_lines(stages: Any, indent: str) -> list[str]:
        out, start = [], 0
        for k, st in enumerate(stages):
            out.append(f"{indent}{k + 1}. {st.model:<16} accepted from {start:>4} ms, "
                       f"preferred until {st.wait_ms} ms")
            start = st.wait_ms
        return out or [f"{indent}(no stages: every request gets the default)"]

    lines = [f"schedule {s.id!r} (version {s.version}), deadline {s.deadline_ms} ms"]
    if s.split is None:
        lines.append("  stages (the earliest accepted stage with a usable score answers):")
        lines += stage_lines(s.stages, "    ")
    else:
        lines.append(f"  traffic split by {s.split.field}"
                     f"{f' (salt {s.split.salt!r})' if s.split.salt else ''}:")
        for v in s.split.variants:
            lines.append(f"    variant {v.name!r}, {v.weight}% of traffic:")
            lines += stage_lines(v.stages, "      ")
    if s.default is not None:
        lines.append(f"  default at the deadline: {json.dumps(s.default.outputs, sort_keys=True)}")
    else:
        lines.append("  no default: at the deadline without a usable score the reason is 'none'")
    if s.ignore:
        lines.append(f"  never answer (recorded only): {', '.join(sorted(s.ignore))}")
    return lines


def schedule_notes(s: Any) -> list[str]:
    """Things that are valid but probably not what the author meant."""
    out = []
    for stages in [s.stages] + ([v.stages for v in s.split.variants] if s.split else []):
        if len(stages) > 1 and stages[0].wait_ms == 0:
            out.append(
                f"note: {stages[0].model} has wait_ms 0, so it is preferred for 0 ms: "
                f"{stages[1].model} answers as soon as it scores first. wait_ms is the end of "
                "a stage's preference window (absolute ms after the request), not its start"
            )
    return out


def schedule_check(path: Path) -> int:
    s = load_schedule_file(path)
    print(f"{rel(path)}: valid")
    for line in describe_schedule(s) + schedule_notes(s):
        print(line)
    return 0


def schedule_set(path: Path, prefix: str) -> int:
    from rdv.pipeline import Pipeline, Topics

    s = load_schedule_file(path)
    topics = Topics(prefix=check_prefix(prefix))
    require_topics([topics.control], "start the platform with `rdv up` (it creates the system "
                   "topics) or, for a --prefix, that pipeline's topics")
    Pipeline(topics).send_schedule(path)
    print(f"published schedule {s.id!r} on {topics.control}; the rendezvous applies it to new "
          "requests at once")
    for line in describe_schedule(s) + schedule_notes(s):
        note(line)
    try:
        running = {j.model for j in score_jobs() if j.input_topic == topics.input}
    except PlatformError:
        return 0
    for m in s.models():
        if m not in running and m not in s.ignore:
            note(f"warning: no score job for {m} reads {topics.input}; deploy it with "
                 f"`rdv model deploy models/{m}{f' --prefix {prefix}' if prefix else ''}`")
    return 0


def latest_schedule(prefix: str, settings: Settings | None = None) -> dict | None:
    """The last schedule record on ``<prefix>control`` (the live one), or None."""
    from rdv.kafka_io import consume
    from rdv.pipeline import Topics
    from udfs.codec import DecodeError, codec_for

    topic = Topics(prefix=prefix).control
    require_topics([topic], "start the platform with `rdv up`", settings)
    codec = codec_for("Control")
    latest = None
    for m in sorted(consume([topic], idle=0.5, timeout=10, settings=settings),
                    key=lambda m: (m.timestamp, m.partition, m.offset)):
        rec = codec.decode(m.value)
        if not isinstance(rec, DecodeError) and rec["kind"] == "schedule" and rec["document"]:
            latest = rec
    return latest


def schedule_show(prefix: str, as_json: bool) -> int:
    from rdv.pipeline import Topics
    from udfs.schedule import ScheduleError, parse_schedule

    topic = Topics(prefix=check_prefix(prefix)).control
    rec = latest_schedule(prefix)
    if rec is None:
        print(f"no schedule on {topic} yet: the rendezvous answers every request with reason "
              "'none' at 50 ms. Set one with `rdv schedule set FILE`")
        return 0
    if as_json:
        print(json.dumps(json.loads(rec["document"]), indent=2, sort_keys=True))
        return 0
    sent = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["timestamp"] / 1000))
    print(f"live schedule on {topic}, sent {sent}")
    try:
        sched = parse_schedule(rec["document"])
    except ScheduleError as e:
        print(f"  (the document no longer validates: {e})")
        print(rec["document"])
        return 0
    for line in describe_schedule(sched):
        print(line)
    return 0


# --------------------------------------------------------------------------- send


def parse_inputs(text: str) -> dict[str, dict]:
    """``--json``: ``{"numbers": {...}, "labels": {...}, "refs": {...}}`` (each optional)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError('--json must be an object like {"numbers": {"amount": 12.5}, '
                         '"labels": {"country": "US"}}')
    unknown = sorted(set(doc) - {"numbers", "labels", "refs"})
    if unknown:
        raise UsageError(f"--json: unknown key(s) {', '.join(unknown)}; "
                         "allowed: numbers, labels, refs")
    out: dict[str, dict] = {"numbers": {}, "labels": {}, "refs": {}}
    for section, value in doc.items():
        if not isinstance(value, dict):
            raise UsageError(f"--json: {section} must be an object of name: value")
        for k, v in value.items():
            if section == "numbers":
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise UsageError(f"--json: numbers.{k} must be a number, got {v!r}")
                out[section][k] = float(v)
            else:
                if not isinstance(v, str):
                    raise UsageError(f"--json: {section}.{k} must be a string, got {v!r}")
                out[section][k] = v
    return out


def default_inputs() -> dict[str, dict]:
    """An ordinary online purchase, so that ``rdv send`` with no inputs gets a real score."""
    hour = time.localtime().tm_hour
    return {
        "numbers": {"amount": 42.0, "hour": float(hour), "card_present": 0.0,
                    "event_time_ms": float(time.time_ns() // 1_000_000)},
        "labels": {"merchant_category": "online_retail", "country": "US", "channel": "ecom"},
        "refs": {},
    }


def send(*, entity_key: str, amount: float | None, inputs_json: str | None, timeout: float,
         prefix: str) -> int:
    from rdv.client import RendezvousClient, ResultTimeout
    from rdv.pipeline import Topics

    inputs = parse_inputs(inputs_json) if inputs_json is not None else default_inputs()
    if amount is not None:
        inputs["numbers"]["amount"] = amount
    topics = Topics(prefix=check_prefix(prefix))
    require_topics([topics.raw, topics.results], "start the platform with `rdv up`")
    with RendezvousClient(raw_topic=topics.raw, return_address=topics.results) as client:
        req = client.request(entity_key=entity_key, numbers=inputs["numbers"],
                             labels=inputs["labels"], refs=inputs["refs"])
        fut = client.send(req)
        client.flush()
        try:
            res = client.wait(req["request_id"], fut, timeout)
        except ResultTimeout:
            raise CommandFailed(
                f"no result for request {req['request_id']} within {timeout:g} s on "
                f"{topics.results}: is the pipeline running? (`rdv job list`; `rdv demo` starts "
                "it; the first requests after a start can take a few seconds)"
            ) from None
        received = client.received_at(req["request_id"]) or 0
    print_result(res, latency_ms=received - req["timestamp"])
    return 0


def print_result(res: Mapping[str, Any], latency_ms: int) -> None:
    model = res.get("model_id")
    who = f"{model} v{res.get('model_version')}" if model else "(no model)"
    print(f"request  {res['request_id']}  entity {res['entity_key']}")
    print(f"model    {who}")
    print(f"reason   {res['reason']}: {res['detail']}")
    outs = res.get("outputs") or {}
    shown = {k: v for k, v in outs.items() if v}
    print(f"outputs  {json.dumps(shown, sort_keys=True) if shown else '(none)'}")
    print(f"latency  {latency_ms} ms (client send -> result), rendezvous waited "
          f"{res['waited_ms']} ms, {res['scores_seen']} score(s) seen, schedule "
          f"{res['schedule_id']!r}")


# --------------------------------------------------------------------------- replay


def read_archive_files(files: list[Path], problems: list[str]) -> Iterator[dict]:
    """The requests in decoy archive files, in order. A file that ends in a partial block
    (the decoy is appending to it right now, or was stopped mid-write) yields what precedes
    the damage; the damage is reported in ``problems`` rather than stopping the replay."""
    import fastavro

    for f in files:
        n = 0
        try:
            with open(f, "rb") as fo:
                for rec in fastavro.reader(fo):
                    n += 1
                    yield rec  # type: ignore[misc]
        except (ValueError, EOFError, OSError) as e:
            problems.append(f"{f}: read {n} requests, then stopped: {e} (a partial block: "
                            "the file is being written, or a write was cut off)")


def replay(archive_dir: Path, topic: str, *, create: bool, partitions: int,
           source_topic: str | None = None) -> int:
    from rdv.kafka_io import create_topics, producer
    from udfs.codec import codec_for

    if not archive_dir.is_dir():
        raise UsageError(f"archive {archive_dir}: no such directory (the decoy writes to "
                         f"{rel(Settings.from_env().home / 'archive')} by default)")
    pattern = f"part-{source_topic}-*.avro" if source_topic else "*.avro"
    files = sorted(archive_dir.glob(f"dt=*/hour=*/{pattern}"))
    if not files:
        raise UsageError(f"archive {archive_dir}: no archive files (dt=*/hour=*/{pattern}) there")
    problems: list[str] = []
    records = read_archive_files(files, problems)
    if not _TOPIC_CHARS.match(topic) or not topic:
        raise UsageError(f"--topic {topic!r}: not a valid topic name")
    if topic not in existing_topics():
        if not create:
            raise UsageError(f"topic {topic} does not exist; pass --create to create it "
                             f"({partitions} partitions)")
        create_topics({topic: partitions})
        note(f"created topic {topic} ({partitions} partitions)")
    codec = codec_for("Request")
    p = producer(linger_ms=5, batch_size=256 * 1024)
    seen: set[str] = set()
    dup = 0
    try:
        for rec in records:
            if rec["message_id"] in seen:
                dup += 1
                continue
            seen.add(rec["message_id"])
            p.send(topic, key=rec["entity_key"].encode(), value=codec.encode(rec))
        p.flush()
    finally:
        p.close()
    print(f"replayed {len(seen)} requests from {len(files)} archive file(s) to {topic}"
          f"{f' ({dup} duplicates skipped)' if dup else ''}")
    for p in problems:
        note(f"warning: {p}")
    return 0


def installed_commands() -> set[str]:
    """The top-level ``rdv`` commands (so hints only name commands that exist)."""
    import argparse

    from rdv.cli import build_parser

    for a in build_parser()._actions:
        if isinstance(a, argparse._SubParsersAction):
            return set(a.choices)
    return set()

