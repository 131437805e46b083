"""Request pairing, disagreement, stratified sample, roll-out risk."""

from __future__ import annotations

import numpy as np

from udfs.meta.compare import Comparison, Pair, RequestPairer, rollout_risk, wilson_upper


def test_pairs_each_model_with_each_reference_and_bounds_buffer():
    p = RequestPairer(references=("champion", "canary"), max_pending=3)
    assert p.update("r1", "m1", 0.2) == []
    got = p.update("r1", "champion", 0.3)
    assert [(x.model, x.reference) for x in got] == [("m1", "champion")]
    got = p.update("r1", "canary", 0.4)
    assert sorted((x.model, x.reference) for x in got) == [("canary", "champion"),
                                                           ("m1", "canary")]
    for i in range(5):
        p.update(f"x{i}", "m1", 0.5)
    assert len(p) == 3 and p.evicted == 3
    assert p.update("r1", "m2", 0.1) == []  # r1 was evicted: nothing to pair with


def test_identical_models_agree_and_shifted_model_disagrees():
    rng = np.random.default_rng(0)
    n = 20_000
    base = rng.uniform(size=n)
    same = Comparison(x=0.1, seed=0)
    diff = Comparison(x=0.1, seed=0)
    noisy = np.clip(base + rng.normal(0, 0.02, n), 0, 1)
    challenger = np.where(rng.uniform(size=n) < 0.05, rng.uniform(size=n), noisy)
    for i in range(n):
        same.update(Pair(f"r{i}", "canary", "champion", float(noisy[i]), float(base[i])))
        diff.update(Pair(f"r{i}", "ch", "champion", float(challenger[i]), float(base[i]), i))
    assert same.fraction_disagree < 0.001
    # 5 % replaced by random quantiles: |Δ| > 0.1 for 5 % × P(|U - V| > 0.1) = 5 % × 0.81
    assert abs(diff.fraction_disagree - 0.05 * 0.81) < 0.006
    qq = same.qq_points()
    assert all(abs(a - b) < 0.02 for _, a, b in qq)
    assert same.joint.sum() == n and np.trace(same.joint) > 0.8 * n
    sample = diff.sample()
    assert all(len(v) <= 20 for v in sample.values())
    top = diff.most_disagreeing(10)
    assert len(top) == 10 and all(abs(s.q_model - s.q_reference) > 0.75 for s in top)
    assert all(lo < abs(s.q_model - s.q_reference) for lo, v in sample.items() for s in v)
    point, upper = diff.risk(p_traffic=0.1)
    assert point < upper < point * 1.2


def test_wilson_upper_bound_covers():
    rng = np.random.default_rng(1)
    p, n = 0.01, 2_000
    cover = sum(wilson_upper(int(rng.binomial(n, p)), n, 0.95) >= p for _ in range(2_000))
    assert cover / 2_000 > 0.93
    assert rollout_risk(0, 0, 0.5) == (0.0, 0.5)
