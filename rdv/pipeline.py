"""Bring up the whole rendezvous pipeline on the running platform: augment, one score job
per model package, rendezvous and decoy, on a set of topics (default: the system's own;
tests pass a unique prefix so that runs never see each other's data)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdv import jobctl
from rdv.kafka_io import create_topics, producer
from rdv.settings import ROOT, Settings
from udfs.codec import codec_for, envelope
from udfs.profiles import to_record
from udfs.schedule import parse_schedule

DEMO_MODELS = ("fraud_gbm", "fraud_logreg", "fraud_rules", "fraud_canary")


@dataclass
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def raw(self) -> str:
        return self.name("raw")

    @property
    def input(self) -> str:
        return self.name("input")

    @property
    def scores(self) -> str:
        return self.name("scores")

    @property
    def results(self) -> str:
        # a return address must start with "results"
        return f"results{'-' + self.prefix.rstrip('-') if self.prefix else ''}"

    @property
    def profiles(self) -> str:
        return self.name("profiles")

    @property
    def control(self) -> str:
        return self.name("control")

    @property
    def deadletter(self) -> str:
        return self.name("deadletter")

    def create(self, partitions: int = 2, settings: Settings | None = None) -> None:
        compact = {"cleanup.policy": "compact"}
        create_topics(
            {self.raw: partitions, self.input: partitions, self.scores: partitions,
             self.results: partitions, self.profiles: partitions, self.control: 1,
             self.deadletter: 1},
            settings,
            configs={self.profiles: compact, self.control: compact},
        )


@dataclass
class Pipeline:
    topics: Topics
    models: Iterable[str | Path] = DEMO_MODELS
    archive_dir: Path | None = None
    allow_faults: bool = False
    parallelism: int = 1
    tombstone_ms: int = 10_000
    #: also run the monitor job (meta analytics: sketches, comparisons, alarms)
    monitor: bool = False
    settings: Settings = field(default_factory=Settings.from_env)
    jobs: dict[str, str] = field(default_factory=dict)

    def _common(self) -> list[str]:
        return ["--bootstrap", self.settings.kafka_bootstrap,
                "--deadletter-topic", self.topics.deadletter,
                "--parallelism", str(self.parallelism)]

    def job_specs(self) -> dict[str, tuple[str, list[str]]]:
        t = self.topics
        specs: dict[str, tuple[str, list[str]]] = {
            "augment": ("augment", ["--raw-topic", t.raw, "--profiles-topic", t.profiles,
                                    "--input-topic", t.input, "--group-id", f"{t.prefix}augment"]),
            "rendezvous": ("rendezvous", [
                "--input-topic", t.input, "--scores-topic", t.scores,
                "--control-topic", t.control, "--group-id", f"{t.prefix}rendezvous",
                "--tombstone-ms", str(self.tombstone_ms)]),
            "decoy": ("decoy", [
                "--input-topic", t.input, "--group-id", f"{t.prefix}decoy",
                "--archive-dir", str(self.archive_dir or (self.settings.home / "archive"))]),
        }
        if self.monitor:
            from rdv.monitor import monitor_args

            specs["monitor"] = ("monitor", monitor_args(t, self.settings))
        for m in self.models:
            path = Path(m) if "/" in str(m) else ROOT / "models" / str(m)
            specs[f"score:{path.name}"] = ("score", [
                "--model-dir", str(path), "--input-topic", t.input, "--scores-topic", t.scores,
                "--group-id", f"{t.prefix}score-{path.name}",
                "--allow-faults", "true" if self.allow_faults else "false"])
        return specs

    def start(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """Submit the jobs (two at a time: each submission is a JVM + Python client)."""
        if self.monitor:
            from rdv.monitor import create_monitor_topics

            create_monitor_topics(self.topics, self.settings)
        specs = self.job_specs()
        wanted = [k for k in specs if only is None or k in set(only)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            ids = pool.map(
                lambda k: jobctl.submit(specs[k][0], [*specs[k][1], *self._common()],
                                        settings=self.settings),
                wanted,
            )
            self.jobs.update(zip(wanted, ids, strict=True))
        return dict(self.jobs)

    def stop(self, name: str | None = None) -> None:
        for k in [name] if name else list(self.jobs):
            job_id = self.jobs.pop(k)
            try:
                jobctl.cancel(job_id, settings=self.settings)
            except Exception as e:  # noqa: BLE001 - stop the others too
                print(f"cancelling {k} ({job_id}): {e}")

    def send_schedule(self, schedule: Mapping[str, Any] | str | Path) -> None:
        """Validate a schedule here (clear errors before anything is sent) and publish it."""
        if isinstance(schedule, Path):
            schedule = schedule.read_text()
        parsed = parse_schedule(schedule)  # type: ignore[arg-type]
        rec = envelope("rdv-cli", "0.1.0")
        rec.update(kind="schedule", key=parsed.id, document=parsed.to_json(), token=None)
        p = producer(self.settings)
        p.send(self.topics.control, key=parsed.id.encode(), value=codec_for("Control").encode(rec))
        p.flush()
        p.close()

    def load_profiles(
        self, profiles: Iterable[Mapping[str, Any]], key_field: str = "card_id"
    ) -> int:
        codec = codec_for("Profile")
        p = producer(self.settings, linger_ms=5)
        n = 0
        for prof in profiles:
            rec = to_record(prof, key_field=key_field)
            p.send(self.topics.profiles, key=rec["entity_key"].encode(), value=codec.encode(rec))
            n += 1
        p.flush()
        p.close()
        return n


def schedule_doc(path: Path | str) -> dict:
    """A schedule file (YAML or JSON) as a dict, validated."""
    doc: dict = json.loads(parse_schedule(Path(path).read_text()).to_json())
    return doc
