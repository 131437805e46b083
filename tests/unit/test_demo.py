"""Demo domain: generator, augment_features, and training into model packages."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from udfs.codec import codec_for
from udfs.demo import generator as g
from udfs.demo.train import (
    MODELS,
    SOURCE_DIR,
    _fit_gbm,
    feature_matrix,
    make_dataset,
    train_all,
)
from udfs.model_package import LoadedModel, build_score, extract_inputs, load_model

REPO = Path(__file__).resolve().parents[2]


def _content(req: dict[str, Any]) -> tuple[Any, ...]:
    """What must be reproducible (the envelope's id and wall-clock time are not)."""
    return req["request_id"], req["entity_key"], req["return_address"], req["inputs"]


# --------------------------------------------------------------------------- generator


def test_profiles_reproducible_and_complete() -> None:
    a, b = g.profiles(50, seed=3), g.profiles(50, seed=3)
    assert a == b and a != g.profiles(50, seed=4)
    assert len({p["card_id"] for p in a}) == 50
    for p in a:
        assert p["home_country"] in g.CITIES and p["segment"] in g.SEGMENTS
        assert 0 < p["avg_amount"] < p["credit_limit"]
    json.dumps(a)  # a profiles-topic value


def test_transactions_reproducible_with_same_seed() -> None:
    a = [(_content(r), y) for r, y in g.transactions(500, seed=11)]
    b = [(_content(r), y) for r, y in g.transactions(500, seed=11)]
    c = [(_content(r), y) for r, y in g.transactions(500, seed=12)]
    assert a == b
    assert a != c
    assert len(a) == 500


def test_transactions_are_valid_requests() -> None:
    codec = codec_for("Request")
    for req, label in g.transactions(200, seed=1):
        assert label in (0, 1)
        assert codec.decode(codec.encode(req)) == req
        assert req["return_address"] == "results"
        assert req["provenance"]["hops"][0]["component"] == "demo-client"
        assert req["external_state"] is None and req["internal_state"] is None
        n = req["inputs"]["numbers"]
        assert ("lat" in n) == (n["card_present"] == 1.0)


@pytest.fixture(scope="module")
def dataset() -> list[tuple[dict[str, Any], str | None]]:
    cards = g.profiles(400, seed=5)
    by_card = {p["card_id"]: p for p in cards}
    return list(g.augment(g.transactions_with_patterns(10_000, 5, cards), by_card))


def test_fraud_patterns_present(dataset: list[tuple[dict[str, Any], str | None]]) -> None:
    counts = Counter(p for _, p in dataset)
    assert set(g.PATTERNS) <= set(counts)
    assert 0.01 < sum(v for k, v in counts.items() if k) / len(dataset) < 0.04


def test_impossible_travel_has_high_card_velocity(
    dataset: list[tuple[dict[str, Any], str | None]],
) -> None:
    travel = [r["internal_state"]["card_velocity_kmh"] for r, p in dataset
              if p == "impossible_travel"]
    legit = [r["internal_state"]["card_velocity_kmh"] for r, p in dataset
             if p is None and "card_velocity_kmh" in r["internal_state"]]
    assert travel and min(travel) > 1000
    assert statistics.median(legit) < 50
    assert sum(v > 1000 for v in legit) / len(legit) < 0.02


def test_other_patterns_look_like_their_story(
    dataset: list[tuple[dict[str, Any], str | None]],
) -> None:
    def of(pattern: str) -> list[dict[str, Any]]:
        return [r for r, p in dataset if p == pattern]

    for r in of("amount_spike"):
        assert r["inputs"]["numbers"]["amount"] > 5 * r["external_state"]["numbers"]["avg_amount"]
    for r in of("night_risky"):
        assert r["inputs"]["numbers"]["hour"] < 5
        assert r["inputs"]["labels"]["merchant_category"] in g.RISKY_CATEGORIES
    for r in of("small_burst"):
        assert r["inputs"]["numbers"]["amount"] < 5
    for r in of("sanctioned_country"):
        assert r["inputs"]["labels"]["country"] in g.SANCTIONED


def test_velocity_on_known_coordinates() -> None:
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    km = g.haversine_km(*london, *paris)
    assert km == pytest.approx(343.5, abs=1.0)
    prev = {"lat": london[0], "lon": london[1], "event_time_ms": 0.0}
    cur = {"lat": paris[0], "lon": paris[1], "event_time_ms": 2 * 3_600_000.0}
    assert g.velocity_kmh(prev, cur) == pytest.approx(km / 2)
    assert g.velocity_kmh(prev, {**prev, "event_time_ms": 0.0}) == 0.0


def _raw(card_present: bool, lat: float = 48.8566, lon: float = 2.3522,
         t: float = 3_600_000.0) -> dict[str, Any]:
    req = next(g.transactions(1, seed=1))[0]
    numbers = {"amount": 10.0, "card_present": 1.0 if card_present else 0.0, "event_time_ms": t}
    if card_present:
        numbers.update(lat=lat, lon=lon)
    req["inputs"]["numbers"] = numbers
    return req


def test_augment_features_from_profile_and_previous_point() -> None:
    profile = g.profiles(1, seed=2)[0]
    prev = {"lat": 51.5074, "lon": -0.1278, "event_time_ms": 0.0}
    ext, internal = g.augment_features(_raw(True), profile, prev)
    assert ext["missing"] == [] and ext["as_of"] == profile["updated_at"]
    assert ext["numbers"]["avg_amount"] == profile["avg_amount"]
    assert ext["labels"] == {"home_country": profile["home_country"],
                             "segment": profile["segment"]}
    assert internal["card_velocity_kmh"] == pytest.approx(343.5, abs=1.0)
    # not card present, or no previous card-present transaction: no velocity, not zero
    assert g.augment_features(_raw(False), profile, prev)[1] == {}
    assert g.augment_features(_raw(True), profile, None)[1] == {}


def test_augment_features_missing_profile_invents_nothing() -> None:
    ext, _ = g.augment_features(_raw(True), None, None)
    assert ext == {"source": "profiles", "as_of": None, "numbers": {}, "labels": {},
                   "missing": ["profile"]}
    partial = {k: v for k, v in g.profiles(1, seed=2)[0].items() if k != "credit_limit"}
    ext, _ = g.augment_features(_raw(False), partial, None)
    assert ext["missing"] == ["profile.credit_limit"] and "credit_limit" not in ext["numbers"]
    req = _raw(True)
    req["external_state"], req["internal_state"] = ext, {}
    codec_for("Request").encode(req)


def test_augment_keeps_last_card_present_point_per_card() -> None:
    a1, a2 = _raw(True, 51.5074, -0.1278, 0.0), _raw(False, t=1_800_000.0)
    a3 = _raw(True, 48.8566, 2.3522, 3_600_000.0)
    for r in (a1, a2, a3):
        r["entity_key"] = "card-a"
    b1 = _raw(True, 0.0, 0.0, 3_000_000.0)
    b1["entity_key"] = "card-b"
    out = [r for r, _ in g.augment([(a1, 0), (b1, 0), (a2, 0), (a3, 0)], {})]
    assert [r["internal_state"].get("card_velocity_kmh") for r in out][:3] == [None] * 3
    assert out[3]["internal_state"]["card_velocity_kmh"] == pytest.approx(343.5, abs=1.0)
    assert all(r["external_state"]["missing"] == ["profile"] for r in out)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    out = tmp_path_factory.mktemp("models")
    for name in MODELS:  # a copy of the package sources, as the brief of train --out expects
        shutil.copytree(SOURCE_DIR / name, out / name,
                        ignore=shutil.ignore_patterns("*.json", "*.joblib", "__pycache__"))
    t0 = time.perf_counter()
    metrics = train_all(out, n=3000, seed=7, log=lambda *_: None)
    return out, metrics, time.perf_counter() - t0


def test_training_small_gives_loadable_models_with_auc(
    trained: tuple[Path, dict[str, Any], float],
) -> None:
    out, metrics, seconds = trained
    assert seconds < 30
    assert metrics["fraud_gbm"]["auc"] > 0.7
    assert metrics["fraud_logreg"]["auc"] > 0.7
    assert metrics["fraud_canary"]["auc"] > 0.5
    for name in MODELS:
        assert json.loads((out / name / "metrics.json").read_text())["model"] == name
    req, _ = next(g.augment(g.transactions(1, seed=99), {}))
    codec = codec_for("Score")
    for name in MODELS:
        model = load_model(out / name)
        outputs, _ = model.predict(req)
        assert 0.0 <= outputs["numbers"]["fraud_probability"] <= 1.0
        assert outputs["labels"]["decision"] in ("approve", "review", "decline")
        codec.encode(build_score(req, model, outputs, 10, None))


def test_trained_models_handle_missing_external_state(
    trained: tuple[Path, dict[str, Any], float],
) -> None:
    out, _, _ = trained
    req, _ = next(g.transactions(1, seed=3))  # raw: no external or internal state at all
    for name in ("fraud_logreg", "fraud_gbm", "fraud_canary"):
        model = load_model(out / name)
        inputs = model.extract_inputs(req)
        assert inputs["external_state.labels.home_country"] is None
        p = model.predict(req)[0]["numbers"]["fraud_probability"]
        assert 0.0 <= p <= 1.0


def test_training_is_reproducible(trained: tuple[Path, dict[str, Any], float]) -> None:
    out, metrics, _ = trained
    requests, labels = make_dataset(3000, 7)
    assert len(requests) == 3000 and sum(labels) > 20
    again, _ = make_dataset(3000, 7)
    assert [_content(r) for r in again] == [_content(r) for r in requests]
    spec = json.loads((out / "fraud_logreg" / "coefficients.json").read_text())
    assert spec["features"][0] == "log_amount" and len(spec["weights"]) == len(spec["features"])


def test_logreg_predict_is_fast(trained: tuple[Path, dict[str, Any], float]) -> None:
    out, _, _ = trained
    model: LoadedModel = load_model(out / "fraud_logreg")
    requests, _ = make_dataset(1000, 8)
    times = []
    for r in requests:
        t0 = time.perf_counter_ns()
        model.predict(r)
        times.append(time.perf_counter_ns() - t0)
    assert statistics.median(times) < 1_000_000  # < 1 ms (typically ~20 us)


def test_gbm_exported_trees_match_sklearn(tmp_path: Path) -> None:
    """predict.py's pure-Python tree walk == sklearn predict_proba, incl. NaN routing and
    unknown categories; and it is fast per request."""
    pkg = tmp_path / "fraud_gbm"
    shutil.copytree(SOURCE_DIR / "fraud_gbm", pkg,
                    ignore=shutil.ignore_patterns("*.json", "*.joblib", "__pycache__"))
    train_req, y = make_dataset(4000, 7)
    x, module = feature_matrix(pkg, train_req)
    clf = _fit_gbm(pkg, x, np.asarray(y), module, seed=7)
    assert not (pkg / "model.joblib").exists()
    model = load_model(pkg, strict_requirements=True)
    requests, _ = make_dataset(1000, 8)
    rng = random.Random(3)
    rows = []
    for r in requests:
        inputs = extract_inputs(model.manifest.inputs, r)
        rows.append(inputs)
        damaged = dict(inputs)
        for k in rng.sample(sorted(damaged), rng.randint(1, 6)):
            damaged[k] = None
        if rng.random() < 0.3:
            damaged["inputs.labels.merchant_category"] = "no-such-category"
        if rng.random() < 0.3:
            damaged["external_state.labels.segment"] = "no-such-segment"
        rows.append(damaged)
    xs = np.array([module.features(i) for i in rows], dtype=np.float64)
    assert np.isnan(xs).any(axis=1).sum() > 1000
    expected = clf.predict_proba(xs)[:, 1]
    evaluator = module.Model(pkg)
    got = np.array([evaluator.probability(row) for row in xs.tolist()])
    assert float(np.max(np.abs(got - expected))) < 1e-9
    served = [model.predict(r)[0] for r in requests]
    assert np.max(np.abs(np.array([o["numbers"]["fraud_probability"] for o in served])
                         - expected[0::2])) < 1e-9
    times = []
    for r in requests:
        t0 = time.perf_counter_ns()
        model.predict(r)
        times.append(time.perf_counter_ns() - t0)
    assert statistics.median(times) < 1_000_000  # < 1 ms (typically ~40 us; sklearn ~1.4 ms)


# --------------------------------------------------------------------------- repo files


def test_demo_schedule_file() -> None:
    from udfs.schedule import parse_schedule

    text = (REPO / "models" / "demo-schedule.yaml").read_text()
    parsed = parse_schedule(text)  # valid
    assert [st.model for st in parsed.stages] == ["fraud_gbm", "fraud_logreg"]
    assert parsed.stages[0].wait_ms > 0, "fraud_gbm must be preferred for a while"
    s = yaml.safe_load(text)
    assert s["id"] == "demo"
    assert s["deadline_ms"] == 50
    assert s["default"]["outputs"] == {"numbers": {"fraud_probability": 0.0},
                                       "labels": {"decision": "review"}}
    assert set(s["ignore"]) == {"fraud_canary", "fraud_rules"}


def test_trained_artifacts_are_git_ignored() -> None:
    paths = ["models/fraud_gbm/trees.json", "models/fraud_logreg/coefficients.json",
             "models/fraud_gbm/metrics.json", "models/fraud_gbm/model.joblib",
             "models/fraud_gbm/gbm.json"]
    got = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True,
                         text=True, check=False)
    assert got.stdout.split() == paths
    kept = subprocess.run(["git", "check-ignore", "models/fraud_rules/rules.yaml"], cwd=REPO,
                          capture_output=True, check=False)
    assert kept.returncode == 1, "rules.yaml is package source, not a trained artifact"
