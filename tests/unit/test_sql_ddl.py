"""rdv sql without a JVM: the Avro -> Flink SQL mapping of the contract, the DDL, and that
the Avro schema Flink derives from each table reads the codec's bytes (decoded here with
fastavro; tests/integration/test_sql.py checks the same against Flink's own converter and
by reading records from Kafka)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from rdv import sql
from rdv.pipeline import Topics
from udfs.codec import MESSAGE_TYPES, codec_for, dead_letter, envelope


def _score(**over: object) -> dict:
    rec = envelope("score", "1", tags={"channel": "web"})
    rec["provenance"]["trace"] = {"trace_id": "t" * 32, "parent_span_id": None}
    rec["diagnostics"] = {"trace": True, "log_level": None, "fallback_schedule": "safe",
                          "faults": [{"target": "fraud_gbm", "kind": "delay", "delay_ms": 7}]}
    rec.update(request_id="r-1", entity_key="card-1", model_id="fraud_gbm", model_version="3",
               outputs={"numbers": {"fraud_probability": 0.25}, "labels": {"decision": "ok"},
                        "refs": {}},
               latency_us=123, request_timestamp=rec["timestamp"] - 5, error=None)
    rec.update(over)
    return rec


def _flink_decode(message_type: str, data: bytes) -> dict:
    derived = fastavro.parse_schema(sql.physical_type(message_type).avro())
    buf = io.BytesIO(data)
    rec = fastavro.schemaless_reader(buf, derived, None)
    assert buf.tell() == len(data), "the derived schema must consume exactly the bytes"
    assert isinstance(rec, dict)
    return rec


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_every_message_type_maps_with_the_same_binary_shape(message_type: str) -> None:
    t = sql.physical_type(message_type)
    assert t.kind == "ROW" and not t.nullable
    assert sql.avro_shape(t.avro()) == sql.avro_shape(sql.load_avsc(message_type))


def test_field_order_nullability_and_types_of_score() -> None:
    t = sql.physical_type("Score")
    names = [n for n, _ in t.fields]
    assert names == [f["name"] for f in json.loads(
        (sql.SCHEMA_DIR / "Score.avsc").read_text())["fields"]]
    types = dict(t.fields)
    assert types["timestamp"].sql() == "BIGINT NOT NULL"
    assert types["error"].sql() == "STRING"  # ["null", "string"]
    assert types["diagnostics"].nullable and types["diagnostics"].kind == "ROW"
    assert types["outputs"].sql() == (
        "ROW<`numbers` MAP<STRING NOT NULL, DOUBLE NOT NULL> NOT NULL, "
        "`labels` MAP<STRING NOT NULL, STRING NOT NULL> NOT NULL, "
        "`refs` MAP<STRING NOT NULL, STRING NOT NULL> NOT NULL> NOT NULL")
    hops = dict(types["provenance"].fields)["hops"]
    assert hops.sql().startswith("ARRAY<ROW<`component` STRING NOT NULL")


def test_codec_bytes_decode_with_the_derived_schema() -> None:
    rec = _score()
    assert _flink_decode("Score", codec_for("Score").encode(rec)) == rec
    bare = _score(diagnostics=None, error="boom")
    bare["provenance"]["trace"] = None
    assert _flink_decode("Score", codec_for("Score").encode(bare)) == bare
    dl = dead_letter("augment", "bad: x", b"\x00\xff", key=b"k", source_topic="raw",
                     partition=1, offset=9)
    assert _flink_decode("DeadLetter", codec_for("DeadLetter").encode(dl)) == dl


def test_a_wrong_nullability_changes_the_shape() -> None:
    t = sql.physical_type("Hop")
    wrong = sql.SqlType("ROW", fields=tuple(
        (n, sql.SqlType(ft.kind, nullable=True)) for n, ft in t.fields))
    assert sql.avro_shape(wrong.avro()) != sql.avro_shape(sql.load_avsc("Hop"))


def _schema_dir(tmp_path: Path, fields: list) -> Path:
    (tmp_path / "X.avsc").write_text(json.dumps(
        {"type": "record", "name": "X", "namespace": "rdv", "fields": fields}))
    return tmp_path


@pytest.mark.parametrize("bad, message", [
    ({"name": "u", "type": ["string", "null"]}, "null second"),
    ({"name": "u", "type": ["null", "string", "long"]}, "only ['null', T]"),
    ({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}, "enum"),
    ({"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}}, "fixed"),
    ({"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}, "logical"),
    ({"name": "n", "type": "rdv.Nope"}, "unknown named type"),
])
def test_unmappable_avro_is_a_clear_error(tmp_path: Path, bad: dict, message: str) -> None:
    d = _schema_dir(tmp_path, [bad])
    with pytest.raises(sql.SchemaMappingError, match=message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(")):
        sql.physical_type("X", d)


def test_recursive_records_are_rejected(tmp_path: Path) -> None:
    d = _schema_dir(tmp_path, [{"name": "next", "type": ["null", "rdv.X"]}])
    with pytest.raises(sql.SchemaMappingError, match="recursive"):
        sql.physical_type("X", d)


def test_ddl_has_metadata_time_attributes_and_reading_options() -> None:
    spec = {s.name: s for s in sql.TABLES}["results"]
    topic = spec.topic(Topics("p1-"))
    assert topic == "results-p1"
    ddl = sql.table_ddl(spec, topic, sql.ReadOptions(bootstrap="h:1"))
    assert "CREATE TEMPORARY TABLE `results`" in ddl
    assert "`kafka_partition` INT METADATA FROM 'partition' VIRTUAL" in ddl
    assert "`kafka_offset` BIGINT METADATA FROM 'offset' VIRTUAL" in ddl
    assert "WATERMARK FOR `event_time`" in ddl and "PROCTIME()" in ddl
    assert "'scan.startup.mode' = 'earliest-offset'" in ddl
    assert "'scan.bounded.mode' = 'latest-offset'" in ddl
    assert "'topic' = 'results-p1'" in ddl and "'format' = 'avro'" in ddl
    follow = sql.table_ddl(spec, topic, sql.ReadOptions("1700000000000", True, "h:1"))
    assert "scan.bounded.mode" not in follow
    assert "'scan.startup.timestamp-millis' = '1700000000000'" in follow
    assert sql.table_ddl(spec, topic, sql.ReadOptions("latest", True, "h:1")).count(
        "latest-offset") == 1


def test_every_table_has_a_schema_and_the_examples_name_known_tables() -> None:
    names = {s.name for s in sql.TABLES}
    assert {"scores", "results", "input"} <= names
    for spec in sql.TABLES:
        sql.table_ddl(spec, "t", sql.ReadOptions(bootstrap="h:1"))
    assert len(sql.EXAMPLES) >= 5
    for _, query in sql.EXAMPLES.values():
        assert any(f" {n}" in query for n in names)


def test_cli_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rdv")
    sub = parser.add_subparsers(dest="cmd")
    sql.register(sub)
    args = parser.parse_args(["sql", "--example", "answers", "--prefix", "x-", "--follow",
                              "--limit", "5", "--timeout", "2.5"])
    assert (args.example, args.prefix, args.follow, args.limit, args.timeout) == (
        "answers", "x-", True, 5, 2.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["sql", "SELECT 1", "--limit", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["sql", "SELECT 1", "--start", "yesterday"])
    assert sql.sql_command(None) == 2
    assert sql.sql_command("SELECT 1", example="answers") == 2
    assert sql.sql_command(None, example="answers", show=True) == 0
    assert "FROM results" in capsys.readouterr().out


def test_table_printer_aligns_columns() -> None:
    out = io.StringIO()
    p = sql.TablePrinter(["model_id", "n"], out, op=False)
    p.row("+I", ("fraud_gbm", 12))
    p.row("+I", ("b", 3))
    lines = out.getvalue().splitlines()
    assert lines[0] == "model_id  |    n" and lines[2] == "fraud_gbm |   12"
    assert lines[3] == "b         |    3"


def test_short_error_keeps_flinks_message() -> None:
    text = ("org.apache.flink.table.api.ValidationException: SQL validation failed. From line 1,"
            " column 15 to line 1, column 20: Object 'nosuch' not found\n\tat org.apache.x(Y)"
            "\nCaused by: org.apache.calcite.runtime.CalciteContextException: From line 1, "
            "column 15 to line 1, column 20: Object 'nosuch' not found\n\tat z")
    msg = sql._short_error(Exception(text))
    assert msg.startswith("SQL validation failed. From line 1, column 15")
    assert "tables: scores, results, input" in msg and "\tat" not in msg
