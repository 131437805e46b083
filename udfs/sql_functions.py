"""Sketch functions for Flink SQL over the streams (``rdv sql``): t-digest aggregates on
fastdigest, usable in any query, e.g. ``TDIGEST_QUANTILE(latency_us, 0.99)``.

=============================  ==========  ====================================================
function                       kind        result
=============================  ==========  ====================================================
``TDIGEST(x)``                 aggregate   the t-digest of ``x`` (BYTES, ``TDigest.to_bytes``)
``TDIGEST_QUANTILE(x, q)``     aggregate   the q-quantile of ``x`` (DOUBLE)
``TDIGEST_MERGE(d)``           aggregate   digests (BYTES) merged into one (BYTES)
``TDIGEST_MERGE_QUANTILE(d,q)``aggregate   the q-quantile of the merged digests (DOUBLE)
``DIGEST_QUANTILE(d, q)``      scalar      the q-quantile of one digest (DOUBLE)
``DIGEST_CDF(d, x)``           scalar      estimated fraction of values <= x in one digest
``DIGEST_COUNT(d)``            scalar      values in one digest (BIGINT)
=============================  ==========  ====================================================

NULL and NaN inputs are skipped; an aggregate over no values is NULL. ``q`` must be in
[0, 1]. Digests are the same bytes as the sketch store's (``udfs.meta.sketches``) and the
``sketch`` field of ``Metric`` records of kind ``tdigest``, so stored windows can be merged
in SQL too. Python aggregates in Flink SQL run in process mode; they work in group
aggregates and in window TVF aggregates (``TABLE(TUMBLE(TABLE scores, ...))``), and cannot
retract (use them on append-only input: a table, a window aggregate's output).

This module is pure Python (no pyflink at import): the accumulator logic below is what the
Flink wrappers of :func:`flink_functions` call. An accumulator is a two-slot sequence
``[digest bytes or None, pending values]``: values are buffered and folded into the digest
every :data:`FLUSH_AT` values, so that it stays serialisable as ``ROW<BYTES, ARRAY<DOUBLE>>``
(the wrappers' accumulator type) without keeping a native object in Flink state.

>>> acc = new_acc()
>>> for v in range(1, 1001):
...     acc_add(acc, v)
>>> acc_quantile(acc, 0.5)
500.5
>>> blob = acc_bytes(acc)
>>> other = new_acc()
>>> acc_add_digest(other, blob)
>>> acc_add_digest(other, acc_bytes(new_acc()))  # NULL digest: skipped
>>> digest_count(acc_bytes(other)), digest_quantile(blob, 1.0)
(1000, 1000.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableSequence, Sequence
from typing import Any

from fastdigest import TDigest, merge_all

from udfs.meta.sketches import DEFAULT_MAX_CENTROIDS

#: pending values folded into the digest at once (a fold costs ~15 µs at 1000 centroids)
FLUSH_AT = 256
MAX_CENTROIDS = DEFAULT_MAX_CENTROIDS

#: ``[digest bytes | None, pending values]`` (a list here, a pyflink Row in Flink)
Acc = MutableSequence[Any]


def check_q(q: Any) -> float:
    """``q`` as a float in [0, 1] (SQL literals like 0.99 arrive as ``Decimal``).

    >>> check_q(0.5), check_q(1)
    (0.5, 1.0)
    >>> check_q(1.5)
    Traceback (most recent call last):
    ...
    ValueError: quantile q must be in [0, 1], got 1.5
    """
    try:
        f = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"quantile q must be a number in [0, 1], got {q!r}") from None
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    return f


def new_acc() -> list[Any]:
    return [None, []]


def _value(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _fold(acc: Acc) -> None:
    pending = acc[1]
    if not pending:
        return
    d = TDigest.from_bytes(acc[0]) if acc[0] else TDigest(max_centroids=MAX_CENTROIDS)
    d.batch_update(list(pending))
    acc[0] = d.to_bytes()
    acc[1] = []


def acc_add(acc: Acc, value: Any) -> None:
    """Add one value (NULL and NaN skipped)."""
    v = _value(value)
    if v is None:
        return
    if acc[1] is None:
        acc[1] = []
    acc[1].append(v)
    if len(acc[1]) >= FLUSH_AT:
        _fold(acc)


def _merged(blobs: Iterable[bytes | None]) -> bytes | None:
    digests = [TDigest.from_bytes(bytes(b)) for b in blobs if b]
    digests = [d for d in digests if d.n_values > 0]
    if not digests:
        return None
    if len(digests) == 1:
        return digests[0].to_bytes()
    return merge_all(digests, MAX_CENTROIDS).to_bytes()


def acc_add_digest(acc: Acc, blob: bytes | None) -> None:
    """Merge one serialised digest (NULL skipped) into the accumulator."""
    if not blob:
        return
    _fold(acc)
    acc[0] = _merged([acc[0], blob])


def acc_merge(acc: Acc, others: Iterable[Acc]) -> None:
    """Merge other accumulators into ``acc`` (session windows, two-phase aggregation)."""
    _fold(acc)
    blobs: list[bytes | None] = [acc[0]]
    for o in others:
        _fold(o)
        blobs.append(o[0])
    acc[0] = _merged(blobs)


def acc_digest(acc: Acc) -> TDigest | None:
    """The accumulator's digest (pending values included; the accumulator is unchanged)."""
    d = TDigest.from_bytes(acc[0]) if acc[0] else None
    if acc[1]:
        if d is None:
            d = TDigest(max_centroids=MAX_CENTROIDS)
        d.batch_update(list(acc[1]))
    return d if d is not None and d.n_values > 0 else None


