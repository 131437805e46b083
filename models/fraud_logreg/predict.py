"""fraud_logreg: logistic regression in pure Python, so predict() takes microseconds.

``features(inputs)`` is the one definition of the model's features: training
(udfs/demo/train.py) imports it from this file, so training and serving features agree.
A missing input becomes 0 plus a "has_..." indicator, never a guessed value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RISKY_CATEGORIES = frozenset({"gambling", "crypto", "digital_goods"})
HIGH_VALUE_CATEGORIES = frozenset({"electronics", "jewelry", "travel"})
SANCTIONED = frozenset({"KP", "IR", "SY", "CU"})

FEATURES = (
    "log_amount", "has_profile", "log_amount_ratio", "over_limit", "night", "risky_category",
    "high_value_category", "card_present", "foreign", "sanctioned", "has_velocity",
    "log_velocity", "small_amount", "log_account_age", "log_km_from_home",
)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def features(inputs: dict[str, Any]) -> list[float]:
    """The feature vector (order: FEATURES) of one request's declared inputs."""
    amount = inputs["inputs.numbers.amount"] or 0.0
    hour = inputs["inputs.numbers.hour"]
    present = inputs["inputs.numbers.card_present"] == 1.0
    category = inputs["inputs.labels.merchant_category"]
    country = inputs["inputs.labels.country"]
    avg = inputs["external_state.numbers.avg_amount"]
    limit = inputs["external_state.numbers.credit_limit"]
    age = inputs["external_state.numbers.account_age_days"]
    home = inputs["external_state.labels.home_country"]
    velocity = inputs["internal_state.card_velocity_kmh"]
    lat, lon = inputs["inputs.numbers.lat"], inputs["inputs.numbers.lon"]
    hlat = inputs["external_state.numbers.home_lat"]
    hlon = inputs["external_state.numbers.home_lon"]
    km_home = (_km(lat, lon, hlat, hlon)
               if None not in (lat, lon, hlat, hlon) and present else 0.0)
    return [
        math.log1p(amount),
        1.0 if avg is not None else 0.0,
        math.log((amount + 1.0) / (avg + 1.0)) if avg is not None else 0.0,
        1.0 if limit is not None and amount > limit else 0.0,
        1.0 if hour is not None and hour < 5 else 0.0,
        1.0 if category in RISKY_CATEGORIES else 0.0,
        1.0 if category in HIGH_VALUE_CATEGORIES else 0.0,
        1.0 if present else 0.0,
        1.0 if home is not None and country is not None and country != home else 0.0,
        1.0 if country in SANCTIONED else 0.0,
        1.0 if velocity is not None else 0.0,
        math.log1p(velocity) if velocity is not None else 0.0,
        1.0 if amount < 5.0 else 0.0,
        math.log1p(age) if age is not None else 0.0,
        math.log1p(km_home),
    ]


class Model:
    """Weights folded with the standardisation at training time: one dot product."""

    def __init__(self, package_dir: Path) -> None:
        spec = json.loads((Path(package_dir) / "coefficients.json").read_text())
        if tuple(spec["features"]) != FEATURES:
            raise ValueError("coefficients.json was trained on other features; retrain")
        self.weights = [float(w) for w in spec["weights"]]
        self.intercept = float(spec["intercept"])
        self.review = float(spec["thresholds"]["review"])
        self.decline = float(spec["thresholds"]["decline"])

    def predict(self, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        z = self.intercept + sum(w * x for w, x in zip(self.weights, features(inputs), strict=True))
        p = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        decision = "decline" if p >= self.decline else "review" if p >= self.review else "approve"
        return {"numbers": {"fraud_probability": p}, "labels": {"decision": decision}}
