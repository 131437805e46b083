"""Benchmark: merged sketch queries over a day of 10 s windows (8,640 per tag set).

Fills a :class:`udfs.meta.sketches.SketchStore` (sqlite, on disk in a temp dir) with one
model, 4 tag combinations (channel × region), 8,640 windows each of 10 s with 50 lognormal
scores per window, then times merged queries: full day, one hour, a 10-minute range,
with and without tag filters, with hourly rollups (cold = first query builds them, warm)
and without rollups. Writes ``bench/results/sketch_query-<timestamp>.json`` and prints
medians. Target: < 1 s for the full-day query.

    .venv/bin/python -m bench.sketch_query [--repeat 5] [--tagsets 4] [--per-window 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from fastdigest import TDigest

from udfs.meta.sketches import DEFAULT_MAX_CENTROIDS, SketchStore

DAY_MS = 86_400_000
WINDOW_MS = 10_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, hour-aligned


def fill(store: SketchStore, tagsets: list[dict[str, str]], per_window: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with store.db:
        for t in range(T0, T0 + DAY_MS, WINDOW_MS):
            for i, tags in enumerate(tagsets):
                v = rng.lognormal(0.2 * i, 1.0, per_window)
                d = TDigest(max_centroids=DEFAULT_MAX_CENTROIDS)
                d.batch_update(v.tolist())
                store.add("m1", tags, t, t + WINDOW_MS, per_window, d.to_bytes())


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tagsets", type=int, default=4)
    ap.add_argument("--per-window", type=int, default=50)
    args = ap.parse_args(argv)
    tagsets = [{"channel": c, "region": r} for c in ("web", "app", "api", "batch")
               for r in ("eu", "us", "ap")][: args.tagsets]
    results: dict = {"windows_per_tagset": DAY_MS // WINDOW_MS, "tagsets": len(tagsets),
                     "per_window": args.per_window, "max_centroids": DEFAULT_MAX_CENTROIDS,
                     "queries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = SketchStore(str(Path(tmp) / "sketches.db"))
        fill(store, tagsets, args.per_window, 0)
        results["fill_s"] = time.perf_counter() - t
        plain = SketchStore(str(Path(tmp) / "sketches.db"), rollups=False)
        cases = {
            "day_all_tags": (T0, T0 + DAY_MS, {}),
            "day_channel_web": (T0, T0 + DAY_MS, {"channel": "web"}),
            "day_one_tagset": (T0, T0 + DAY_MS, tagsets[0]),
            "hour_all_tags": (T0 + 5 * 3_600_000, T0 + 6 * 3_600_000, {}),
            "hour_channel_web": (T0 + 5 * 3_600_000, T0 + 6 * 3_600_000, {"channel": "web"}),
            "10min_unaligned": (T0 + 12_345_000, T0 + 12_945_000, {}),
            "day_unaligned_all_tags": (T0 + 1_234_000, T0 + DAY_MS - 4_321_000, {}),
        }
        for name, (lo, hi, tags) in cases.items():
            cold = timed(lambda lo=lo, hi=hi, tags=tags: store.query("m1", lo, hi, tags), 1)
            warm = timed(lambda lo=lo, hi=hi, tags=tags: store.query("m1", lo, hi, tags),
                         args.repeat)
            raw = timed(lambda lo=lo, hi=hi, tags=tags: plain.query("m1", lo, hi, tags),
                        max(1, args.repeat // 2))
            d = store.query("m1", lo, hi, tags)
            results["queries"][name] = {
                "n_values": int(d.n_values) if d is not None else 0,
                "p99": float(d.quantile(0.99)) if d is not None else None,
                "rollup_cold_s": cold[0],
                "rollup_warm_median_s": statistics.median(warm),
                "no_rollup_median_s": statistics.median(raw),
            }
        store.close()
        plain.close()
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"sketch_query-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"fill {results['fill_s']:.1f} s; results in {path}")
    print(f"{'query':<24}{'n':>10}{'cold':>10}{'warm':>10}{'no rollup':>12}  (median s)")
    for name, r in results["queries"].items():
        print(f"{name:<24}{r['n_values']:>10}{r['rollup_cold_s']:>10.3f}"
              f"{r['rollup_warm_median_s']:>10.4f}{r['no_rollup_median_s']:>12.3f}")
    return results


if __name__ == "__main__":
    main()
