"""Meta analytics (DESIGN.md §6): pure-Python building blocks, no pyflink, no I/O.

Every class is a small object fed with ``update(...)`` and timestamps passed in (injected
clock), so the same code runs inside a PyFlink operator, in ``rdv monitor`` and in tests.

- :mod:`udfs.meta.sketches` — windowed t-digests per model × tag combination, an embedded
  sqlite store answering merged queries over any time range × tag subset, quantile
  normalisation.
- :mod:`udfs.meta.compare` — request-by-request pairing with the canary / champion, q-q data,
  disagreement fraction, stratified samples of disagreeing requests, roll-out risk bound.
- :mod:`udfs.meta.rates` — event-rate change detection from the time since the n-th last
  event (Gamma tail), with an hour-of-week / EWMA rate predictor.
- :mod:`udfs.meta.drift` — k-means on reference outputs; distance to the nearest cluster as a
  drift signal; per-cluster rates.
- :mod:`udfs.meta.latency` — windowed HdrHistogram latencies with stall normalisation; trace
  spans and an OTLP-JSON / Chrome trace exporter.
- :mod:`udfs.meta.alarm` — one combined alarm from per-signal quantiles → base-10 log-odds,
  thresholded from an ``alarm_hours_per_week`` budget.

>>> import udfs.meta
>>> sorted(udfs.meta.MODULES)
['alarm', 'compare', 'drift', 'latency', 'rates', 'sketches']
"""

MODULES = ("sketches", "compare", "rates", "drift", "latency", "alarm")
