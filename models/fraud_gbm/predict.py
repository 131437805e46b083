"""fraud_gbm: gradient-boosted trees (scikit-learn), the preferred demo model.

``features(inputs)`` is shared with training (udfs/demo/train.py imports this file).
Missing inputs stay NaN, which the trees route natively - nothing is imputed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np

NAN = float("nan")
#: category vocabularies; the code of a label is its index, unknown/missing -> NaN
CATEGORIES = (
    "grocery", "restaurant", "fuel", "retail", "pharmacy", "entertainment", "online_retail",
    "travel", "electronics", "jewelry", "gambling", "crypto", "digital_goods",
)
SEGMENTS = ("student", "retail", "premium", "business")
SANCTIONED = frozenset({"KP", "IR", "SY", "CU"})

FEATURES = (
    "amount", "amount_ratio", "amount_over_limit", "hour", "card_present", "merchant_category",
    "segment", "foreign", "sanctioned", "card_velocity_kmh", "account_age_days", "km_from_home",
)
CATEGORICAL = ("merchant_category", "segment")


def _code(value: str | None, vocabulary: tuple[str, ...]) -> float:
    try:
        return float(vocabulary.index(value)) if value is not None else NAN
    except ValueError:
        return NAN


def _num(v: float | None) -> float:
    return NAN if v is None else float(v)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def features(inputs: dict[str, Any]) -> list[float]:
    """The feature vector (order: FEATURES) of one request's declared inputs."""
    amount = inputs["inputs.numbers.amount"]
    avg = inputs["external_state.numbers.avg_amount"]
    limit = inputs["external_state.numbers.credit_limit"]
    country = inputs["inputs.labels.country"]
    home = inputs["external_state.labels.home_country"]
    present = inputs["inputs.numbers.card_present"]
    lat, lon = inputs["inputs.numbers.lat"], inputs["inputs.numbers.lon"]
    hlat = inputs["external_state.numbers.home_lat"]
    hlon = inputs["external_state.numbers.home_lon"]
    known = amount is not None
    return [
        _num(amount),
        amount / avg if known and avg else NAN,
        amount / limit if known and limit else NAN,
        _num(inputs["inputs.numbers.hour"]),
        _num(present),
        _code(inputs["inputs.labels.merchant_category"], CATEGORIES),
        _code(inputs["external_state.labels.segment"], SEGMENTS),
        NAN if home is None or country is None else float(country != home),
        NAN if country is None else float(country in SANCTIONED),
        _num(inputs["internal_state.card_velocity_kmh"]),
        _num(inputs["external_state.numbers.account_age_days"]),
        _km(lat, lon, hlat, hlon) if None not in (lat, lon, hlat, hlon) else NAN,
    ]


class Model:
    def __init__(self, package_dir: Path) -> None:
        package_dir = Path(package_dir)
        meta = json.loads((package_dir / "gbm.json").read_text())
        if tuple(meta["features"]) != FEATURES:
            raise ValueError("model.joblib was trained on other features; retrain")
        self.model = joblib.load(package_dir / "model.joblib")
        self.review = float(meta["thresholds"]["review"])
        self.decline = float(meta["thresholds"]["decline"])

    def predict(self, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        x = np.array([features(inputs)], dtype=np.float64)
        p = float(self.model.predict_proba(x)[0, 1])
        decision = "decline" if p >= self.decline else "review" if p >= self.review else "approve"
        return {"numbers": {"fraud_probability": p}, "labels": {"decision": decision}}
