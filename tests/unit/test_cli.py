"""The ``rdv`` command line without a platform: parsing, validation errors (exit 2 with a
message that says what to do), and the pure helpers of the commands and the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rdv import commands
from rdv.cli import build_parser, main
from rdv.demo import MEASURED, WARMUP, Stats, Tally, percentile
from udfs.model_package import load_manifest
from udfs.schedule import parse_schedule

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``rdv argv``; argparse errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def no_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach Kafka or Flink: fail loudly if a command tries."""

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a unit test reached Kafka or Flink")

    monkeypatch.setattr(commands, "existing_topics", refuse)
    monkeypatch.setattr(commands, "live_jobs", refuse)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "COMMAND"),
        (["model"], "ACTION"),
        (["model", "deploy"], "path"),
        (["model", "retire"], "name"),
        (["schedule"], "ACTION"),
        (["schedule", "set"], "file"),
        (["schedule", "check"], "file"),
        (["replay", "/tmp"], "--topic"),
        (["replay"], "archive_dir"),
        (["demo", "--rate", "0"], "--rate"),
        (["demo", "--rate", "fast"], "'fast' is not a number"),
        (["demo", "--seconds", "-3"], "--seconds"),
        (["demo", "--rate", "nan"], "--rate"),
        (["demo", "--warmup", "-1"], "--warmup"),
        (["demo", "--keep", "--stop"], "not allowed with"),
        (["train", "--n", "10"], "must be an integer >= 1000"),
        (["train", "--models", "fraud_xyz"], "invalid choice"),
        (["send", "--timeout", "0"], "--timeout"),
        (["send", "--amount", "lots"], "--amount"),
        (["send", "--prefix", "bad prefix!"], "letters, digits"),
        (["model", "deploy", "models/fraud_gbm", "--parallelism", "0"], "--parallelism"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2
    assert needle in err


def test_existing_commands_still_parse() -> None:
    p = build_parser()
    assert p.parse_args(["up"]).cmd == "up"
    assert p.parse_args(["status"]).cmd == "status"
    ns = p.parse_args(["job", "submit", "passthrough", "--source-topic", "a"])
    assert ns.name == "passthrough" and ns.job_args == ["--source-topic", "a"]
    assert p.parse_args(["job", "savepoint", "abc", "--stop"]).stop


def test_defaults() -> None:
    p = build_parser()
    d = p.parse_args(["demo"])
    assert (d.rate, d.seconds, d.warmup, d.keep, d.stop, d.prefix) == (
        50.0, 30.0, 30.0, False, False, "")
    s = p.parse_args(["send"])
    assert (s.timeout, s.prefix, s.json, s.amount) == (5.0, "", None, None)
    assert p.parse_args(["model", "list"]).prefix is None
    assert p.parse_args(["train"]).n == 50_000


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["train"], ["model", "deploy"], ["model", "list"], ["model", "retire"],
                 ["schedule", "set"], ["schedule", "check"], ["schedule", "show"], ["send"],
                 ["replay"], ["demo"]):
        code, out, _ = run([*argv, "--help"], capsys)
        assert code == 0 and "usage: rdv" in out


def test_installed_commands() -> None:
    assert {"up", "down", "status", "job", "train", "model", "schedule", "send", "replay",
            "demo"} <= commands.installed_commands()


# --------------------------------------------------------------------------- schedules


