"""Rate-change detection: quiet on stationary Poisson, fires on stoppage/drop/surge."""

from __future__ import annotations

import numpy as np

from udfs.meta.rates import (
    HOUR_MS,
    RateChangeDetector,
    RatePredictor,
    hour_of_week,
    poisson_cdf_below,
    poisson_sf_at_least,
)

RATE = 20.0  # events per second


def poisson_times(rng: np.random.Generator, rate_per_s: float, t0_ms: float, t1_ms: float):
    n = rng.poisson(rate_per_s * (t1_ms - t0_ms) / 1000)
    return np.sort(rng.uniform(t0_ms, t1_ms, n)).astype(np.int64)


def run(det: RateChangeDetector, events: np.ndarray, t0: int, t1: int, step_ms: int = 1000):
    """Feed events and check every step; returns [(now, status)]."""
    out = []
    i = 0
    for now in range(t0 + step_ms, t1 + 1, step_ms):
        while i < len(events) and events[i] <= now:
            det.update(int(events[i]))
            i += 1
        out.append((now, det.check(now)))
    return out


def warm_detector(rng, hours: float = 0.5):
    det = RateChangeDetector(ns=(1, 10, 100, 1000), alpha=1e-6,
                             predictor=RatePredictor(bucket_ms=60_000, halflife_ms=3_600_000))
    t1 = int(hours * HOUR_MS)
    run(det, poisson_times(rng, RATE, 0, t1), 0, t1, step_ms=60_000)
    return det, t1


def test_gamma_tails_are_complementary():
    for n, mu in [(1, 0.1), (10, 7.0), (100, 130.0), (1000, 990.0)]:
        assert abs(poisson_cdf_below(n, mu) + poisson_sf_at_least(n, mu) - 1) < 1e-9


def test_false_alarm_rate_stationary():
    """4 h at 20/s checked every second: measured 0 alarms in 14,400 evaluations."""
    rng = np.random.default_rng(7)
    det, t = warm_detector(rng)
    t_end = t + 4 * HOUR_MS
    statuses = run(det, poisson_times(rng, RATE, t, t_end), t, t_end)
    evaluations = len(statuses)
    alarms = sum(1 for _, st in statuses if st.alarms)
    # 8 correlated tests per evaluation at alpha=1e-6 -> expected <= 0.12; allow 2
    assert evaluations == 14_400
    assert alarms <= 2, alarms


def _first_alarm(statuses, kind):
    for now, st in statuses:
        if any(a.kind == kind for a in st.alarms):
            return now
    return None


def test_stoppage_detected_fast():
    rng = np.random.default_rng(1)
    det, t = warm_detector(rng)
    ev = poisson_times(rng, RATE, t, t + 60_000)
    last = int(ev[-1])
    statuses = run(det, ev, t, t + 120_000, step_ms=100)
    first = _first_alarm(statuses, "stoppage")
    assert first is not None and first - last < 1_500  # measured ≈ 0.7 s at 20/s


def test_drop_detected():
    rng = np.random.default_rng(2)
    det, t = warm_detector(rng)
    ev = np.concatenate([poisson_times(rng, RATE, t, t + 60_000),
                         poisson_times(rng, RATE * 0.3, t + 60_000, t + 180_000)])
    statuses = run(det, ev, t, t + 180_000)
    first = _first_alarm(statuses, "drop")
    assert first is not None and first - (t + 60_000) < 20_000


def test_surge_detected():
    rng = np.random.default_rng(3)
    det, t = warm_detector(rng)
    ev = np.concatenate([poisson_times(rng, RATE, t, t + 60_000),
                         poisson_times(rng, RATE * 3, t + 60_000, t + 120_000)])
    statuses = run(det, ev, t, t + 120_000, step_ms=250)
    first = _first_alarm(statuses, "surge")
    assert first is not None and first - (t + 60_000) < 5_000


def test_seasonal_predictor_uses_hour_of_week_after_two_weeks():
    p = RatePredictor(bucket_ms=HOUR_MS // 4, min_weeks=2)
    week = 168 * HOUR_MS
    # busy 09:00-10:00 slot (count 4000/h) vs 400/h elsewhere, for 3 weeks, in 15 min buckets
    t = 0
    while t < 3 * week:
        busy = hour_of_week(t) == 9
        p.observe(t, count=1000 if busy else 100)
        t += HOUR_MS // 4
    p.advance(t)
    nine = next(h for h in range(3 * 168, 4 * 168) if hour_of_week(h * HOUR_MS) == 9)
    assert abs(p.rate(nine * HOUR_MS) * HOUR_MS - 4000) < 1
    assert abs(p.rate((nine + 1) * HOUR_MS) * HOUR_MS - 400) < 1
    # not enough history for a slot -> EWMA
    fresh = RatePredictor(bucket_ms=HOUR_MS // 4, min_weeks=2)
    fresh.observe(0, 100)
    fresh.advance(HOUR_MS)
    assert fresh.seasonal(0) is None and fresh.rate(HOUR_MS) > 0
