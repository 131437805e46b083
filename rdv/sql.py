"""SQL over the streams: ``rdv sql "SELECT ..."``.

The topics ``scores``, ``results``, ``input``, ``deadletter`` and ``metrics`` (of a topic
prefix) are Flink SQL tables that decode the same plain Avro bytes as ``udfs/codec.py``:
their DDL is generated from ``schemas/*.avsc`` (:func:`physical_type`) so that the Avro
schema Flink's ``avro`` format derives from the table (``AvroSchemaConverter``) is the
contract's schema up to record names: same fields in the same order, ``["null", T]`` for
nullable fields, ``MAP<STRING, T>`` for maps, ``ROW<...>`` for records, ``NOT NULL``
everywhere else. Each table also has

- ``kafka_partition``, ``kafka_offset``, ``kafka_timestamp`` (METADATA columns),
- ``event_time`` = the envelope's ``timestamp`` as ``TIMESTAMP(3)`` (UTC) with a watermark
  :data:`WATERMARK_DELAY` behind, for ``TUMBLE``/``HOP`` windows and interval joins,
- ``proc_time`` (processing time).

Queries run in a local Flink mini-cluster inside this process (``pipeline.jars``:
``$RDV_HOME/jars/sql`` + ``$RDV_HOME/jars/flink``), never on the cluster. By default a
query reads each topic from the earliest offset up to the end offsets at start
(``scan.bounded.mode``), so it finishes and every window closes; ``follow`` keeps reading
new records until ``limit`` rows, ``timeout`` seconds or Ctrl-C. The sketch functions of
``udfs/sql_functions.py`` (``TDIGEST_QUANTILE(x, q)`` and friends) are registered too.

Windows with the Python sketch aggregates: use the group-window syntax
``GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), model_id`` (planned as
PythonGroupWindowAggregate: one final row per window, state freed). With the window TVF
``FROM TABLE(TUMBLE(TABLE scores, ...)) GROUP BY window_start, window_end, ...`` a Python
aggregate is planned as an unbounded PythonGroupAggregate: it emits an update per
mini-batch and never frees the windows' state (built-in aggregates are fine with the TVF).

Python API: :func:`run_query` (rows as tuples, changelog applied), :func:`stream_query`
(changes as they arrive). CLI: :func:`register` adds the ``sql`` subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pickle
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rdv.pipeline import Topics
from rdv.settings import Settings
from udfs.codec import SCHEMA_DIR

# =========================================================================== Avro -> Flink SQL

#: Avro primitive -> Flink SQL type (the inverse of what AvroSchemaConverter derives)
AVRO_PRIMITIVES = {
    "boolean": "BOOLEAN",
    "int": "INT",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "bytes": "BYTES",
    "string": "STRING",
}
_FLINK_TO_AVRO = {v: k for k, v in AVRO_PRIMITIVES.items()}


class SchemaMappingError(ValueError):
    """An Avro schema uses something Flink SQL's ``avro`` format cannot read back."""


@dataclass(frozen=True)
class SqlType:
    """A Flink SQL logical type (the subset the contract uses)."""

    kind: str  # an AVRO_PRIMITIVES value, or ROW / ARRAY / MAP
    nullable: bool = False
    fields: tuple[tuple[str, SqlType], ...] = ()  # ROW
    element: SqlType | None = None  # ARRAY element, MAP value (keys are STRING NOT NULL)

    def sql(self) -> str:
        """The type in DDL syntax, e.g. ``MAP<STRING NOT NULL, DOUBLE NOT NULL> NOT NULL``."""
        if self.kind == "ROW":
            inner = ", ".join(f"{quote(n)} {t.sql()}" for n, t in self.fields)
            s = f"ROW<{inner}>"
        elif self.kind == "ARRAY":
            assert self.element is not None
            s = f"ARRAY<{self.element.sql()}>"
        elif self.kind == "MAP":
            assert self.element is not None
            s = f"MAP<STRING NOT NULL, {self.element.sql()}>"
        else:
            s = self.kind
        return s if self.nullable else f"{s} NOT NULL"

    def avro(self, name: str = "record") -> Any:
        """The Avro schema Flink's ``AvroSchemaConverter.convertToSchema`` derives from this
        type: records named by their path, nullable types as ``["null", T]``."""
        s: Any
        if self.kind == "ROW":
            s = {"type": "record", "name": name,
                 "fields": [{"name": n, "type": t.avro(f"{name}_{n}")} for n, t in self.fields]}
        elif self.kind == "ARRAY":
            assert self.element is not None
            s = {"type": "array", "items": self.element.avro(name)}
        elif self.kind == "MAP":
            assert self.element is not None
            s = {"type": "map", "values": self.element.avro(name)}
        else:
            s = _FLINK_TO_AVRO[self.kind]
        return ["null", s] if self.nullable else s


def quote(identifier: str) -> str:
    """A Flink SQL identifier in backticks (``timestamp``, ``offset`` are keywords)."""
    return "`" + identifier.replace("`", "``") + "`"


