"""Request-by-request model comparison in quantile space.

Scores of different models are first normalised to quantiles against each model's own
reference period (:class:`udfs.meta.sketches.QuantileNormalizer`), so a challenger calibrated
differently is compared by *ranking*, not by raw value.

- :class:`RequestPairer` pairs each model with the reference models (canary, champion) by
  request id, holding at most ``max_pending`` requests (oldest evicted first, counted).
- :class:`Comparison` accumulates pairs: marginal t-digests of both quantiles (q-q points),
  a joint histogram (copula), the fraction with ``|Δq| > x``, and a stratified reservoir
  sample of disagreeing requests (one reservoir per stratum of ``|Δq|``, so the rare, most
  disagreeing requests are not drowned by the many mildly disagreeing ones).
- :func:`rollout_risk`: rolling a challenger out to a fraction p of traffic changes the
  decision for about ``p × fraction disagreeing`` of all requests; the bound uses the Wilson
  score upper limit of the disagreeing fraction.

>>> pairer = RequestPairer(references=("champion",))
>>> pairer.update("r1", "champion", 0.10)
[]
>>> [(p.model, p.reference, p.delta) for p in pairer.update("r1", "challenger", 0.90)]
[('challenger', 'champion', 0.8)]
>>> cmp = Comparison(x=0.2, seed=1)
>>> for p in pairer.update("r2", "champion", 0.5) + pairer.update("r2", "challenger", 0.55):
...     cmp.update(p)
>>> cmp.update(Pair("r1", "challenger", "champion", 0.9, 0.1, {"x": 1}))
>>> cmp.n, cmp.n_disagree, cmp.fraction_disagree
(2, 1, 0.5)
>>> [s.request_id for s in cmp.most_disagreeing(5)]
['r1']
>>> point, upper = rollout_risk(k=10, n=1000, p_traffic=0.05)
>>> round(point, 4), round(upper, 4)
(0.0005, 0.0008)
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from fastdigest import TDigest


@dataclass(frozen=True)
class Pair:
    request_id: str
    model: str
    reference: str
    q_model: float
    q_reference: float
    payload: Any = None  # e.g. the archived input's key/offset, for review

    @property
    def delta(self) -> float:
        return self.q_model - self.q_reference


class RequestPairer:
    """Pairs scores of the same request: every model with every reference model.

    A request's entry holds ``{model: (quantile, payload)}`` until evicted (bounded LRU by
    arrival: at most ``max_pending`` requests). ``references`` are in order of authority:
    when two references both score a request, the later one is the model and the earlier
    the reference (default: canary vs champion).
    """

    def __init__(
        self, references: Sequence[str] = ("champion", "canary"), max_pending: int = 100_000
    ) -> None:
        self.references = tuple(references)
        self.max_pending = max_pending
        self.evicted = 0
        self._pending: OrderedDict[str, dict[str, tuple[float, Any]]] = OrderedDict()

    def _pair(self, rid: str, a: str, qa: tuple[float, Any], b: str, qb: tuple[float, Any]):
        # orientation: the non-reference (or later reference) is "model"
        ra = self.references.index(a) if a in self.references else len(self.references)
        rb = self.references.index(b) if b in self.references else len(self.references)
        if ra < rb:
            a, qa, b, qb = b, qb, a, qa
        return Pair(rid, a, b, qa[0], qb[0], qa[1] if qa[1] is not None else qb[1])

    def update(
        self, request_id: str, model_id: str, quantile: float, payload: Any = None
    ) -> list[Pair]:
        seen = self._pending.get(request_id)
        if seen is None:
            seen = self._pending[request_id] = {}
            if len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1
        mine = (float(quantile), payload)
        out = []
        for other, val in seen.items():
            if other != model_id and (model_id in self.references or other in self.references):
                out.append(self._pair(request_id, model_id, mine, other, val))
        seen[model_id] = mine
        return out

    def __len__(self) -> int:
        return len(self._pending)


@dataclass(frozen=True)
class Sampled:
    request_id: str
    model: str
    reference: str
    q_model: float
    q_reference: float
    payload: Any
    stratum: int


class Comparison:
    """Accumulates the pairs of one (model, reference).

    ``strata``: lower edges of ``|Δq|`` strata, the first must be ``x`` or above — only
    disagreeing pairs are sampled; each stratum keeps a uniform reservoir of
    ``per_stratum`` pairs (Algorithm R, seeded).
    """

    def __init__(
        self, x: float = 0.1, strata: Sequence[float] | None = None, per_stratum: int = 20,
        max_centroids: int = 200, seed: int | None = None,
    ) -> None:
        self.x = x
        self.strata = tuple(strata) if strata is not None else tuple(
            sorted({x, *(e for e in (0.25, 0.5, 0.75) if e > x)})
        )
        self.per_stratum = per_stratum
        self.rng = random.Random(seed)
        self.n = 0
        self.n_disagree = 0
        self.seen = [0] * len(self.strata)
        self.reservoirs: list[list[Sampled]] = [[] for _ in self.strata]
        self.model_q = TDigest(max_centroids=max_centroids)
        self.ref_q = TDigest(max_centroids=max_centroids)
        self.joint = np.zeros((10, 10), dtype=np.int64)

    def update(self, pair: Pair) -> None:
        self.n += 1
        self.model_q.update(pair.q_model)
        self.ref_q.update(pair.q_reference)
        i = min(9, max(0, int(pair.q_model * 10)))
        j = min(9, max(0, int(pair.q_reference * 10)))
        self.joint[i, j] += 1
        d = abs(pair.delta)
        if d <= self.x:
            return
        self.n_disagree += 1
        s = max(k for k, lo in enumerate(self.strata) if d > lo or k == 0)
        self.seen[s] += 1
        item = Sampled(pair.request_id, pair.model, pair.reference, pair.q_model,
                       pair.q_reference, pair.payload, s)
        res = self.reservoirs[s]
        if len(res) < self.per_stratum:
            res.append(item)
        else:
            r = self.rng.randrange(self.seen[s])
            if r < self.per_stratum:
                res[r] = item

    @property
    def fraction_disagree(self) -> float:
        return self.n_disagree / self.n if self.n else 0.0

    def qq_points(
        self, probs: Sequence[float] | None = None
    ) -> list[tuple[float, float, float]]:
        """[(p, model quantile at p, reference quantile at p)] of the marginals (default p:
        0.05, 0.10, ..., 0.95)."""
        probs = probs if probs is not None else [i / 20 for i in range(1, 20)]
        if self.n == 0:
            return []
        return [(p, float(self.model_q.quantile(p)), float(self.ref_q.quantile(p)))
                for p in probs]

    def sample(self) -> dict[float, list[Sampled]]:
        """Stratified sample: ``{stratum lower edge: [pairs]}``."""
        return {lo: list(r) for lo, r in zip(self.strata, self.reservoirs, strict=True)}

    def most_disagreeing(self, k: int) -> list[Sampled]:
        """Up to k sampled pairs, highest stratum first, then by |Δq|."""
        items = [s for r in self.reservoirs for s in r]
        items.sort(key=lambda s: (-s.stratum, -abs(s.q_model - s.q_reference)))
        return items[:k]

    def risk(self, p_traffic: float, confidence: float = 0.95) -> tuple[float, float]:
        return rollout_risk(self.n_disagree, self.n, p_traffic, confidence)


def wilson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Wilson score upper bound of a binomial proportion.

    >>> round(wilson_upper(0, 100), 4)
    0.0263
    """
    if n == 0:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / denom)


def rollout_risk(
    k: int, n: int, p_traffic: float, confidence: float = 0.95
) -> tuple[float, float]:
    """(point estimate, upper bound) of the fraction of *all* requests whose outcome changes
    when a challenger that disagrees on k of n paired requests takes ``p_traffic`` of it."""
    point = p_traffic * (k / n if n else 0.0)
    return point, p_traffic * wilson_upper(k, n, confidence)
