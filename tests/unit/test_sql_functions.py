"""The sketch functions' accumulator logic (what the Flink UDAFs call), without a JVM."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
from fastdigest import TDigest

from udfs import sql_functions as f


def _acc(values: list[float]) -> list:
    acc = f.new_acc()
    for v in values:
        f.acc_add(acc, v)
    return acc


def test_quantiles_match_numpy_on_a_long_tailed_sample() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(0.0, 1.0, 50_000)
    acc = _acc(list(values))
    for q in (0.5, 0.9, 0.99, 0.999):
        got = f.acc_quantile(acc, q)
        assert got is not None
        assert got == pytest.approx(np.quantile(values, q), rel=0.01), q


def test_nulls_nans_and_empty_input() -> None:
    acc = _acc([])
    assert f.acc_quantile(acc, 0.5) is None and f.acc_bytes(acc) is None
    f.acc_add(acc, None)
    f.acc_add(acc, math.nan)
    assert f.acc_quantile(acc, 0.5) is None
    f.acc_add(acc, 4)
    assert f.acc_quantile(acc, Decimal("0.5")) == 4.0  # SQL literals arrive as Decimal


def test_bad_q_is_an_error() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        f.acc_quantile(_acc([1.0]), 1.01)
    with pytest.raises(ValueError, match="number"):
        f.check_q("p99")


def test_pending_values_are_folded_and_still_counted() -> None:
    acc = _acc([float(i) for i in range(f.FLUSH_AT + 10)])
    assert acc[0] is not None and len(acc[1]) == 10
    assert f.digest_count(f.acc_bytes(acc)) == f.FLUSH_AT + 10


def test_merging_accumulators_equals_one_pass() -> None:
    rng = np.random.default_rng(5)
    parts = [list(rng.normal(i, 1.0, 700)) for i in range(5)]
    accs = [_acc(p) for p in parts]
    merged = f.new_acc()
    f.acc_merge(merged, accs)
    allv = np.concatenate(parts)
    assert f.digest_count(f.acc_bytes(merged)) == len(allv)
    for q in (0.1, 0.5, 0.9):
        assert f.acc_quantile(merged, q) == pytest.approx(np.quantile(allv, q), abs=0.05)


def test_digest_bytes_merge_like_the_sketch_store() -> None:
    rng = np.random.default_rng(9)
    windows = [rng.exponential(1.0, 400) for _ in range(12)]
    blobs = [f.acc_bytes(_acc(list(w))) for w in windows]
    acc = f.new_acc()
    for b in [*blobs, None]:
        f.acc_add_digest(acc, b)
    allv = np.concatenate(windows)
    merged = f.acc_bytes(acc)
    assert f.digest_count(merged) == len(allv)
    assert f.digest_quantile(merged, 0.9) == pytest.approx(np.quantile(allv, 0.9), rel=0.02)
    assert f.digest_cdf(merged, 1.0) == pytest.approx(np.mean(allv <= 1.0), abs=0.01)
    # the same bytes as the sketch store's digests
    assert TDigest.from_bytes(merged).n_values == len(allv)


def test_scalar_functions_on_null() -> None:
    assert f.digest_quantile(None, 0.5) is None
    assert f.digest_cdf(None, 1.0) is None and f.digest_cdf(b"x", None) is None
    assert f.digest_count(None) is None


def test_every_function_is_documented() -> None:
    assert set(f.FUNCTIONS) == {"TDIGEST", "TDIGEST_QUANTILE", "TDIGEST_MERGE",
                                "TDIGEST_MERGE_QUANTILE", "DIGEST_QUANTILE", "DIGEST_CDF",
                                "DIGEST_COUNT"}
    assert all(doc.startswith(name + "(") for name, (_, doc) in f.FUNCTIONS.items())
