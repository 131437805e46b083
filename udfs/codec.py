"""Avro codec for every message of the system.

One encoding everywhere: plain Avro binary (no framing), so that Flink SQL tables over the
topics decode the same bytes. Schemas are loaded from ``schemas/*.avsc`` on disk (never
inlined) and parsed once per process.

Decoding never raises on data: bad bytes come back as a :class:`DecodeError` that a job
routes to the dead-letter topic with the original bytes.

>>> codec = codec_for("Hop")
>>> codec.decode(codec.encode({"component": "augment", "version": "1", "timestamp": 5}))
{'component': 'augment', 'version': '1', 'timestamp': 5}
>>> codec.decode(b"\\xff")
DecodeError(schema='rdv.Hop', reason='truncated or malformed Avro: ...')

Schema evolution rule (see schemas/README.md): add fields only, at the end of a record,
with a default; never rename, remove, reorder or change a type. Roll out readers before
writers. A reader decodes old bytes with the older schema kept in ``schemas/history/``
and resolves them into the current one.
"""

from __future__ import annotations

import io
import os
import random
import re
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro
import fastavro.schema
from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.repository.flat_dict import FlatDictRepository

Record = dict[str, Any]

SCHEMA_DIR = Path(
    os.environ.get("RDV_SCHEMA_DIR", Path(__file__).resolve().parent.parent / "schemas")
)

#: the message types of the contract, one file each in schemas/
MESSAGE_TYPES = (
    "Request", "Score", "Result", "Control", "Profile", "Metric", "Span", "Alert", "DeadLetter",
)

_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class DecodeError:
    """Why some bytes are not a valid message; never raised, returned."""

    schema: str
    reason: str

    def __repr__(self) -> str:
        # keep doctest output stable: the library's message after the colon varies
        head = self.reason.split(":")[0]
        suffix = ": ..." if ":" in self.reason else ""
        return f"DecodeError(schema={self.schema!r}, reason={head + suffix!r})"


class SchemaError(ValueError):
    """A record does not fit its schema when encoding: a programming error, not data."""


_ids = random.Random(secrets.randbits(128))


def new_message_id() -> str:
    """128-bit random id as 32 lowercase hex chars.

    Unique, not secret: a per-process generator seeded from the OS (``secrets`` reads
    /dev/urandom per call, 6% of a model job's Python time in a profile).
    """
    return f"{_ids.getrandbits(128):032x}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _schema_file(name: str, schema_dir: Path) -> Path:
    for candidate in (schema_dir / f"{name}.avsc", schema_dir / f"rdv.{name}.avsc"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no schema {name!r} in {schema_dir}")


class _ChainRepository(AbstractSchemaRepository):
    """Looks a named schema up in the first directory that has it."""

    def __init__(self, *dirs: Path) -> None:
        self.repos = [FlatDictRepository(str(d)) for d in dirs]

    def load(self, name: str) -> Any:
        for i, repo in enumerate(self.repos):
            try:
                return repo.load(name)
            except SchemaRepositoryError:
                if i == len(self.repos) - 1:
                    raise
        raise SchemaRepositoryError(name)


class Codec:
    """Encoder/decoder for one message type (parsed once; cheap to call)."""

    def __init__(self, name: str, schema_dir: Path = SCHEMA_DIR) -> None:
        self.name = name
        path = _schema_file(name, schema_dir)
        self.schema = cast("dict[str, Any]", fastavro.schema.load_schema(str(path)))
        self.fullname: str = self.schema["name"]
        self._has_envelope = any(f["name"] == "message_id" for f in self.schema["fields"])
        # older versions, newest first: schemas/history/<Name>.v<N>.avsc
        hist = sorted(
            (schema_dir / "history").glob(f"{name}.v*.avsc"),
            key=lambda p: int(p.stem.rsplit(".v", 1)[1]),
            reverse=True,
        )
        # an old version may refer to the shared types (rdv.*) of the current directory
        self._history = [
            fastavro.schema.load_schema(p.stem, repo=_ChainRepository(p.parent, schema_dir))
            for p in hist
        ]

    def encode(self, record: Record) -> bytes:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise SchemaError(f"{self.fullname}: {e}") from e
        return buf.getvalue()

    def decode(self, data: bytes | None) -> Record | DecodeError:
        if not data:
            return DecodeError(self.fullname, "empty message")
        got = self._read(data, self.schema, None)
        if isinstance(got, DecodeError):
            for old in self._history:
                older = self._read(data, old, self.schema)
                if not isinstance(older, DecodeError):
                    return self._check(older)
            return got
        return self._check(got)

    def _read(self, data: bytes, writer: Any, reader: Any) -> Record | DecodeError:
        buf = io.BytesIO(data)
        try:
            rec = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as e:  # noqa: BLE001 - any failure of untrusted bytes is data, not a bug
            return DecodeError(
                self.fullname, f"truncated or malformed Avro: {type(e).__name__}: {e}"
            )
        if buf.tell() != len(data):
            return DecodeError(
                self.fullname,
                f"trailing bytes: {len(data) - buf.tell()} of {len(data)} not consumed "
                "(wrong message type or a newer schema)",
            )
        if not isinstance(rec, dict):
            return DecodeError(self.fullname, "not a record")
        return rec

    def _check(self, rec: Record) -> Record | DecodeError:
        if self._has_envelope and not _MESSAGE_ID.match(rec.get("message_id", "")):
            return DecodeError(self.fullname, "invalid envelope: message_id is not 32 hex chars")
        return rec


@cache
def codec_for(name: str) -> Codec:
    """The process-wide codec of a message type (schemas parsed once)."""
    return Codec(name)


def envelope(component: str, version: str, *, tags: dict[str, str] | None = None) -> Record:
    """A fresh common envelope whose provenance starts with ``component``."""
    ts = now_ms()
    return {
        "timestamp": ts,
        "message_id": new_message_id(),
        "provenance": {
            "hops": [{"component": component, "version": version, "timestamp": ts}],
            "tags": dict(tags or {}),
            "trace": None,
        },
        "diagnostics": None,
    }


def add_hop(record: Record, component: str, version: str, at_ms: int | None = None) -> Record:
    """Append a provenance hop in place (and return the record, for chaining)."""
    record["provenance"]["hops"].append(
        {
            "component": component,
            "version": version,
            "timestamp": now_ms() if at_ms is None else at_ms,
        }
    )
    return record


def dead_letter(
    component: str,
    reason: str,
    payload: bytes,
    *,
    key: bytes | None = None,
    source_topic: str = "",
    partition: int = -1,
    offset: int = -1,
    version: str = "0",
) -> Record:
    """A DeadLetter record carrying the original bytes and why they were rejected."""
    rec = envelope(component, version)
    rec.update(
        component=component,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        reason=reason,
        key=key,
        payload=payload or b"",
    )
    return rec
