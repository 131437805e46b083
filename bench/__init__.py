"""Benchmarks (not part of the test suite): ``python -m bench`` (load, latency, overhead
ratios against bare Kafka and a bare PyFlink hop) and ``python -m bench.sketch_query``."""
