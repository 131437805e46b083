"""Model package format and loader: manifest validation, loading, inputs, outputs, scores."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from udfs.codec import codec_for, envelope
from udfs.model_package import (
    LoadedModel,
    ManifestError,
    ModelLoadError,
    ModelOutputError,
    build_score,
    extract_inputs,
    load_manifest,
    load_model,
    requirement_mismatches,
    score_request,
)

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"

MANIFEST = """\
name: toy
version: "3"
entry_point: model:predict
inputs:
  - inputs.numbers.amount
  - inputs.labels.country
  - external_state.numbers.avg_amount
  - internal_state.card_velocity_kmh
outputs: [numbers.fraud_probability, labels.decision]
requirements: requirements.txt
artifacts: [weights.txt]
"""

FUNCTION_MODEL = """\
from pathlib import Path

WEIGHT = float((Path(__file__).parent / "weights.txt").read_text())
SEEN = []

def predict(inputs):
    SEEN.append(dict(inputs))
    p = min(1.0, (inputs["inputs.numbers.amount"] or 0.0) * WEIGHT)
    return {"numbers": {"fraud_probability": p},
            "labels": {"decision": "decline" if p > 0.5 else "approve"}}
"""

CLASS_MODEL = """\
from pathlib import Path

class Model:
    def __init__(self, package_dir):
        self.weight = float((Path(package_dir) / "weights.txt").read_text())

    def predict(self, inputs):
        return {"numbers": {"fraud_probability": self.weight}, "labels": {"decision": "review"}}
