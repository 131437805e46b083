#!/usr/bin/env bash
# The "run the system" command: installs what is missing (.venv, jars; deploy/bootstrap.sh),
# then `rdv demo`: brings up Kafka + Flink, trains the demo models if needed, starts the
# pipeline, publishes the demo schedule and drives demo traffic with a live summary.
# Arguments go to `rdv demo` (e.g. --rate 100 --seconds 30; see `rdv demo --help`).
# Works from any directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/deploy/bootstrap.sh"
exec "$ROOT/.venv/bin/rdv" demo "$@"