def test_bad_schedule_file_prints_every_problem(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("id: x\nstages: [{model: A, wait_ms: soon}]\nbogus: 1\n")
    for action in ("check", "set"):  # set validates before it contacts Kafka
        code, out, err = run(["schedule", action, str(f)], capsys)
        assert code == 2, action
        assert "3 problems" in err
        assert "stages[0].wait_ms: must be a non-negative integer" in err
        assert "deadline_ms: required" in err
        assert "bogus: unknown field" in err
        assert out == ""


def test_schedule_file_not_yaml_nor_there(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["schedule", "check", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run(["schedule", "check", str(tmp_path)], capsys)
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed\n")
    code, _, err = run(["schedule", "check", str(bad)], capsys)
    assert code == 2 and "neither JSON" in err


def test_schedule_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schedule", "check", str(REPO / "models" / "demo-schedule.yaml")],
                       capsys)
    assert code == 0
    assert "valid" in out and "deadline 50 ms" in out and "fraud_canary" in out


def test_describe_and_notes() -> None:
    s = parse_schedule({"id": "a", "stages": [{"model": "A", "wait_ms": 20},
                                              {"model": "B", "wait_ms": 35}],
                        "deadline_ms": 50, "ignore": ["C"]})
    text = "\n".join(commands.describe_schedule(s))
    assert "1. A" in text and "accepted from   20 ms, preferred until 35 ms" in text
    assert "never answer (recorded only): C" in text
    assert commands.schedule_notes(s) == []
    zero = parse_schedule({"id": "b", "stages": [{"model": "A", "wait_ms": 0},
                                                 {"model": "B", "wait_ms": 20}],
                           "deadline_ms": 50})
    assert "preferred for 0 ms" in commands.schedule_notes(zero)[0]
    split = parse_schedule({"id": "c", "deadline_ms": 50, "split": {
        "field": "entity_key", "variants": [
            {"name": "old", "weight": 90, "stages": [{"model": "A", "wait_ms": 20}]},
            {"name": "new", "weight": 10, "stages": [{"model": "B", "wait_ms": 20}]}]}})
    text = "\n".join(commands.describe_schedule(split))
    assert "traffic split by entity_key" in text and "'new', 10% of traffic" in text


# --------------------------------------------------------------------------- models


def test_deploy_rejects_bad_packages(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["model", "deploy", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such directory" in err
    code, _, err = run(["model", "deploy", str(tmp_path)], capsys)
    assert code == 2 and "no manifest.yaml" in err

    pkg = tmp_path / "broken"
    shutil.copytree(REPO / "models" / "fraud_rules", pkg)
    text = (pkg / "manifest.yaml").read_text().replace("name: fraud_rules", "name: Bad Name")
    (pkg / "manifest.yaml").write_text(text)
    code, _, err = run(["model", "deploy", str(pkg)], capsys)
    assert code == 2 and "invalid model package" in err and "'name'" in err

    untrained = tmp_path / "fraud_rules"
    shutil.copytree(REPO / "models" / "fraud_rules", untrained)
    artifact = load_manifest(untrained).artifacts[0]
    (untrained / artifact).unlink()
    code, _, err = run(["model", "deploy", str(untrained)], capsys)
    assert code == 2 and f"{artifact} missing" in err and "rdv train" in err


def test_retire_and_list_validate_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["model", "retire", "fraud_gbm", "--prefix", "a/b"], capsys)
    assert code == 2 and "--prefix" in err


# --------------------------------------------------------------------------- send, replay


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "must be an object"),
        ('{"numbers": {"amount": "x"}}', "numbers.amount must be a number"),
        ('{"numbers": {"flag": true}}', "numbers.flag must be a number"),
        ('{"labels": {"country": 1}}', "labels.country must be a string"),
        ('{"numbers": [1]}', "numbers must be an object"),
        ('{"extra": {}}', "unknown key(s) extra"),
    ],
)
def test_send_rejects_bad_json(text: str, needle: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["send", "--json", text], capsys)
    assert code == 2 and needle in err


def test_parse_inputs() -> None:
    got = commands.parse_inputs('{"numbers": {"amount": 3}, "labels": {"country": "US"}}')
    assert got == {"numbers": {"amount": 3.0}, "labels": {"country": "US"}, "refs": {}}
    assert set(commands.default_inputs()) == {"numbers", "labels", "refs"}


def test_replay_needs_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["replay", str(tmp_path / "none"), "--topic", "t"], capsys)
    assert code == 2 and "no such directory" in err
    code, _, err = run(["replay", str(tmp_path), "--topic", "t"], capsys)
    assert code == 2 and "no archive files" in err


# --------------------------------------------------------------------------- demo helpers


def test_percentile() -> None:
    xs = sorted(float(i) for i in range(1, 101))
    assert percentile(xs, 50) == 50.0
    assert percentile(xs, 99) == 99.0
    assert percentile(xs, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # nan


def test_stats_by_phase_and_window() -> None:
    st = Stats()
    st.on_send("a", WARMUP)
    st.on_send("b", MEASURED)
    st.on_send("c", MEASURED)
    st.on_result("a", {"model_id": "m1", "reason": "preferred"}, 5)
    st.on_result("b", {"model_id": None, "reason": "default"}, 50)
    st.on_result("zzz", {"model_id": "m1", "reason": "preferred"}, 5)  # not ours: ignored
    assert st.phases[WARMUP].answered == 1 and st.phases[MEASURED].answered == 1
    assert st.outstanding() == 1 and st.outstanding(MEASURED) == 1
    w, outstanding = st.take_window()
    assert (w.sent, w.answered, outstanding) == (3, 2, 1)
    assert st.take_window()[0].sent == 0
    m = st.phases[MEASURED]
    assert m.answers == {("(default)", "default"): 1}
    assert m.share(("default", "none")) == 100.0


def test_tally_shares() -> None:
    t = Tally()
    for who, reason in [("gbm", "preferred")] * 3 + [("logreg", "fallback")]:
        t.add(who, reason, 1.0)
    assert t.share(("fallback",)) == 25.0
    assert t.by_who() == [("gbm", 75.0), ("logreg", 25.0)]
    assert Tally().share(("fallback",)) == 0.0


def test_run_script_is_executable_bash() -> None:
    script = REPO / "deploy" / "run.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "bootstrap.sh" in text and "rdv\" demo" in text