"""


def make_package(root: Path, manifest: str = MANIFEST, code: str = FUNCTION_MODEL,
                 files: dict[str, str] | None = None, module: str = "model.py") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.yaml").write_text(manifest)
    (root / module).write_text(code)
    (root / "requirements.txt").write_text("# pure python\n")
    (root / "weights.txt").write_text("0.01\n")
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def request(**over: Any) -> dict[str, Any]:
    rec = envelope("demo-client", "0.1.0", tags={"channel": "pos"})
    rec["provenance"]["trace"] = {"trace_id": "t" * 32, "parent_span_id": None}
    rec.update(
        request_id="r-1",
        entity_key="card-1",
        return_address="results",
        inputs={"numbers": {"amount": 20.0, "hour": 3.0}, "labels": {"country": "GB"},
                "refs": {}},
        external_state={"source": "profiles", "as_of": 1, "numbers": {"avg_amount": 50.0},
                        "labels": {}, "missing": []},
        internal_state={"card_velocity_kmh": 12.5},
    )
    rec.update(over)
    return rec


# --------------------------------------------------------------------------- manifest


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (lambda m: m.replace('version: "3"\n', ""), "version", "missing"),
        (lambda m: m + "colour: blue\n", "colour", "unknown field"),
        (lambda m: m.replace("name: toy", "name: Toy Model"), "name", "[a-z0-9]"),
        (lambda m: m.replace("model:predict", "model.py"), "entry_point", "module:function"),
        (lambda m: m.replace("model:predict", "other:predict"), "entry_point", "other.py"),
        (lambda m: m.replace("inputs.labels.country", "inputs.country"), "inputs",
         "internal_state.<key>"),
        (lambda m: m.replace("internal_state.card_velocity_kmh", "external_state.refs.x"),
         "inputs", "external_state.(numbers|labels)"),
        (lambda m: m.replace("labels.decision", "decision"), "outputs", "(numbers|labels|refs)"),
        (lambda m: m.replace("[numbers.fraud_probability,", "[labels.decision,"), "outputs",
         "duplicate"),
        (lambda m: m + "stateful: maybe\n", "stateful", "true or false"),
        (lambda m: m.replace("requirements.txt", "reqs.txt"), "requirements", "not found"),
        (lambda m: m.replace("[weights.txt]", "[../secret]"), "artifacts", "inside the package"),
    ],
)
def test_manifest_errors_name_file_field_and_fix(tmp_path: Path, edit: Any, field: str,
                                                 says: str) -> None:
    pkg = make_package(tmp_path / "p", edit(MANIFEST))
    with pytest.raises(ManifestError) as e:
        load_manifest(pkg)
    assert e.value.field == field
    assert str(pkg / "manifest.yaml") in str(e.value)
    assert says in str(e.value)


def test_manifest_requires_pinned_requirements(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", files={"requirements.txt": "numpy>=1.0\n"})
    with pytest.raises(ManifestError, match="'numpy>=1.0' is not pinned; write name==version"):
        load_manifest(pkg)


def test_manifest_not_found_or_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.yaml"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ManifestError, match="YAML mapping"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path)


def test_manifest_fields(tmp_path: Path) -> None:
    m = load_manifest(make_package(tmp_path / "p", MANIFEST.replace('"3"', "3")))
    assert (m.name, m.version, m.stateful, m.artifacts) == ("toy", "3", False, ("weights.txt",))
    assert m.inputs[2] == "external_state.numbers.avg_amount"
    assert m.module_file == (tmp_path / "p" / "model.py").resolve()


def test_repo_packages_have_valid_manifests() -> None:
    for name in ("fraud_logreg", "fraud_gbm", "fraud_rules", "fraud_canary"):
        m = load_manifest(REPO_MODELS / name)
        assert m.name == name
        assert {"numbers.fraud_probability", "labels.decision"} <= set(m.outputs)
    gbm = load_manifest(REPO_MODELS / "fraud_gbm")
    assert requirement_mismatches(gbm) == [], "pins must match the venv the model is trained in"


# --------------------------------------------------------------------------- loading


def test_function_entry_point_loads_artifacts_relative_to_package(tmp_path: Path) -> None:
    path_before = list(sys.path)
    model = load_model(make_package(tmp_path / "p"))
    assert sys.path == path_before
    outputs, state = model.predict(request())
    assert outputs == {"numbers": {"fraud_probability": 0.2}, "labels": {"decision": "approve"},
                       "refs": {}}
    assert state is None


def test_class_entry_point_gets_package_dir(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", MANIFEST.replace("model:predict", "model:Model"),
                       CLASS_MODEL)
    outputs, _ = load_model(pkg).predict(request())
    assert outputs["numbers"]["fraud_probability"] == 0.01


def test_same_module_name_in_two_packages_does_not_clash(tmp_path: Path) -> None:
    a = load_model(make_package(tmp_path / "a"))
    b = load_model(make_package(tmp_path / "b", files={"weights.txt": "0.04"}))
    assert a.predict(request())[0]["numbers"]["fraud_probability"] == pytest.approx(0.2)
    assert b.predict(request())[0]["numbers"]["fraud_probability"] == pytest.approx(0.8)


def test_missing_artifact_says_to_train(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p")
    (pkg / "weights.txt").unlink()
    with pytest.raises(ManifestError, match="artifact weights.txt not found.*udfs.demo.train"):
        load_model(pkg)


def test_broken_entry_points(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="import failed: ZeroDivisionError"):
        load_model(make_package(tmp_path / "a", code="x = 1 / 0\n"))
    with pytest.raises(ManifestError, match="has no 'predict'"):
        load_model(make_package(tmp_path / "b", code="def other(inputs): pass\n"))
    bad_init = "class Model:\n    def __init__(self, d):\n        raise OSError('no GPU')\n"
    with pytest.raises(ModelLoadError, match=r"Model\(package_dir\) failed: OSError: no GPU"):
        load_model(make_package(tmp_path / "c", MANIFEST.replace("model:predict", "model:Model"),
                                bad_init))


# --------------------------------------------------------------------------- inputs


def test_extract_inputs_respects_declared_inputs(tmp_path: Path) -> None:
    model = load_model(make_package(tmp_path / "p"))
    got = model.extract_inputs(request())
    assert got == {
        "inputs.numbers.amount": 20.0,
        "inputs.labels.country": "GB",
        "external_state.numbers.avg_amount": 50.0,
        "internal_state.card_velocity_kmh": 12.5,
    }  # hour is in the request but not declared: the model does not see it


def test_missing_external_state_gives_none_not_invented_values(tmp_path: Path) -> None:
    model = load_model(make_package(tmp_path / "p"))
    missing = {"source": "profiles", "as_of": None, "numbers": {}, "labels": {},
               "missing": ["profile"]}
    for req in (request(external_state=None, internal_state=None),
                request(external_state=missing, internal_state={})):
        got = model.extract_inputs(req)
        assert got == {"inputs.numbers.amount": 20.0, "inputs.labels.country": "GB",
                       "external_state.numbers.avg_amount": None,
                       "internal_state.card_velocity_kmh": None}
    empty = model.extract_inputs(request(inputs={"numbers": {}, "labels": {}, "refs": {}}))
    assert empty["inputs.numbers.amount"] is None and empty["inputs.labels.country"] is None
    seen = sys.modules[model._predict.__module__].SEEN  # type: ignore[attr-defined]
    model.predict(request(inputs={"numbers": {}, "labels": {}, "refs": {}}))
    assert seen[-1]["inputs.numbers.amount"] is None


def test_extract_inputs_function_matches_loader() -> None:
    names = ["inputs.refs.image", "external_state.labels.segment"]
    req = request(inputs={"numbers": {}, "labels": {}, "refs": {"image": "s3://b/k"}})
    assert extract_inputs(names, req) == {"inputs.refs.image": "s3://b/k",
                                          "external_state.labels.segment": None}


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    ("returned", "says"),
    [
        ({"numbers": {"fraud_probability": 0.1}}, r"missing \['labels.decision'\]"),
        ({"numbers": {"fraud_probability": 0.1, "x": 1.0}, "labels": {"decision": "approve"}},
         r"extra \['numbers.x'\]"),
        ({"numbers": {"fraud_probability": float("nan")}, "labels": {"decision": "approve"}},
         "not a finite number"),
        ({"numbers": {"fraud_probability": "high"}, "labels": {"decision": "approve"}},
         "not a finite number"),
        ({"numbers": {"fraud_probability": 0.1}, "labels": {"decision": 1}}, "not a string"),
        ({"scores": {}}, "unknown output sections"),
        ([0.1, "approve"], "must return a dict"),
    ],
)
def test_output_validation(tmp_path: Path, returned: Any, says: str) -> None:
    code = f"def predict(inputs):\n    return {returned!r}\n".replace("nan", "float('nan')")
    model = load_model(make_package(tmp_path / "p", code=code))
    with pytest.raises(ModelOutputError, match=says):
        model.predict(request())


def test_stateful_model_threads_state(tmp_path: Path) -> None:
    code = textwrap.dedent("""\
        def predict(inputs, state):
            n = (state or {}).get("n", 0) + 1
            return ({"numbers": {"fraud_probability": n / 10}, "labels": {"decision": "approve"}},
                    {"n": n})
        """)
    pkg = make_package(tmp_path / "p", MANIFEST + "stateful: true\n", code)
    model = load_model(pkg)
    state = None
    for _ in range(3):
        outputs, state = model.predict(request(), state)
    assert state == {"n": 3}
    assert outputs["numbers"]["fraud_probability"] == pytest.approx(0.3)


# --------------------------------------------------------------------------- scores


def test_build_score_matches_schema_and_carries_provenance(tmp_path: Path) -> None:
    model = load_model(make_package(tmp_path / "p"))
    req = request()
    outputs, _ = model.predict(req)
    score = build_score(req, model, outputs, 42, None, envelope)
    codec = codec_for("Score")
    assert codec.decode(codec.encode(score)) == score
    assert (score["model_id"], score["model_version"]) == ("toy", "3")
    assert score["request_id"] == "r-1" and score["entity_key"] == "card-1"
    assert score["request_timestamp"] == req["timestamp"]
    hops = [h["component"] for h in score["provenance"]["hops"]]
    assert hops == ["demo-client", "score:toy"]
    assert score["provenance"]["tags"] == {"channel": "pos"}
    assert score["provenance"]["trace"] == {"trace_id": "t" * 32, "parent_span_id": None}
    assert score["message_id"] != req["message_id"]
    assert len(req["provenance"]["hops"]) == 1, "the request is not modified"


def test_score_request_turns_failures_into_error_scores(tmp_path: Path) -> None:
    code = "def predict(inputs):\n    raise RuntimeError('boom')\n"
    model = load_model(make_package(tmp_path / "p", code=code))
    score, state = score_request(model, request(), {"keep": 1.0})
    assert score["error"] == "RuntimeError: boom"
    assert score["outputs"] == {"numbers": {}, "labels": {}, "refs": {}}
    assert state == {"keep": 1.0}
    codec_for("Score").encode(score)
    ok, _ = score_request(load_model(make_package(tmp_path / "q")), request())
    assert ok["error"] is None and ok["latency_us"] >= 0


def test_rules_package_runs_without_training() -> None:
    rules = load_model(REPO_MODELS / "fraud_rules")
    assert isinstance(rules, LoadedModel)

    def decide(**over: Any) -> dict[str, Any]:
        return rules.predict(request(**over))[0]["labels"]

    limit = {"source": "profiles", "as_of": 1, "numbers": {"credit_limit": 10.0}, "labels": {},
             "missing": []}
    assert decide() == {"decision": "approve", "rule": "none"}
    assert decide(external_state=limit) == {"decision": "decline", "rule": "over_credit_limit"}
    assert decide(internal_state={"card_velocity_kmh": 5000.0}) == {
        "decision": "review", "rule": "impossible_travel"}
    sanctioned = {"numbers": {"amount": 1.0}, "labels": {"country": "KP"}, "refs": {}}
    assert decide(inputs=sanctioned, internal_state={"card_velocity_kmh": 5000.0}) == {
        "decision": "decline", "rule": "sanctioned_country"}
    # no profile: the limit rule cannot fire, it is not assumed
    assert decide(external_state=None)["decision"] == "approve"