def acc_bytes(acc: Acc) -> bytes | None:
    d = acc_digest(acc)
    return None if d is None else d.to_bytes()


def acc_quantile(acc: Acc, q: Any) -> float | None:
    qq = check_q(q)
    d = acc_digest(acc)
    return None if d is None else float(d.quantile(qq))


def digest_quantile(blob: bytes | None, q: Any) -> float | None:
    """Quantile of one serialised digest (NULL for NULL or an empty digest)."""
    qq = check_q(q)
    if not blob:
        return None
    d = TDigest.from_bytes(bytes(blob))
    return float(d.quantile(qq)) if d.n_values > 0 else None


def digest_cdf(blob: bytes | None, x: Any) -> float | None:
    """Estimated P(X <= x) of one serialised digest."""
    v = _value(x)
    if not blob or v is None:
        return None
    d = TDigest.from_bytes(bytes(blob))
    return min(1.0, max(0.0, float(d.cdf(v)))) if d.n_values > 0 else None


def digest_count(blob: bytes | None) -> int | None:
    if not blob:
        return None
    return int(TDigest.from_bytes(bytes(blob)).n_values)


def quantile_of_values(values: Sequence[float], q: float) -> float | None:
    """What ``TDIGEST_QUANTILE`` computes, for a list (tests, comparisons)."""
    acc = new_acc()
    for v in values:
        acc_add(acc, v)
    return acc_quantile(acc, q)


#: SQL name -> (kind, one-line help), for ``rdv sql --functions`` and the README
FUNCTIONS: dict[str, tuple[str, str]] = {
    "TDIGEST": ("aggregate", "TDIGEST(x): t-digest of x as BYTES (mergeable)"),
    "TDIGEST_QUANTILE": ("aggregate", "TDIGEST_QUANTILE(x, q): q-quantile of x (DOUBLE)"),
    "TDIGEST_MERGE": ("aggregate", "TDIGEST_MERGE(d): digests merged into one (BYTES)"),
    "TDIGEST_MERGE_QUANTILE": (
        "aggregate", "TDIGEST_MERGE_QUANTILE(d, q): q-quantile of the merged digests (DOUBLE)"),
    "DIGEST_QUANTILE": ("scalar", "DIGEST_QUANTILE(d, q): q-quantile of one digest (DOUBLE)"),
    "DIGEST_CDF": ("scalar", "DIGEST_CDF(d, x): estimated fraction of values <= x (DOUBLE)"),
    "DIGEST_COUNT": ("scalar", "DIGEST_COUNT(d): number of values in one digest (BIGINT)"),
}


