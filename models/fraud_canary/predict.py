"""fraud_canary: the previous, weaker logistic model (a handful of raw features).

Kept alive as the canary: ignored by the schedule, its output distribution is a stable
reference that moves when the inputs move.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FEATURES = ("log_amount", "night", "card_present", "foreign")


def features(inputs: dict[str, Any]) -> list[float]:
    """The feature vector (order: FEATURES); missing inputs count as 0, never guessed."""
    amount = inputs["inputs.numbers.amount"] or 0.0
    hour = inputs["inputs.numbers.hour"]
    country = inputs["inputs.labels.country"]
    home = inputs["external_state.labels.home_country"]
    return [
        math.log1p(amount),
        1.0 if hour is not None and hour < 5 else 0.0,
        1.0 if inputs["inputs.numbers.card_present"] == 1.0 else 0.0,
        1.0 if home is not None and country is not None and country != home else 0.0,
    ]


class Model:
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
