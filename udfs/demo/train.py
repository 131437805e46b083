"""Train the demo model packages reproducibly.

    python -m udfs.demo.train --out models/ [--n 50000 --seed 7]

Data comes from the generator and goes through :func:`generator.augment` (the same
``augment_features`` as the streaming augment job); features come from each package's own
``features()`` in its predict.py, applied to the inputs the loader extracts. So training and
serving see the same features by construction. Artifacts are written into
``<out>/<model>/``; a package missing there is first copied from this repo's ``models/``.
The held-out set is the last quarter in time; AUCs are computed through the real loader.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from udfs.demo.generator import augment, profiles, transactions
from udfs.model_package import (
    MANIFEST_FILE,
    LoadedModel,
    extract_inputs,
    import_package_module,
    load_manifest,
    load_model,
)

Record = dict[str, Any]

SOURCE_DIR = Path(__file__).resolve().parents[2] / "models"
MODELS = ("fraud_logreg", "fraud_gbm", "fraud_rules", "fraud_canary")
THRESHOLDS = {"review": 0.3, "decline": 0.8}
#: share of cards whose profile augment does not find, so models learn to live without it
PROFILE_MISSING_RATE = 0.03
_GENERATED = ("coefficients.json", "trees.json", "model.joblib", "gbm.json", "metrics.json",
              "__pycache__")


def make_dataset(n: int, seed: int) -> tuple[list[Record], list[int]]:
    """``n`` augmented requests (time order) and their 0/1 labels."""
    cards = profiles(max(1, n // 25), seed)
    rng = random.Random(f"missing-profiles-{seed}")
    known = {p["card_id"]: p for p in cards if rng.random() >= PROFILE_MISSING_RATE}
    pairs = list(augment(transactions(n, seed, cards), known))
    return [r for r, _ in pairs], [y for _, y in pairs]


def ensure_package(out: Path, name: str) -> Path:
    """``out/name``, copied from the repo's package source if it is not there yet."""
    dest = out / name
    if not (dest / MANIFEST_FILE).is_file():
        src = SOURCE_DIR / name
        if not (src / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"no package source {src}")
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_GENERATED), dirs_exist_ok=True)
    return dest


def feature_matrix(package_dir: Path, requests: Sequence[Record]) -> tuple[np.ndarray, Any]:
    """Features of ``requests`` by the package's own ``features()``; returns (X, module)."""
    manifest = load_manifest(package_dir)
    module = import_package_module(package_dir, manifest.entry_point.split(":", 1)[0])
    rows = [module.features(extract_inputs(manifest.inputs, r)) for r in requests]
    return np.asarray(rows, dtype=np.float64), module


