"""Machine, versions and per-process CPU accounting for the benchmark results."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rdv.settings import Settings

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: process roles by a distinctive piece of their command line
ROLES = {
    "kafka": "kafka.Kafka",
    "taskmanager": "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
    "jobmanager": "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
}


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine(settings: Settings) -> dict[str, Any]:
    mem_kb = 0
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True,
                              timeout=20).stderr.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        java = None
    jars = settings.home / "jars"

    def jar_version(sub: str, pattern: str) -> str | None:
        for p in sorted((jars / sub).glob("*.jar")):
            m = re.fullmatch(pattern, p.name)
            if m:
                return m.group(1)
        return None

    import confluent_kafka

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": {
            "python": sys.version.split()[0],
            "pyflink": _pkg("apache-flink"),
            "kafka_broker": jar_version("kafka", r"kafka_2\.13-(.+)\.jar"),
            "flink_connector_kafka": jar_version("flink", r"flink-connector-kafka-(.+)\.jar"),
            "confluent_kafka": confluent_kafka.version()[0],
            "librdkafka": confluent_kafka.libversion()[0],
            "kafka_python": _pkg("kafka-python"),
            "fastavro": _pkg("fastavro"),
            "hdrhistogram": _pkg("hdrhistogram"),
            "java": java,
        },
        "platform": {
            "taskmanagers": settings.taskmanagers,
            "slots_per_taskmanager": settings.slots_per_taskmanager,
            "taskmanager_memory": settings.taskmanager_memory,
            "buffer_timeout": settings.buffer_timeout,
            "kafka_heap": settings.kafka_heap,
        },
    }


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def find_processes() -> dict[str, int]:
    """Role → pid of the platform's processes (taskmanager-1, taskmanager-2 by pid order)
    and of this generator."""
    found: dict[str, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        cmd = _cmdline(int(d.name))
        if not cmd.startswith("java") and "/java " not in cmd:
            continue
        for role, marker in ROLES.items():
            if marker in cmd:
                found.setdefault(role, []).append(int(d.name))
    out: dict[str, int] = {}
    for role, pids in found.items():
        if role == "taskmanager":
            for i, pid in enumerate(sorted(pids), 1):
                out[f"taskmanager-{i}"] = pid
        else:
            out[role] = sorted(pids)[0]
    out["generator"] = os.getpid()
    return out


def _stat_cpu(path: str) -> tuple[str, float] | None:
    """(name, user+system seconds) of a /proc/<pid>[/task/<tid>]/stat file."""
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1: raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    return name, (int(rest[11]) + int(rest[12])) / CLK_TCK


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine (all cores)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU seconds per platform process (and per thread of the TaskManagers) between
    :meth:`start` and :meth:`stop` — the automated ``top``/``top -H`` of a run."""

    def __init__(self, threads: bool = False) -> None:
        self.procs = find_processes()
        self.threads = threads
        self._t0 = 0.0
        self._p0: dict[str, float] = {}
        self._th0: dict[str, dict[str, tuple[str, float]]] = {}
        self._m0 = 0.0

    def _procs(self) -> dict[str, float]:
        out = {}
        for role, pid in self.procs.items():
            got = _stat_cpu(f"/proc/{pid}/stat")
            if got is not None:
                out[role] = got[1]
        return out

    def _threads(self) -> dict[str, dict[str, tuple[str, float]]]:
        out: dict[str, dict[str, tuple[str, float]]] = {}
        for role, pid in self.procs.items():
            if not role.startswith("taskmanager"):
                continue
            per: dict[str, tuple[str, float]] = {}
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                got = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
                if got is not None:
                    per[tid] = got
            out[role] = per
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._m0 = _machine_cpu()
        self._p0 = self._procs()
        if self.threads:
            self._th0 = self._threads()

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        p1 = self._procs()
        busy = _machine_cpu() - self._m0
        cores = {role: round((p1[role] - self._p0.get(role, 0.0)) / wall, 3)
                 for role in p1}
        cores["other"] = round(max(busy / wall - sum(cores.values()), 0.0), 3)
        out: dict[str, Any] = {"wall_s": round(wall, 2),
                               "machine_busy_cores": round(busy / wall, 3), "cores": cores}
        if self.threads:
            th1 = self._threads()
            top: dict[str, list[list[Any]]] = {}
            for role, per in th1.items():
                before = self._th0.get(role, {})
                # by thread name (Linux keeps 15 characters: "Source: kafka: " are the
                # source task threads with their chained Python operator, "Source Data Fet"
                # the Kafka fetchers, "kafka-producer-" the sinks' network threads)
                by_name: dict[str, float] = {}
                for tid, (name, cpu) in per.items():
                    by_name[name] = by_name.get(name, 0.0) + (
                        cpu - before.get(tid, (name, 0.0))[1]) / wall
                rows = sorted(by_name.items(), key=lambda r: -r[1])
                top[role] = [[n, round(c, 3)] for n, c in rows[:10] if c > 0.005]
            out["top_threads_cores"] = top
        return out