def flink_functions() -> dict[str, Any]:
    """The functions of :data:`FUNCTIONS` as PyFlink UDF/UDAF objects, by SQL name, for
    ``TableEnvironment.create_temporary_system_function``. Imports pyflink (no JVM yet); the
    classes are defined here so that this module stays importable without it."""
    from pyflink.table import AggregateFunction, DataTypes
    from pyflink.table.udf import udaf, udf

    acc_type = DataTypes.ROW([
        DataTypes.FIELD("digest", DataTypes.BYTES()),
        DataTypes.FIELD("pending", DataTypes.ARRAY(DataTypes.DOUBLE())),
    ])

    class _DigestAgg(AggregateFunction):
        def create_accumulator(self) -> Any:
            from pyflink.common import Row

            return Row(None, [])

        def merge(self, accumulator: Any, accumulators: Any) -> None:
            acc_merge(accumulator, list(accumulators))

        def get_accumulator_type(self) -> Any:
            return acc_type

    class TDigestAgg(_DigestAgg):
        def accumulate(self, accumulator: Any, *args: Any) -> None:
            acc_add(accumulator, args[0])

        def get_value(self, accumulator: Any) -> Any:
            return acc_bytes(accumulator)

        def get_result_type(self) -> Any:
            return DataTypes.BYTES()

    class TDigestQuantile(_DigestAgg):
        def create_accumulator(self) -> Any:
            from pyflink.common import Row

            return Row(None, [], None)

        def accumulate(self, accumulator: Any, *args: Any) -> None:
            accumulator[2] = check_q(args[1])
            acc_add(accumulator, args[0])

        def get_value(self, accumulator: Any) -> Any:
            if accumulator[2] is None:
                return None
            return acc_quantile(accumulator, accumulator[2])

        def get_result_type(self) -> Any:
            return DataTypes.DOUBLE()

        def get_accumulator_type(self) -> Any:
            return DataTypes.ROW([
                DataTypes.FIELD("digest", DataTypes.BYTES()),
                DataTypes.FIELD("pending", DataTypes.ARRAY(DataTypes.DOUBLE())),
                DataTypes.FIELD("q", DataTypes.DOUBLE()),
            ])

        def merge(self, accumulator: Any, accumulators: Any) -> None:
            others = list(accumulators)
            acc_merge(accumulator, others)
            for o in others:
                if accumulator[2] is None:
                    accumulator[2] = o[2]

    class TDigestMerge(_DigestAgg):
        def accumulate(self, accumulator: Any, *args: Any) -> None:
            acc_add_digest(accumulator, args[0])

        def get_value(self, accumulator: Any) -> Any:
            return acc_bytes(accumulator)

        def get_result_type(self) -> Any:
            return DataTypes.BYTES()

    class TDigestMergeQuantile(TDigestQuantile):
        def accumulate(self, accumulator: Any, *args: Any) -> None:
            accumulator[2] = check_q(args[1])
            acc_add_digest(accumulator, args[0])

    return {
        "TDIGEST": udaf(TDigestAgg(), name="TDIGEST"),
        "TDIGEST_QUANTILE": udaf(TDigestQuantile(), name="TDIGEST_QUANTILE"),
        "TDIGEST_MERGE": udaf(TDigestMerge(), name="TDIGEST_MERGE"),
        "TDIGEST_MERGE_QUANTILE": udaf(TDigestMergeQuantile(), name="TDIGEST_MERGE_QUANTILE"),
        "DIGEST_QUANTILE": udf(digest_quantile, result_type=DataTypes.DOUBLE(),
                               name="DIGEST_QUANTILE"),
        "DIGEST_CDF": udf(digest_cdf, result_type=DataTypes.DOUBLE(), name="DIGEST_CDF"),
        "DIGEST_COUNT": udf(digest_count, result_type=DataTypes.BIGINT(), name="DIGEST_COUNT"),
    }
