"""fraud_rules: regulatory rules from rules.yaml, run by the same scaffold as the models.

fraud_probability is 1.0 when a rule fires (decline or review) and 0.0 otherwise.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
    "eq": operator.eq, "ne": operator.ne,
    "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b,
}
STRENGTH = {"approve": 0, "review": 1, "decline": 2}


class Rules:
    def __init__(self, package_dir: Path) -> None:
        package_dir = Path(package_dir)
        declared = set(yaml.safe_load((package_dir / "manifest.yaml").read_text())["inputs"])
        spec = yaml.safe_load((package_dir / "rules.yaml").read_text())
        self.rules: list[tuple[str, str, list[tuple[str, Callable[[Any, Any], bool], Any, Any]]]]
        self.rules = []
        for rule in spec["rules"]:
            name, decision = rule["name"], rule["decision"]
            if decision not in STRENGTH:
                raise ValueError(f"rules.yaml: rule {name}: decision {decision!r} unknown")
            conds = []
            for c in rule["all"]:
                if c["op"] not in OPS:
                    raise ValueError(f"rules.yaml: rule {name}: op {c['op']!r} unknown")
                for ref in (c["input"], c.get("ref")):
                    if ref is not None and ref not in declared:
                        raise ValueError(
                            f"rules.yaml: rule {name}: {ref} is not a declared input in "
                            "manifest.yaml; declare it there"
                        )
                conds.append((c["input"], OPS[c["op"]], c.get("value"), c.get("ref")))
            self.rules.append((name, decision, conds))

    def _holds(self, inputs: dict[str, Any], cond: tuple[str, Any, Any, Any]) -> bool:
        name, op, value, ref = cond
        left = inputs.get(name)
        right = inputs.get(ref) if ref is not None else value
        return left is not None and right is not None and bool(op(left, right))

    def predict(self, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        best, fired = "approve", "none"
        for name, decision, conds in self.rules:
            if STRENGTH[decision] > STRENGTH[best] and all(self._holds(inputs, c) for c in conds):
                best, fired = decision, name
        return {
            "numbers": {"fraud_probability": 0.0 if best == "approve" else 1.0},
            "labels": {"decision": best, "rule": fired},
        }
