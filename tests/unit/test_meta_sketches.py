"""t-digest accuracy, windowed sketching, store merges vs numpy on the raw data."""

from __future__ import annotations

import numpy as np
import pytest
from fastdigest import TDigest

from udfs.codec import codec_for
from udfs.meta.sketches import (
    DEFAULT_MAX_CENTROIDS,
    HOUR_MS,
    P999_CENTROIDS,
    QuantileNormalizer,
    ScoreSketcher,
    SketchStore,
    histogram,
    quantile_bin_edges,
)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_p999_within_1pct_on_lognormal_windowed_and_merged(sigma):
    centroids = DEFAULT_MAX_CENTROIDS
    assert centroids >= P999_CENTROIDS
    rng = np.random.default_rng(11)
    x = rng.lognormal(0.0, sigma, 400_000)
    sk = ScoreSketcher(window_ms=10_000, max_centroids=centroids)
    for i, v in enumerate(x[:20_000]):  # per-value path
        sk.update("m", {}, v, ts_ms=i)
    store = SketchStore(max_centroids=centroids)
    store.add_all(sk.flush(10**9))
    for k, chunk in enumerate(np.split(x[20_000:], 190)):  # many windows, merged
        store.add("m", {}, (k + 1) * 10_000, (k + 2) * 10_000, len(chunk),
                  TDigest.from_values(chunk.tolist()).to_bytes())
    d = store.query("m", 0, 10**9)
    assert d is not None and d.n_values == len(x)
    for q in (0.5, 0.99, 0.999):
        assert abs(d.quantile(q) / np.quantile(x, q) - 1) < 0.01, q


def _fill(rng, store, raw, hours=3, window_ms=10_000):
    tagsets = [{"channel": c, "region": r} for c in ("web", "app") for r in ("eu", "us")]
    for t in range(0, hours * HOUR_MS, window_ms):
        for i, tags in enumerate(tagsets):
            v = rng.lognormal(i * 0.3, 1.0, 30)
            store.add("m1", tags, t, t + window_ms, len(v), TDigest.from_values(v).to_bytes())
            raw.append((t, tags, v))
    store.add("m2", {"channel": "web"}, 0, window_ms, 1, TDigest.from_values([1e6]).to_bytes())
    store.commit()


@pytest.mark.parametrize("rollups", [True, False])
def test_store_merge_matches_numpy_over_tags_and_ranges(rollups):
    rng = np.random.default_rng(3)
    store, raw = SketchStore(rollups=rollups), []
    _fill(rng, store, raw)
    cases = [
        (0, 3 * HOUR_MS, {}),
        (0, 3 * HOUR_MS, {"channel": "web"}),
        (1_234_567, 2 * HOUR_MS + 555_000, {"region": "us"}),  # partial hours at both ends
        (HOUR_MS, 2 * HOUR_MS, {"channel": "app", "region": "eu"}),
        (500_000, 700_000, {}),  # inside one hour
    ]
    for _ in range(2):  # second round answers from the cached rollups
        for lo, hi, tags in cases:
            vals = np.concatenate([v for t, tg, v in raw if lo <= t < hi
                                   and all(tg.get(k) == x for k, x in tags.items())])
            d = store.query("m1", lo, hi, tags)
            assert d is not None and d.n_values == len(vals)
            assert store.count("m1", lo, hi, tags) == len(vals)
            for q in (0.1, 0.5, 0.9, 0.99):
                assert abs(d.quantile(q) / np.quantile(vals, q) - 1) < 0.02, (lo, hi, tags, q)
    assert store.query("m1", 0, HOUR_MS, {"channel": "tv"}) is None
    assert store.query("m2", 0, HOUR_MS, {}).quantile(0.5) == 1e6


def test_adding_a_window_invalidates_its_hour_rollup(tmp_path):
    store = SketchStore(str(tmp_path / "s.db"))
    store.add("m", {}, 0, 10_000, 3, TDigest.from_values([1.0, 2.0, 3.0]).to_bytes())
    assert store.query("m", 0, HOUR_MS).n_values == 3  # builds the rollup
    store.add("m", {}, 10_000, 20_000, 1, TDigest.from_values([100.0]).to_bytes())
    store.add("m", {}, 0, 10_000, 1, TDigest.from_values([50.0]).to_bytes())  # merged in
    d = store.query("m", 0, HOUR_MS)
    assert d.n_values == 5 and d.max() == 100.0
    store.commit()
    store.close()
    again = SketchStore(str(tmp_path / "s.db"))  # durable, tag sets reloaded
    assert again.query("m", 0, HOUR_MS).n_values == 5


def test_sketcher_windows_and_metric_record():
    sk = ScoreSketcher(window_ms=10_000)
    for ts in range(0, 30_000, 100):
        sk.update("m", {"channel": "web"}, ts / 1000, ts)
    assert sk.flush(upto_ms=19_999)[0].window_start == 0
    closed = sk.flush(upto_ms=30_000)
    assert [(w.window_start, w.count) for w in closed] == [(10_000, 100), (20_000, 100)]
    assert sk.open_windows == 0
    rec = closed[0].metric_record()
    assert isinstance(codec_for("Metric").encode(rec), bytes)
    assert closed[0].tdigest().min() == 10.0


def test_helpers_and_normalizer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50_000)
    d = TDigest.from_values(x)
    norm = QuantileNormalizer(d)
    assert abs(norm(0.0) - 0.5) < 0.01 and norm(-100) == 0.0 and norm(100) == 1.0
    np.testing.assert_allclose(norm.transform([-1.0, 1.0]), [0.1587, 0.8413], atol=0.01)
    edges = quantile_bin_edges(d, 4)
    counts = histogram(d, [-np.inf, *edges, np.inf])
    np.testing.assert_allclose(counts, [12_500] * 4, rtol=0.02)