def _auc(y: Sequence[int], p: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def _fit_logistic(package_dir: Path, x: np.ndarray, y: np.ndarray, names: Sequence[str],
                  seed: int) -> None:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((x - mean) / scale, y)
    # fold the standardisation into the weights: predict() is then a single dot product
    w = clf.coef_[0] / scale
    b = float(clf.intercept_[0] - np.dot(w, mean))
    spec = {"features": list(names), "weights": [float(v) for v in w], "intercept": b,
            "thresholds": THRESHOLDS}
    (package_dir / "coefficients.json").write_text(json.dumps(spec, indent=2) + "\n")


def _bitset_members(words: Any) -> list[int]:
    """The values set in one scikit-learn bitset (8 uint32 words -> values 0..255)."""
    return [32 * w + b for w, word in enumerate(words) for b in range(32) if int(word) >> b & 1]


def _json_float(v: Any) -> float | str:
    """A split threshold for JSON: ``"inf"``/``"-inf"`` (float() reads them back) for the
    infinite thresholds of splits that only separate missing values."""
    f = float(v)
    if f != f:
        raise ValueError("NaN split threshold")
    return f if math.isfinite(f) else repr(f)


def export_trees(clf: Any, names: Sequence[str]) -> Record:
    """A fitted binary ``HistGradientBoostingClassifier`` as plain JSON-able data.

    Exactly what sklearn's ``predict_proba`` evaluates (``_raw_predict`` over
    ``_predictors`` plus ``_baseline_prediction``, then expit), so that predict.py can walk
    the trees in pure Python. Floats survive JSON unchanged (repr round-trips).

    * ``columns[j]``: the feature index tree column ``j`` reads. With categorical features
      the estimator's ColumnTransformer puts them first, so tree columns are reordered.
    * ``categories[j]``: for a categorical tree column, the raw values its OrdinalEncoder
      knows; a value's code is its position, anything else (unknown, NaN) is NaN.
    * ``known_categories[j]``: the codes the bin mapper knows (others route as missing).
    * each tree: parallel node lists; ``left_categories`` is the left-going code set of a
      categorical split (from ``raw_left_cat_bitsets``), ``None`` elsewhere.
    """
    if clf.n_trees_per_iteration_ != 1:
        raise ValueError("export_trees supports binary classifiers only")
    n = len(names)
    pre = clf._preprocessor
    columns = list(range(n))
    categories: dict[str, list[float]] = {}
    if pre is not None:
        columns = []
        for tname, _, _ in pre.transformers_:
            columns.extend(int(i) for i in pre._transformer_to_input_indices[tname])
        encoder = pre.named_transformers_["encoder"]
        start = pre.output_indices_["encoder"].start
        for k, cats in enumerate(encoder.categories_):
            values = [float(c) for c in cats]
            if values and values[-1] != values[-1]:  # NaN is encoded as missing
                values = values[:-1]
            categories[str(start + k)] = values
    if sorted(columns) != list(range(n)):
        raise ValueError(f"unexpected column layout {columns}")
    mapper = clf._bin_mapper
    known = {str(j): [int(v) for v in mapper.bin_thresholds_[j]]
             for j in range(n) if mapper.is_categorical_[j]}
    if set(known) != set(categories):
        raise ValueError("categorical columns of the encoder and bin mapper differ")
    trees = []
    for (predictor,) in clf._predictors:
        nodes = predictor.nodes
        bitsets = predictor.raw_left_cat_bitsets
        leaf = [bool(v) for v in nodes["is_leaf"]]
        cat = [bool(v) and not lf for v, lf in zip(nodes["is_categorical"], leaf, strict=True)]
        trees.append({
            "feature": [int(v) for v in nodes["feature_idx"]],
            "threshold": [0.0 if lf or c else _json_float(v)
                          for v, lf, c in zip(nodes["num_threshold"], leaf, cat, strict=True)],
            "missing_left": [bool(v) for v in nodes["missing_go_to_left"]],
            "left": [int(v) for v in nodes["left"]],
            "right": [int(v) for v in nodes["right"]],
            "is_leaf": leaf,
            "value": [float(v) if lf else 0.0 for v, lf in zip(nodes["value"], leaf, strict=True)],
            "left_categories": [_bitset_members(bitsets[b]) if c else None
                                for b, c in zip(nodes["bitset_idx"], cat, strict=True)],
        })
    return {
        "columns": columns,
        "categories": categories,
        "known_categories": known,
        "baseline": float(clf._baseline_prediction[0, 0]),
        "trees": trees,
    }


def _fit_gbm(package_dir: Path, x: np.ndarray, y: np.ndarray, module: Any, seed: int) -> Any:
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    names = list(module.FEATURES)
    clf = HistGradientBoostingClassifier(
        max_iter=60, learning_rate=0.2, max_leaf_nodes=31, l2_regularization=1.0,
        categorical_features=[names.index(c) for c in module.CATEGORICAL],
        early_stopping=False, random_state=seed,
    )
    clf.fit(x, y)
    # predict.py walks the exported trees in pure Python: no sklearn/joblib when serving
    spec = {"features": names, "thresholds": THRESHOLDS, "sklearn": sklearn.__version__,
            **export_trees(clf, names)}
    (package_dir / "trees.json").write_text(json.dumps(spec, allow_nan=False) + "\n")
    for stale in ("model.joblib", "gbm.json"):  # artifacts of the former sklearn runtime
        (package_dir / stale).unlink(missing_ok=True)
    return clf


def _decision(p: float) -> str:
    return ("decline" if p >= THRESHOLDS["decline"]
            else "review" if p >= THRESHOLDS["review"] else "approve")


def _latency_us(model: LoadedModel, requests: Sequence[Record], n: int = 300) -> float:
    sample = [requests[i % len(requests)] for i in range(n)]
    times = []
    for r in sample:
        t0 = time.perf_counter_ns()
        model.predict(r)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(times)


def train_all(
    out: Path | str, n: int = 50_000, seed: int = 7, models: Sequence[str] = MODELS,
    log: Any = print,
) -> dict[str, Record]:
    """Train (or, for rules, just evaluate) ``models`` into ``out``; returns their metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    requests, labels = make_dataset(n, seed)
    cut = int(len(requests) * 0.75)
    train_req, test_req = requests[:cut], requests[cut:]
    y_train, y_test = np.asarray(labels[:cut]), labels[cut:]
    log(f"data: {n} transactions, fraud rate {np.mean(labels):.3%}, "
        f"{time.perf_counter() - t_start:.1f} s")
    results: dict[str, Record] = {}
    for name in models:
        t0 = time.perf_counter()
        pkg = ensure_package(out, name)
        batch_p: np.ndarray | None = None
        if name in ("fraud_logreg", "fraud_canary"):
            x, module = feature_matrix(pkg, train_req)
            _fit_logistic(pkg, x, y_train, module.FEATURES, seed)
        elif name == "fraud_gbm":
            x, module = feature_matrix(pkg, train_req)
            clf = _fit_gbm(pkg, x, y_train, module, seed)
            x_test, _ = feature_matrix(pkg, test_req)
            batch_p = clf.predict_proba(x_test)[:, 1]
        fit_s = time.perf_counter() - t0
        model = load_model(pkg)
        if batch_p is None:
            outs = [model.predict(r)[0] for r in test_req]
        else:  # slow per request: score in batch, and check the serving path on a sample
            outs = [model.predict(r)[0] for r in test_req[:200]]
            served = np.array([o["numbers"]["fraud_probability"] for o in outs])
            if not np.allclose(served, batch_p[:200]):
                raise AssertionError(f"{name}: serving path disagrees with batch predictions")
        probs = ([o["numbers"]["fraud_probability"] for o in outs] if batch_p is None
                 else [float(v) for v in batch_p])
        metrics = {
            "model": name,
            "version": model.version,
            "auc": round(_auc(y_test, probs), 4),
            "n_train": cut,
            "n_test": len(test_req),
            "fraud_rate": round(float(np.mean(labels)), 4),
            "seed": seed,
            "train_seconds": round(fit_s, 2),
            "decisions_on_test": dict(Counter(
                o["labels"]["decision"] for o in outs) if batch_p is None
                else Counter(_decision(float(v)) for v in batch_p)),
            "predict_latency_us_median": round(_latency_us(model, test_req), 1),
        }
        (pkg / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        results[name] = metrics
        log(f"{name:13s} v{model.version}: AUC {metrics['auc']:.4f}  "
            f"fit {fit_s:5.2f} s  predict {metrics['predict_latency_us_median']:8.1f} us")
    log(f"total {time.perf_counter() - t_start:.1f} s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udfs.demo.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=SOURCE_DIR,
                    help="directory holding the model packages (default: the repo's models/)")
    ap.add_argument("--n", type=int, default=50_000, help="transactions to generate")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = ap.parse_args(argv)
    if args.n < 1000:
        ap.error("--n must be at least 1000 (enough frauds for a held-out AUC)")
    train_all(args.out, args.n, args.seed, args.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
