"""fraud_gbm: gradient-boosted trees (scikit-learn), the preferred demo model.

``features(inputs)`` is shared with training (udfs/demo/train.py imports this file).
Missing inputs stay NaN, which the trees route natively - nothing is imputed.

Serving needs neither scikit-learn nor numpy: training exports the fitted
HistGradientBoostingClassifier's trees to ``trees.json`` (``udfs.demo.train.export_trees``)
and :class:`Model` walks them in pure Python with sklearn's exact routing rules (NaN follows
``missing_go_to_left``; categorical splits by the left-category set, unknown categories
route as missing), summing leaf values onto the baseline in tree order and applying the
logistic function - the same probabilities as ``predict_proba``, at a few tens of
microseconds per request instead of milliseconds of per-call overhead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


#: node kinds of the flattened trees
_LEFT_IF_LE, _RIGHT_IF_GT, _CATEGORICAL, _LEAF = 0, 1, 2, 3

Node = tuple[Any, ...]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def compile_trees(spec: dict[str, Any]) -> tuple[list[Node], list[int]]:
    """All trees of ``spec`` (trees.json) as one flat node list, and each tree's root index.

    A node is ``(kind, column, threshold-or-value, left, right)``; kind ``_LEFT_IF_LE``
    (missing goes right) and ``_RIGHT_IF_GT`` (missing goes left) are numeric splits whose
    comparison alone routes NaN correctly; a categorical node adds the left-code set, the
    known-code set and whether missing goes left.
    """
    known = {int(j): frozenset(v) for j, v in spec["known_categories"].items()}
    nodes: list[Node] = []
    roots: list[int] = []
    for tree in spec["trees"]:
        base = len(nodes)
        roots.append(base)
        for i, is_leaf in enumerate(tree["is_leaf"]):
            col, left, right = tree["feature"][i], base + tree["left"][i], base + tree["right"][i]
            cats = tree["left_categories"][i]
            if is_leaf:
                nodes.append((_LEAF, 0, float(tree["value"][i]), 0, 0))
            elif cats is not None:
                nodes.append((_CATEGORICAL, col, frozenset(cats), left, right, known[col],
                              bool(tree["missing_left"][i])))
            elif tree["missing_left"][i]:
                nodes.append((_RIGHT_IF_GT, col, float(tree["threshold"][i]), left, right))
            else:
                nodes.append((_LEFT_IF_LE, col, float(tree["threshold"][i]), left, right))
    return nodes, roots


class Model:
    def __init__(self, package_dir: Path) -> None:
        package_dir = Path(package_dir)
        spec = json.loads((package_dir / "trees.json").read_text())
        if tuple(spec["features"]) != FEATURES:
            raise ValueError("trees.json was trained on other features; retrain")
        self.review = float(spec["thresholds"]["review"])
        self.decline = float(spec["thresholds"]["decline"])
        self.baseline = float(spec["baseline"])
        self.columns: tuple[int, ...] = tuple(spec["columns"])
        #: tree column -> {raw feature value: category code}; absent values become NaN
        self.codes: tuple[dict[float, float] | None, ...] = tuple(
            {float(v): float(k) for k, v in enumerate(spec["categories"][str(j)])}
            if str(j) in spec["categories"] else None
            for j in range(len(self.columns))
        )
        self.nodes, self.roots = compile_trees(spec)

    def raw(self, x: list[float]) -> float:
        """The raw score (log-odds) of one feature vector (order: FEATURES)."""
        row = [x[f] if codes is None else codes.get(x[f], NAN)
               for f, codes in zip(self.columns, self.codes, strict=True)]
        nodes = self.nodes
        raw = 0.0 + self.baseline
        for i in self.roots:
            while True:
                node = nodes[i]
                kind = node[0]
                if kind == _LEFT_IF_LE:
                    i = node[3] if row[node[1]] <= node[2] else node[4]
                elif kind == _RIGHT_IF_GT:
                    i = node[4] if row[node[1]] > node[2] else node[3]
                elif kind == _LEAF:
                    raw += node[2]
                    break
                else:
                    v = row[node[1]]
                    if v != v or v < 0:  # missing
                        i = node[3] if node[6] else node[4]
                    elif v in node[2]:
                        i = node[3]
                    elif v in node[5]:
                        i = node[4]
                    else:  # unknown category: routed as missing
                        i = node[3] if node[6] else node[4]
        return raw

    def probability(self, x: list[float]) -> float:
        """P(fraud) of one feature vector: ``predict_proba(x)[0, 1]`` of the trained model."""
        return _sigmoid(self.raw(x))

    def predict(self, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        p = _sigmoid(self.raw(features(inputs)))
        decision = "decline" if p >= self.decline else "review" if p >= self.review else "approve"
        return {"numbers": {"fraud_probability": p}, "labels": {"decision": decision}}
