#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing (.venv, jars), starts the
# local Kafka + Flink platform, runs lint, type checks and the whole pytest suite, and stops
# the platform again, even on failure. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash deploy/bootstrap.sh
trap '.venv/bin/rdv down || true' EXIT
.venv/bin/rdv up
.venv/bin/ruff check .
.venv/bin/mypy rdv jobs udfs bench
.venv/bin/python -m pytest -p no:randomly -W ignore::DeprecationWarning "$@"
