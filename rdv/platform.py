"""The local platform: a single-node Kafka (KRaft) broker and a Flink standalone cluster,
run from jars the project fetched itself (deploy/bootstrap.sh), all on loopback, with
data and logs under ``$RDV_HOME`` (default ``.rdv/``).

``up`` is idempotent and waits for readiness (no sleeps as synchronisation); ``down``
leaves no process and no bound port behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from rdv.settings import ROOT, Settings


class PlatformError(RuntimeError):
    """Something the user must fix (missing Java, port taken, service not starting)."""


def pyflink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, ready: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    """Poll ``ready`` until true; on timeout say what failed and where its log is."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    hint = f"; see {log}" if log else ""
    raise PlatformError(f"{what} not ready after {timeout:.0f} s{hint}")


def _render(template: Path, target: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _terminate(pids: list[int], timeout: float = 20.0) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class ServiceStatus:
    name: str
    address: str
    running: bool
    detail: str = ""


class Platform:
    def __init__(self, settings: Settings | None = None) -> None:
        self.s = settings or Settings.from_env()
        self.home = self.s.home
        self.jars = self.home / "jars"

    # ---------------------------------------------------------------- checks
    def check_prerequisites(self) -> None:
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise PlatformError("java not found on PATH: install Java 17 (e.g. openjdk-17-jre)")
        missing = [d for d in ("kafka", "flink") if not any((self.jars / d).glob("*.jar"))]
        if missing:
            raise PlatformError(
                f"jars missing in {self.jars} ({', '.join(missing)}): run deploy/bootstrap.sh"
            )
        if not self.s.python.exists():
            raise PlatformError(f"{self.s.python} missing: run deploy/bootstrap.sh")

    def _check_port_free(self, port: int, service: str) -> None:
        if port_open(port):
            raise PlatformError(
                f"port {port} (for {service}) is taken by another process; stop it or choose "
                f"another port with RDV_{'KAFKA_PORT' if 'Kafka' in service else 'FLINK_REST_PORT'}"
            )

    # ---------------------------------------------------------------- kafka
    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    def _kafka_pid(self) -> int | None:
        try:
            pid = int((self.kafka_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _java(self) -> str:
        jh = os.environ.get("JAVA_HOME")
        return str(Path(jh) / "bin" / "java") if jh else "java"

    def start_kafka(self) -> None:
        if self._kafka_pid():
            return
        for port, svc in (
            (self.s.kafka_port, "Kafka"),
            (self.s.controller_port, "Kafka controller"),
        ):
            self._check_port_free(port, svc)
        props = self.kafka_dir / "server.properties"
        _render(
            ROOT / "deploy" / "kafka" / "server.properties.in",
            props,
            {
                "HOME": str(self.home),
                "KAFKA_PORT": str(self.s.kafka_port),
                "CONTROLLER_PORT": str(self.s.controller_port),
            },
        )
        (self.kafka_dir / "logs").mkdir(parents=True, exist_ok=True)
        cp = f"{self.jars / 'kafka'}/*"
        jvm = [
            self._java(),
            f"-Xmx{self.s.kafka_heap}",
            f"-Xms{self.s.kafka_heap}",
            "-XX:+UseG1GC",
            f"-Dkafka.logs.dir={self.kafka_dir / 'logs'}",
            f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'kafka' / 'log4j2.properties'}",
            "-cp",
            cp,
        ]
        if not (self.kafka_dir / "data" / "meta.properties").exists():
            cluster_id = _kafka_cluster_id()
            out = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    cluster_id,
                    "--config",
                    str(props),
                    "--standalone",
                    "--ignore-formatted",
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise PlatformError(f"formatting Kafka storage failed:\n{out.stdout}{out.stderr}")
        log = self.kafka_dir / "logs" / "stdout.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(props)],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.kafka_dir / "kafka.pid").write_text(str(proc.pid))

        def ready() -> bool:
            if proc.poll() is not None:
                raise PlatformError(f"Kafka exited with code {proc.returncode}; see {log}")
            return self._kafka_ready()

        wait_for("Kafka", ready, 60, log)

    def _kafka_ready(self) -> bool:
        if not port_open(self.s.kafka_port):
            return False
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(
                bootstrap_servers=self.s.kafka_bootstrap,
                request_timeout_ms=3000,
                client_id="rdv-ready",
            )
            try:
                admin.list_topics()
            finally:
                admin.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def create_topics(self, spec: dict[str, dict] | None = None) -> list[str]:
        """Create the topics of deploy/topics.yaml (or ``spec``) that do not exist yet."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        spec = (
            spec
            if spec is not None
            else yaml.safe_load((ROOT / "deploy" / "topics.yaml").read_text())
        )
        admin = KafkaAdminClient(bootstrap_servers=self.s.kafka_bootstrap, client_id="rdv-topics")
        try:
            existing = set(admin.list_topics())
            new = [
                NewTopic(
                    name,
                    int(conf.get("partitions", 1)),
                    1,
                    topic_configs={k: str(v) for k, v in (conf.get("config") or {}).items()},
                )
                for name, conf in spec.items()
                if name not in existing
            ]
            if new:
                admin.create_topics(new, timeout_ms=30_000)
            return [t.name for t in new]
        finally:
            admin.close()

    def stop_kafka(self) -> None:
        pid = self._kafka_pid()
        if pid:
            _terminate([pid], timeout=30)
        (self.kafka_dir / "kafka.pid").unlink(missing_ok=True)

    # ---------------------------------------------------------------- flink
    @property
    def flink_dir(self) -> Path:
        return self.home / "flink"

    def flink_env(self) -> dict[str, str]:
        """Environment for Flink's scripts and CLI: our conf, our lib (dist + connectors)."""
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(self.flink_dir / "conf"),
            FLINK_LIB_DIR=str(self.flink_dir / "lib"),
            FLINK_LOG_DIR=str(self.flink_dir / "log"),
            PYFLINK_CLIENT_EXECUTABLE=str(self.s.python),
            PATH=f"{self.s.python.parent}:{env.get('PATH', '')}",
            # all Python of a TaskManager shares one GIL: native thread pools (OpenMP in
            # scikit-learn, BLAS) would only spin against it
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        return env

    def _prepare_flink(self) -> None:
        pf = pyflink_home()
        lib = self.flink_dir / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir(parents=True)
        # the wheel's distribution, plus flink-python in lib/ (thread mode on a session
        # cluster needs it there: PYFLINK-FACTS pitfall), plus the Kafka connector
        jars = [
            *(pf / "lib").glob("*.jar"),
            *(pf / "opt").glob("flink-python-*.jar"),
            *(self.jars / "flink").glob("*.jar"),
        ]
        for jar in jars:
            (lib / jar.name).symlink_to(jar)
        for d in ("log", "pids", "checkpoints", "savepoints"):
            (self.flink_dir / d).mkdir(parents=True, exist_ok=True)
        conf = self.flink_dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        _render(
            ROOT / "deploy" / "flink" / "config.yaml.in",
            conf / "config.yaml",
            {
                "HOME": str(self.home),
                "REST_PORT": str(self.s.flink_rest_port),
                "JM_RPC_PORT": str(self.s.flink_rpc_port),
                "BLOB_PORT": str(self.s.flink_blob_port),
                "SLOTS": str(self.s.slots_per_taskmanager),
                "TM_MEMORY": self.s.taskmanager_memory,
                "BUFFER_TIMEOUT": self.s.buffer_timeout,
                "PYTHON": str(self.s.python),
                "JAVA_OPENS": _dist_java_opts(pf),
            },
        )
        for f in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties"):
            src = pf / "conf" / f
            if src.exists():
                shutil.copy(src, conf / f)

    def _flink_script(self, name: str, *args: str) -> None:
        out = subprocess.run(
            ["bash", str(pyflink_home() / "bin" / name), *args],
            env=self.flink_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise PlatformError(f"{name} {' '.join(args)} failed:\n{out.stdout}{out.stderr}")

    def flink_overview(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.s.flink_rest + "/overview", timeout=2) as r:
                return json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _flink_pids(self) -> list[int]:
        pids = []
        for f in (self.flink_dir / "pids").glob("*.pid"):
            for line in f.read_text().split():
                if line.strip().isdigit() and _pid_alive(int(line)):
                    pids.append(int(line))
        return pids

    def start_flink(self) -> None:
        ov = self.flink_overview()
        if ov and ov.get("taskmanagers", 0) >= self.s.taskmanagers:
            return
        if not ov:
            self._check_port_free(self.s.flink_rest_port, "Flink REST")
            self._prepare_flink()
            self._flink_script("jobmanager.sh", "start")
            wait_for(
                "Flink JobManager",
                lambda: self.flink_overview() is not None,
                60,
                self.flink_dir / "log",
            )
            ov = self.flink_overview() or {}
        for _ in range(ov.get("taskmanagers", 0), self.s.taskmanagers):
            self._flink_script("taskmanager.sh", "start")
        wait_for(
            f"{self.s.taskmanagers} Flink TaskManagers",
            lambda: (self.flink_overview() or {}).get("taskmanagers", 0) >= self.s.taskmanagers,
            90,
            self.flink_dir / "log",
        )

    def stop_flink(self) -> None:
        pids = self._flink_pids()
        if pids:
            _terminate(pids, timeout=30)
        for f in (self.flink_dir / "pids").glob("*.pid"):
            f.unlink()

    # ---------------------------------------------------------------- all
    def up(self) -> None:
        self.check_prerequisites()
        self.start_kafka()
        self.create_topics()
        self.start_flink()

    def down(self) -> None:
        self.stop_flink()
        self.stop_kafka()
        ports = [self.s.kafka_port, self.s.controller_port, self.s.flink_rest_port]
        wait_for("ports to be released", lambda: not any(port_open(p) for p in ports), 30)

    def status(self) -> list[ServiceStatus]:
        ov = self.flink_overview()
        kafka_up = self._kafka_pid() is not None and self._kafka_ready()
        return [
            ServiceStatus(
                "kafka",
                self.s.kafka_bootstrap,
                kafka_up,
                f"KRaft single node, data in {self.kafka_dir / 'data'}",
            ),
            ServiceStatus(
                "flink",
                self.s.flink_rest,
                ov is not None,
                (
                    f"{ov.get('taskmanagers')} TaskManagers, {ov.get('slots-available')}/"
                    f"{ov.get('slots-total')} slots free, {ov.get('jobs-running')} jobs running"
                )
                if ov
                else "",
            ),
        ]


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _dist_java_opts(pf: Path) -> str:
    """The module opens/exports that the wheel's own config passes to the JVM (Java 17)."""
    conf = yaml.safe_load((pf / "conf" / "config.yaml").read_text()) or {}
    return str(conf.get("env", {}).get("java", {}).get("opts", {}).get("all", ""))
