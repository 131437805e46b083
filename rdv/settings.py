"""One typed settings object for the whole platform, read from ``RDV_*`` environment
variables (quix-streams style), so the CLI, the jobs and the tests agree on addresses.

>>> s = Settings.from_env({"RDV_KAFKA_PORT": "19092"})
>>> s.kafka_bootstrap
'127.0.0.1:19092'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path = ROOT / ".rdv"
    kafka_port: int = 9092
    controller_port: int = 9093
    flink_rest_port: int = 8081
    flink_rpc_port: int = 6123
    flink_blob_port: int = 6124
    taskmanagers: int = 2
    slots_per_taskmanager: int = 8
    taskmanager_memory: str = "1536m"
    buffer_timeout: str = "0 ms"
    kafka_heap: str = "768m"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def flink_rest(self) -> str:
        return f"http://127.0.0.1:{self.flink_rest_port}"

    @property
    def python(self) -> Path:
        return ROOT / ".venv" / "bin" / "python"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get("RDV_" + f.name.upper())
            if raw is None:
                continue
            try:
                kwargs[f.name] = (
                    Path(raw) if f.name == "home" else (int(raw) if f.type in ("int", int) else raw)
                )
            except ValueError:
                raise SystemExit(f"RDV_{f.name.upper()}={raw!r}: expected an integer") from None
        return cls(**kwargs)  # type: ignore[arg-type]