def load_avsc(name: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The JSON of ``schemas/<name>.avsc`` (a message type or a shared ``rdv.*`` type)."""
    for candidate in (schema_dir / f"{name}.avsc", schema_dir / f"rdv.{name}.avsc"):
        if candidate.exists():
            doc: dict[str, Any] = json.loads(candidate.read_text())
            return doc
    raise SchemaMappingError(f"no schema {name!r} in {schema_dir}")


class _Resolver:
    """Turns Avro schemas into :class:`SqlType`, loading named types from their files."""

    def __init__(self, schema_dir: Path) -> None:
        self.schema_dir = schema_dir
        self.named: dict[str, Any] = {}
        self.stack: list[str] = []

    def _fullname(self, name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def lookup(self, name: str, namespace: str) -> Any:
        full = self._fullname(name, namespace)
        if full not in self.named:
            for candidate in (full, name):
                path = self.schema_dir / f"{candidate}.avsc"
                if path.exists():
                    self.named[full] = json.loads(path.read_text())
                    break
            else:
                raise SchemaMappingError(f"unknown named type {full!r} (no {full}.avsc)")
        return self.named[full]

    def convert(self, schema: Any, namespace: str, where: str) -> SqlType:
        if isinstance(schema, list):
            return self._union(schema, namespace, where)
        if isinstance(schema, str):
            if schema in AVRO_PRIMITIVES:
                return SqlType(AVRO_PRIMITIVES[schema])
            if schema == "null":
                raise SchemaMappingError(f"{where}: a bare 'null' type has no Flink SQL type")
            return self._record(self.lookup(schema, namespace), namespace, where)
        if not isinstance(schema, dict):
            raise SchemaMappingError(f"{where}: not an Avro schema: {schema!r}")
        t = schema.get("type")
        if schema.get("logicalType"):
            raise SchemaMappingError(
                f"{where}: logical type {schema['logicalType']!r} is not used by the contract "
                "(map it here and in the codec first)")
        if t in AVRO_PRIMITIVES:
            return SqlType(AVRO_PRIMITIVES[t])
        if t == "record":
            full = self._fullname(schema["name"], schema.get("namespace", namespace))
            self.named.setdefault(full, schema)
            return self._record(schema, namespace, where)
        if t == "array":
            return SqlType("ARRAY", element=self.convert(schema["items"], namespace, where + "[]"))
        if t == "map":
            return SqlType("MAP", element=self.convert(schema["values"], namespace,
                                                       where + "{}"))
        if t in ("enum", "fixed"):
            raise SchemaMappingError(
                f"{where}: Avro {t} is not allowed in the contract (schemas/README.md): Flink "
                "SQL's avro format has no matching type")
        return self.convert(t, namespace, where)

    def _union(self, branches: list[Any], namespace: str, where: str) -> SqlType:
        if len(branches) == 2 and branches[0] == "null" and branches[1] != "null":
            inner = self.convert(branches[1], namespace, where)
            return SqlType(inner.kind, True, inner.fields, inner.element)
        if len(branches) == 2 and branches[1] == "null":
            raise SchemaMappingError(
                f"{where}: union {branches!r} has null second; Flink derives ['null', T] "
                "(null first), so the union index byte would differ")
        raise SchemaMappingError(
            f"{where}: union {branches!r}: only ['null', T] unions map to Flink SQL")

    def _record(self, schema: dict[str, Any], namespace: str, where: str) -> SqlType:
        ns = schema.get("namespace", namespace)
        full = self._fullname(schema["name"], ns)
        if full in self.stack:
            raise SchemaMappingError(f"{where}: recursive type {full} has no Flink SQL type")
        self.stack.append(full)
        try:
            fields = tuple(
                (f["name"], self.convert(f["type"], ns, f"{where}.{f['name']}"))
                for f in schema["fields"]
            )
        finally:
            self.stack.pop()
        return SqlType("ROW", fields=fields)


def physical_type(message_type: str, schema_dir: Path = SCHEMA_DIR) -> SqlType:
    """The Flink SQL row type of a message type (``Score``, ...), from its .avsc file.

    >>> print(physical_type("Hop").sql().replace(", ", ",\\n"))
    ROW<`component` STRING NOT NULL,
    `version` STRING NOT NULL,
    `timestamp` BIGINT NOT NULL> NOT NULL
    """
    schema = load_avsc(message_type, schema_dir)
    return _Resolver(schema_dir).convert(schema, schema.get("namespace", ""), message_type)


def avro_shape(schema: Any, schema_dir: Path = SCHEMA_DIR) -> Any:
    """An Avro schema reduced to what decides its binary encoding: named types expanded,
    record names, docs, defaults and namespaces dropped. Two schemas with the same shape
    read and write the same bytes.

    >>> avro_shape(["null", {"type": "map", "values": "double"}])
    ['union', ['null', ['map', 'double']]]
    """
    res = _Resolver(schema_dir)

    def go(s: Any, ns: str) -> Any:
        if isinstance(s, list):
            return ["union", [go(b, ns) for b in s]]
        if isinstance(s, str):
            if s in AVRO_PRIMITIVES or s == "null":
                return s
            return go(res.lookup(s, ns), ns)
        t = s["type"]
        if t == "record":
            ns2 = s.get("namespace", ns)
            return ["record", [[f["name"], go(f["type"], ns2)] for f in s["fields"]]]
        if t == "array":
            return ["array", go(s["items"], ns)]
        if t == "map":
            return ["map", go(s["values"], ns)]
        if t in AVRO_PRIMITIVES or t == "null":
            return t
        if isinstance(t, (dict, list)):
            return go(t, ns)
        return [t, s.get("symbols") or s.get("size")]

    ns0 = schema.get("namespace", "") if isinstance(schema, dict) else ""
    return go(schema, ns0)


# =========================================================================== the tables

#: how far behind the newest event time the watermark runs (out-of-order allowance)
WATERMARK_DELAY = "5"  # seconds
METADATA_COLUMNS = (
    ("kafka_partition", "INT", "partition"),
    ("kafka_offset", "BIGINT", "offset"),
    ("kafka_timestamp", "TIMESTAMP_LTZ(3)", "timestamp"),
)
EXTRA_COLUMNS = ("event_time", "proc_time")


@dataclass(frozen=True)
class TableSpec:
    name: str
    message_type: str
    topic: Callable[[Topics], str]
    doc: str


TABLES: tuple[TableSpec, ...] = (
    TableSpec("scores", "Score", lambda t: t.scores, "one row per model score (Score)"),
    TableSpec("results", "Result", lambda t: t.results,
              "one row per answered request (Result)"),
    TableSpec("input", "Request", lambda t: t.input,
              "augmented requests as the models see them (Request)"),
    TableSpec("deadletter", "DeadLetter", lambda t: t.deadletter,
              "records a job could not use (DeadLetter)"),
    TableSpec("metrics", "Metric", lambda t: t.name("metrics"),
              "windowed metrics and sketches (Metric)"),
)


@dataclass(frozen=True)
class ReadOptions:
    """Where each table starts and whether it stops (see the module doc)."""

    start: str = "earliest"  # earliest | latest | epoch ms
    follow: bool = False
    bootstrap: str = field(default_factory=lambda: Settings.from_env().kafka_bootstrap)

    def connector(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.start == "earliest":
            opts["scan.startup.mode"] = "earliest-offset"
        elif self.start == "latest":
            opts["scan.startup.mode"] = "latest-offset"
        else:
            opts["scan.startup.mode"] = "timestamp"
            opts["scan.startup.timestamp-millis"] = str(int(self.start))
        if not self.follow:
            opts["scan.bounded.mode"] = "latest-offset"
        return opts


def table_ddl(spec: TableSpec, topic: str, read: ReadOptions | None = None,
              schema_dir: Path = SCHEMA_DIR) -> str:
    """``CREATE TEMPORARY TABLE`` for one table over ``topic``.

    >>> ddl = table_ddl(TABLES[0], "scores", ReadOptions(bootstrap="127.0.0.1:9092"))
    >>> print(ddl.splitlines()[1])
      `timestamp` BIGINT NOT NULL,
    >>> "'format' = 'avro'" in ddl and "METADATA FROM 'offset'" in ddl
    True
    """
    read = read or ReadOptions()
    row = physical_type(spec.message_type, schema_dir)
    names = {n for n, _ in row.fields}
    clash = names & ({c for c, _, _ in METADATA_COLUMNS} | set(EXTRA_COLUMNS))
    if clash:
        raise SchemaMappingError(f"{spec.message_type}: field(s) {sorted(clash)} clash with "
                                 "the columns rdv sql adds")
    if "timestamp" not in names:
        raise SchemaMappingError(f"{spec.message_type}: no envelope timestamp for event_time")
    cols = [f"  {quote(n)} {t.sql()}" for n, t in row.fields]
    cols += [f"  {quote(c)} {t} METADATA FROM '{k}' VIRTUAL" for c, t, k in METADATA_COLUMNS]
    cols += [
        "  `event_time` AS CAST(TO_TIMESTAMP_LTZ(`timestamp`, 3) AS TIMESTAMP(3))",
        "  `proc_time` AS PROCTIME()",
        f"  WATERMARK FOR `event_time` AS `event_time` - INTERVAL '{WATERMARK_DELAY}' SECOND",
    ]
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": read.bootstrap,
        "properties.group.id": f"rdv-sql-{uuid.uuid4().hex[:8]}",
        **read.connector(),
        "format": "avro",
    }
    with_ = ",\n".join(f"  '{k}' = '{v}'" for k, v in opts.items())
    return (f"CREATE TEMPORARY TABLE {quote(spec.name)} (\n" + ",\n".join(cols)
            + f"\n) COMMENT '{spec.doc}' WITH (\n{with_}\n)")


# =========================================================================== examples

EXAMPLES: dict[str, tuple[str, str]] = {
    "latency": (
        "per model and minute: scores and the p50/p99 of the model's own predict() latency",
        """\
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start, model_id,
       COUNT(*) AS scores,
       TDIGEST_QUANTILE(latency_us, 0.5) / 1000 AS p50_ms,
       TDIGEST_QUANTILE(latency_us, 0.99) / 1000 AS p99_ms
FROM scores
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), model_id""",
    ),
    "fallback-rate": (
        "per minute: results, how many were answered by fallback or default, the rates, and "
        "the slowest answer",
        """\
SELECT window_start,
       COUNT(*) AS results,
       SUM(CASE WHEN reason = 'fallback' THEN 1 ELSE 0 END) AS fallbacks,
       SUM(CASE WHEN reason IN ('default', 'none') THEN 1 ELSE 0 END) AS defaults,
       ROUND(AVG(CASE WHEN reason = 'fallback' THEN 1.0 ELSE 0.0 END), 4) AS fallback_rate,
       ROUND(AVG(CASE WHEN reason IN ('default', 'none') THEN 1.0 ELSE 0.0 END), 4)
         AS default_rate,
       MAX(waited_ms) AS max_waited_ms
FROM TABLE(TUMBLE(TABLE results, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end""",
    ),
    "canary-disagreement": (
        "each model against the canary, request by request (interval join on request_id): "
        "pairs, mean |difference| of fraud_probability, share differing by more than 0.1, "
        "share with another decision",
        """\
SELECT m.model_id,
       COUNT(*) AS pairs,
       ROUND(AVG(ABS(m.outputs.numbers['fraud_probability']
                     - c.outputs.numbers['fraud_probability'])), 4) AS mean_abs_diff,
       ROUND(AVG(CASE WHEN ABS(m.outputs.numbers['fraud_probability']
                               - c.outputs.numbers['fraud_probability']) > 0.1
                      THEN 1.0 ELSE 0.0 END), 4) AS share_diff_gt_0_1,
       ROUND(AVG(CASE WHEN m.outputs.labels['decision'] <> c.outputs.labels['decision']
                      THEN 1.0 ELSE 0.0 END), 4) AS share_other_decision
FROM scores AS m
JOIN scores AS c
  ON m.request_id = c.request_id
 AND c.event_time BETWEEN m.event_time - INTERVAL '1' MINUTE
                      AND m.event_time + INTERVAL '1' MINUTE
WHERE c.model_id = 'fraud_canary' AND m.model_id <> 'fraud_canary'
  AND m.error IS NULL AND c.error IS NULL
GROUP BY m.model_id""",
    ),
    "answers": (
        "who answered and why: results per answering model and reason, with waiting times",
        """\
SELECT COALESCE(model_id, '(default)') AS answered_by, reason,
       COUNT(*) AS answers,
       ROUND(AVG(CAST(waited_ms AS DOUBLE)), 1) AS avg_waited_ms,
       MAX(waited_ms) AS max_waited_ms
FROM results
GROUP BY COALESCE(model_id, '(default)'), reason""",
    ),
    "score-quantiles": (
        "per model: the distribution of fraud_probability, from per-minute t-digests merged "
        "(the same merge answers any time range)",
        """\
WITH per_minute AS (
  SELECT model_id, TDIGEST(outputs.numbers['fraud_probability']) AS digest
  FROM scores
  WHERE error IS NULL
  GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), model_id
), merged AS (
  SELECT model_id, TDIGEST_MERGE(digest) AS digest FROM per_minute GROUP BY model_id
)
SELECT model_id, DIGEST_COUNT(digest) AS scores,
       DIGEST_QUANTILE(digest, 0.5) AS p50, DIGEST_QUANTILE(digest, 0.9) AS p90,
       DIGEST_QUANTILE(digest, 0.99) AS p99, DIGEST_CDF(digest, 0.5) AS share_le_0_5
FROM merged""",
    ),
    "deadletters": (
        "dead letters per component, source topic and reason (the reason's first clause)",
        """\
SELECT component, source_topic, SPLIT_INDEX(reason, ':', 0) AS reason,
       COUNT(*) AS letters, MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
FROM deadletter
GROUP BY component, source_topic, SPLIT_INDEX(reason, ':', 0)""",
    ),
}


# =========================================================================== running queries


class SqlError(Exception):
    """A query Flink rejected (syntax, unknown column, type error) or a job that failed;
    the message is Flink's, shortened to what names the problem."""


def sql_jars(settings: Settings | None = None) -> list[Path]:
    """The jars of a query's mini-cluster: the avro format and the Kafka connector."""
    s = settings or Settings.from_env()
    jars: list[Path] = []
    for d in ("sql", "flink"):
        found = sorted(Path(p) for p in glob.glob(str(s.home / "jars" / d / "*.jar")))
        if not found:
            raise SqlError(f"no jars in {s.home / 'jars' / d}: run deploy/bootstrap.sh")
        jars += found
    return jars


def start_gateway(settings: Settings | None = None) -> None:
    """Launch pyflink's JVM for ``rdv sql`` (once per process): with the wheel's own Flink
    configuration (not the cluster's, should FLINK_CONF_DIR be set), logs in
    ``$RDV_HOME/sql/`` and the JVM's stdout there too, so that it cannot mix into the
    printed table."""
    import pyflink.java_gateway as jg

    if jg._gateway is not None:
        return
    s = settings or Settings.from_env()
    log_dir = s.home / "sql"
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = ("FLINK_CONF_DIR", "FLINK_LIB_DIR", "FLINK_LOG_DIR")
    saved_env = {k: os.environ.get(k) for k in keys}
    for k in keys[:2]:
        os.environ.pop(k, None)
    os.environ["FLINK_LOG_DIR"] = str(log_dir)
    sys.stdout.flush()
    saved_out = os.dup(1)
    try:
        with open(log_dir / "jvm.out", "ab") as out:
            os.dup2(out.fileno(), 1)
            jg.get_gateway()
    finally:
        os.dup2(saved_out, 1)
        os.close(saved_out)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_env(prefix: str = "", read: ReadOptions | None = None,
               settings: Settings | None = None, parallelism: int = 1,
               tables: Sequence[str] | None = None) -> Any:
    """A streaming TableEnvironment (local mini-cluster) with the tables of ``prefix`` and
    the sketch functions registered."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from udfs.sql_functions import flink_functions

    s = settings or Settings.from_env()
    read = read or ReadOptions(bootstrap=s.kafka_bootstrap)
    start_gateway(s)
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    for k, v in {
        "pipeline.jars": ";".join(p.resolve().as_uri() for p in sql_jars(s)),
        "parallelism.default": str(parallelism),
        "table.local-time-zone": "UTC",
        # group aggregates emit one update per key and batch, not per row
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "500 ms",
        "table.exec.mini-batch.size": "5000",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.time": "200",
    }.items():
        conf.set(k, v)
    if read.follow:
        # windows over topics with idle partitions still close when following. Not when
        # bounded: a partition whose reader starts late would be "idle", the watermark would
        # run ahead on the others, and its records would come late to closed windows
        conf.set("table.exec.source.idle-timeout", "5 s")
    topics = Topics(prefix)
    for spec in TABLES:
        if tables is None or spec.name in tables:
            env.execute_sql(table_ddl(spec, spec.topic(topics), read))
    for name, fn in flink_functions().items():
        env.create_temporary_system_function(name, fn)
    return env


def _short_error(e: BaseException) -> str:
    """Flink's message without the Java stack: the deepest useful 'Caused by' or the
    validation message."""
    text = str(e)
    m = re.search(r"(?:org\.apache\.flink\.table\.api\.(?:SqlParserException|ValidationException)"
                  r"|org\.apache\.calcite\.\S+Exception): (.+?)(?:\n\tat |\nCaused by|$)",
                  text, re.S)
    causes = re.findall(r"Caused by: ([\w.$]+): (.+?)(?:\n\tat |\n\t\.\.\.|$)", text, re.S)
    lines: list[str] = []
    if m:
        lines.append(m.group(1).strip())
    for cls, msg in causes:
        if cls.endswith(("ValidationException", "SqlParseException", "CalciteContextException",
                         "SqlValidatorException", "ParseException")):
            lines.append(msg.strip())
    if not lines and causes:
        cls, msg = causes[-1]
        lines.append(f"{cls.rsplit('.', 1)[-1]}: {msg.strip()}")
    if not lines:
        first = text.strip().splitlines()
        lines.append(first[0] if first else type(e).__name__)
    out: list[str] = []
    for line in lines:
        line = line.split("\nWas expecting")[0].strip()
        if line and line not in out and not any(line in o for o in out):
            out.append(line)
    msg = "\n".join(out[:3])
    if re.search(r"Object '[^']+' not found", msg):
        msg += f" (tables: {', '.join(t.name for t in TABLES)})"
    return msg


@dataclass
class Change:
    kind: str  # +I, -U, +U, -D
    row: tuple[Any, ...]


def _to_python(data: Any, t: Any) -> Any:
    """pyflink's pickled-bytes converter, safe for NULL nested rows, maps and arrays."""
    from pyflink.table.types import ArrayType, MapType, RowType
    from pyflink.table.utils import pickled_bytes_to_python_converter

    if data is None or (isinstance(data, (bytes, bytearray)) and len(data) == 0):
        return None
    if isinstance(t, RowType):
        vals = list(data[1:])
        return {n: _to_python(d, ft) for n, d, ft in zip(t.names, vals, t.field_types(),
                                                         strict=True)}
    if isinstance(t, MapType):
        keys, values = pickle.loads(data)
        return {_to_python(k, t.key_type): _to_python(v, t.value_type)
                for k, v in zip(keys, values, strict=True)}
    if isinstance(t, ArrayType):
        return [_to_python(x, t.element_type) for x in pickle.loads(data)]
    return pickled_bytes_to_python_converter(data, t)


class QueryStream:
    """The changes of a running query, as they arrive; a context manager that cancels the
    query's job on exit. ``columns`` and ``types`` describe the rows."""

    def __init__(self, env: Any, sql: str) -> None:
        from py4j.protocol import Py4JJavaError
        from pyflink.java_gateway import get_gateway
        from pyflink.table.types import _from_java_data_type

        self._gateway = get_gateway()
        #: True when the query only appends rows (no updates or deletes)
        self.insert_only = True
        try:
            self._result = self._execute(env, sql)
        except Py4JJavaError as e:
            raise SqlError(_short_error(e.java_exception)) from None
        except Exception as e:  # noqa: BLE001 - pyflink wraps some Java errors itself
            raise SqlError(_short_error(e)) from None
        j = self._result._j_table_result
        schema = j.getResolvedSchema()
        self.columns: list[str] = list(schema.getColumnNames())
        j_types = self._gateway.jvm.org.apache.flink.table.legacy.api.TableSchema \
            .fromResolvedSchema(schema).getFieldDataTypes()
        self._j_types = j_types
        self.types = [_from_java_data_type(t) for t in j_types]
        self._iter = j.collect()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="rdv-sql-collect")
        self._thread.start()

    def _execute(self, env: Any, sql: str) -> Any:
        """Queries go through the Table API (to learn their changelog mode and to turn
        TIMESTAMP_LTZ columns, which pyflink cannot collect, into UTC TIMESTAMP(3)); other
        statements (SHOW, DESCRIBE, EXPLAIN) through execute_sql."""
        from py4j.protocol import Py4JJavaError
        from pyflink.table import DataTypes
        from pyflink.table.explain_detail import ExplainDetail
        from pyflink.table.expressions import col
        from pyflink.table.types import LocalZonedTimestampType

        try:
            table = env.sql_query(sql)
        except Py4JJavaError as e:
            if "only accepts a single SQL query" not in str(e.java_exception):
                raise
            return env.execute_sql(sql)
        plan = table.explain(ExplainDetail.CHANGELOG_MODE)
        physical = plan.split("== Optimized Physical Plan ==")[-1]
        root = re.search(r"changelogMode=\[([A-Z,]+)\]", physical)
        self.insert_only = root is None or root.group(1) == "I"
        schema = table.get_resolved_schema()
        names = list(schema.get_column_names())
        ltz = [isinstance(t, LocalZonedTimestampType) for t in schema.get_column_data_types()]
        if any(ltz):
            table = table.select(*[
                col(n).cast(DataTypes.TIMESTAMP(3)).alias(n) if z else col(n)
                for n, z in zip(names, ltz, strict=True)])
        return table.execute()

    def _pump(self) -> None:
        bridge = self._gateway.jvm.PythonBridgeUtils
        try:
            while not self._stop.is_set() and self._iter.hasNext():
                data = bridge.getPickledBytesFromRow(self._iter.next(), self._j_types)
                kind = {0: "+I", 1: "-U", 2: "+U", 3: "-D"}[
                    int.from_bytes(data[0], byteorder="big", signed=False)]
                row = tuple(_to_python(d, t) for d, t in zip(list(data[1:]), self.types,
                                                               strict=True))
                self._queue.put(("row", Change(kind, row)))
            self._queue.put(("end", None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            self._queue.put(("error", e) if not self._stop.is_set() else ("end", None))

    def changes(self, timeout: float | None = None) -> Iterator[Change]:
        """Changes until the query ends, or until ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                return
            try:
                what, item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if what == "end":
                return
            if what == "error":
                raise SqlError(_short_error(getattr(item, "java_exception", item))) from None
            yield item

    def close(self) -> None:
        """Cancel the query's job (if it still runs) and release the mini-cluster."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):  # already finished
            client = self._result._j_table_result.getJobClient()
            if client.isPresent():
                client.get().cancel()
        with contextlib.suppress(Exception):  # already closed
            self._iter.close()
        self._thread.join(timeout=10)

    def __enter__(self) -> QueryStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_query(sql: str, prefix: str = "", *, follow: bool = False, start: str = "earliest",
                 settings: Settings | None = None, parallelism: int = 1) -> QueryStream:
    """Start ``sql`` and return its :class:`QueryStream` (use it as a context manager)."""
    s = settings or Settings.from_env()
    env = create_env(prefix, ReadOptions(start, follow, s.kafka_bootstrap), s, parallelism)
    return QueryStream(env, sql.strip().rstrip(";"))


def apply_change(rows: list[tuple[Any, ...]], change: Change) -> None:
    """Apply one changelog entry to a materialised result (insertion order kept).

    >>> rows = []
    >>> for k, r in [("+I", ("a", 1)), ("-U", ("a", 1)), ("+U", ("a", 2)), ("+I", ("b", 1)),
    ...              ("-D", ("b", 1))]:
    ...     apply_change(rows, Change(k, r))
    >>> rows
    [('a', 2)]
    """
    if change.kind in ("+I", "+U"):
        rows.append(change.row)
    else:
        for i in range(len(rows) - 1, -1, -1):
            if rows[i] == change.row:
                del rows[i]
                return


def run_query(sql: str, prefix: str = "", limit: int | None = None,
              timeout: float | None = None, *, follow: bool = False, start: str = "earliest",
              settings: Settings | None = None) -> list[tuple[Any, ...]]:
    """Run ``sql`` over the tables of ``prefix`` and return the result rows.

    Updates are applied (a grouped aggregate's final rows, not its changelog). Without
    ``follow`` the tables end at the offsets of the start, so the query finishes on its own;
    ``limit`` (changes received) and ``timeout`` (seconds) stop it earlier. With ``follow``
    give a ``limit`` or a ``timeout``. Raises :class:`SqlError` with Flink's message.
    """
    if follow and limit is None and timeout is None:
        raise ValueError("a followed query needs a limit or a timeout")
    rows: list[tuple[Any, ...]] = []
    with stream_query(sql, prefix, follow=follow, start=start, settings=settings) as q:
        for n, change in enumerate(q.changes(timeout), start=1):
            apply_change(rows, change)
            if limit is not None and n >= limit:
                break
    return rows


# =========================================================================== printing


def format_value(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=format_value, separators=(",", ":"))
    return str(v)


class TablePrinter:
    """Prints rows as an aligned table as they arrive: widths from the header and the rows
    seen so far (a wider value widens its column from then on)."""

    def __init__(self, columns: Sequence[str], out: TextIO, op: bool = True,
                 max_width: int = 60, min_widths: Sequence[int] | None = None) -> None:
        self.columns = (["op"] if op else []) + list(columns)
        self.op = op
        self.out = out
        self.max_width = max_width
        mins = ([2] if op else []) + list(min_widths or [4] * len(columns))
        self.widths = [max(len(c), m) for c, m in zip(self.columns, mins, strict=True)]
        self.numeric: list[bool] = [False] * len(self.columns)
        self.rows = 0

    def _cells(self, values: Sequence[Any]) -> list[str]:
        cells = []
        for v in values:
            s = format_value(v) if not isinstance(v, str) else v
            cells.append(s if len(s) <= self.max_width else s[: self.max_width - 1] + "…")
        return cells

    def _line(self, cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, self.widths, strict=True)):
            parts.append(c.rjust(w) if self.numeric[i] else c.ljust(w))
        return " | ".join(parts).rstrip()

    def header(self) -> None:
        print(self._line(self.columns), file=self.out)
        print("-+-".join("-" * w for w in self.widths), file=self.out, flush=True)

    def fit(self, rows: Sequence[Sequence[Any]]) -> None:
        """Widen the columns for rows known in advance (a final result)."""
        for r in rows:
            for i, c in enumerate(self._cells((["+I"] if self.op else []) + list(r))):
                self.widths[i] = max(self.widths[i], len(c))

    def row(self, kind: str, values: Sequence[Any]) -> None:
        raw = ([kind] if self.op else []) + list(values)
        if self.rows == 0:
            self.numeric = [isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in raw]
        cells = self._cells(raw)
        grew = False
        for i, c in enumerate(cells):
            if len(c) > self.widths[i]:
                self.widths[i] = len(c)
                grew = True
        if self.rows == 0 or (grew and self.rows % 50 == 0):
            self.header()
        print(self._line(cells), file=self.out, flush=True)
        self.rows += 1


# =========================================================================== CLI


def _type_width(t: Any) -> int:
    """A starting column width by type, so that rows printed as they arrive line up."""
    name = type(t).__name__
    if "Timestamp" in name:
        return 23
    if name in ("VarCharType", "CharType"):
        return 14
    if name in ("DoubleType", "FloatType", "DecimalType", "BigIntType"):
        return 8
    return 4


def _describe() -> str:
    lines = ["tables (topic = prefix + name; results: results-<prefix>):"]
    for spec in TABLES:
        lines.append(f"  {spec.name:<11} {spec.doc}")
    lines.append("  every table: the message's fields (schemas/*.avsc), kafka_partition, "
                 "kafka_offset, kafka_timestamp, event_time (envelope timestamp, watermarked "
                 f"{WATERMARK_DELAY} s behind), proc_time")
    from udfs.sql_functions import FUNCTIONS

    lines.append("functions:")
    lines += [f"  {h}" for _, h in FUNCTIONS.values()]
    lines.append("examples (rdv sql --example NAME):")
    lines += [f"  {n:<20} {d}" for n, (d, _) in EXAMPLES.items()]
    return "\n".join(lines)


def _check_start(text: str) -> str:
    if text in ("earliest", "latest") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError("expected earliest, latest or an epoch-ms timestamp")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sql`` to the ``rdv`` subcommands."""
    from rdv.cli import _prefix

    p = subparsers.add_parser(
        "sql", help="run a Flink SQL query over scores, results, input, ...",
        description="Run a Flink SQL query over the topics (decoded with the Avro contract) in "
        "a local Flink inside this process (the cluster is not touched) and print rows as "
        "they arrive. By default every table is read from the earliest offset to the end "
        "offsets at start, so the query ends and windows close; --follow keeps reading new "
        "records until --limit rows, --timeout seconds or Ctrl-C.",
        epilog=_describe() + "\n\nexamples:\n  rdv sql \"SELECT model_id, COUNT(*) FROM scores "
        "GROUP BY model_id\"\n  rdv sql --example latency --follow --timeout 120",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="?", help="the SQL query (or use --example)")
    p.add_argument("--example", choices=sorted(EXAMPLES), metavar="NAME",
                   help="run one of the documented queries: " + ", ".join(EXAMPLES))
    p.add_argument("--show", action="store_true",
                   help="print the query (with --example) or the table DDL, and exit")
    p.add_argument("--prefix", type=_prefix, default="",
                   help="topic prefix of the pipeline to query (default: the system topics)")
    p.add_argument("--follow", action="store_true",
                   help="keep reading new records (stop with --limit, --timeout or Ctrl-C)")
    p.add_argument("--start", type=_check_start, default="earliest",
                   help="where to start reading: earliest (default), latest, or epoch ms")
    p.add_argument("--limit", type=_positive_int, help="stop after this many rows (changes)")
    p.add_argument("--timeout", type=_positive_float, help="stop after this many seconds")
    p.set_defaults(func=_cmd_sql)
    return p


def _cmd_sql(args: argparse.Namespace) -> int:
    return sql_command(args.query, example=args.example, prefix=args.prefix,
                       follow=args.follow, start=args.start, limit=args.limit,
                       timeout=args.timeout, show=args.show)


def sql_command(query: str | None, *, example: str | None = None, prefix: str = "",
                follow: bool = False, start: str = "earliest", limit: int | None = None,
                timeout: float | None = None, show: bool = False,
                out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``rdv sql``: 0 ok, 1 the query failed while running, 2 bad query or arguments."""
    out = out or sys.stdout
    err = err or sys.stderr
    if example and query:
        print("rdv sql: error: give a query or --example, not both", file=err)
        return 2
    sql = EXAMPLES[example][1] if example else query
    if show:
        if sql:
            print(sql, file=out)
        else:
            topics = Topics(prefix)
            for spec in TABLES:
                print(table_ddl(spec, spec.topic(topics),
                                ReadOptions(start, follow)) + ";\n", file=out)
        return 0
    if not sql:
        print("rdv sql: error: no query (give one, or --example NAME; see rdv sql --help)",
              file=err)
        return 2
    from rdv.commands import existing_topics
    from rdv.platform import PlatformError

    try:
        have = existing_topics()
    except PlatformError as e:
        print(f"rdv sql: error: {e}", file=err)
        return 2
    used = [s for s in TABLES if re.search(rf"\b{s.name}\b", sql, re.I)]
    missing = [s.topic(Topics(prefix)) for s in used if s.topic(Topics(prefix)) not in have]
    if missing:
        print(f"rdv sql: error: topic(s) {', '.join(missing)} do not exist "
              f"(prefix {prefix!r}); check --prefix", file=err)
        return 2
    t0 = time.monotonic()
    n = 0
    started = False
    try:
        with stream_query(sql, prefix, follow=follow, start=start) as q:
            started = True
            # appended rows print as they arrive; an updating result prints its changes
            # (op column) when following, else its final rows when the query ends
            final = not q.insert_only and not follow
            printer = TablePrinter(q.columns, out, op=not q.insert_only and follow,
                                   min_widths=[_type_width(t) for t in q.types])
            rows: list[tuple[Any, ...]] = []
            if final:
                print("(updating result: the final rows follow when the query ends)",
                      file=err, flush=True)
            try:
                for change in q.changes(timeout):
                    n += 1
                    if final:
                        apply_change(rows, change)
                    else:
                        printer.row(change.kind, change.row)
                    if limit is not None and n >= limit:
                        break
            except KeyboardInterrupt:
                print("(interrupted)", file=err)
            if final:
                printer.fit(rows)
                for r in rows:
                    printer.row("+I", r)
                n = len(rows)
            if printer.rows == 0:
                printer.header()
    except SqlError as e:
        print(f"rdv sql: error: {e}", file=err)
        return 1 if started else 2
    print(f"({n} row{'s' if n != 1 else ''} in {time.monotonic() - t0:.1f} s)", file=err)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rdv.sql ...`` (until ``rdv/cli.py`` wires :func:`register`)."""
    parser = argparse.ArgumentParser(prog="rdv")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = parser.parse_args(["sql", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["EXAMPLES", "TABLES", "SqlError", "SqlType", "run_query", "stream_query",
           "register", "physical_type", "table_ddl", "avro_shape"]
