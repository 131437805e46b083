#!/usr/bin/env bash
# Installs everything the project needs, idempotently and with a cache:
#  - .venv with the project and its pinned Python packages (re-installed when pyproject changes)
#  - $RDV_HOME/jars/kafka  the Kafka broker's jars   (deploy/maven/kafka/pom.xml)
#  - $RDV_HOME/jars/flink  the Flink Kafka connector (deploy/maven/flink/pom.xml) and our
#                          raw-record (de)serialiser  (deploy/java)
# Needs only python3.11, java 17 and mvn on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RDV_HOME="${RDV_HOME:-$ROOT/.rdv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
for tool in java mvn "$PY"; do
  command -v "$tool" >/dev/null || { echo "bootstrap: '$tool' not found on PATH; install it (needs Python 3.11, Java 17, Maven)" >&2; exit 2; }
done
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || { echo "bootstrap: need Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 2; }

stamp() { cat "$@" | sha256sum | cut -c1-16; }
mkdir -p "$RDV_HOME"

# 1. virtualenv
want="$(stamp "$ROOT/pyproject.toml")"
if [ ! -x "$ROOT/.venv/bin/python" ] || [ "$(cat "$ROOT/.venv/.rdv-stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv (first time ~1 min)"
  [ -x "$ROOT/.venv/bin/python" ] || "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
  echo "$want" > "$ROOT/.venv/.rdv-stamp"
fi

# 2. jars (Maven's local repository is the download cache)
want="$(stamp "$ROOT"/deploy/maven/*/pom.xml "$ROOT"/deploy/java/pom.xml "$ROOT"/deploy/java/src/main/java/io/rendezvous/flink/*.java)"
if [ "$(cat "$RDV_HOME/jars/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: fetching Kafka broker and Flink connector jars with Maven"
  rm -rf "$RDV_HOME/jars"; mkdir -p "$RDV_HOME/jars/kafka" "$RDV_HOME/jars/flink"
  (cd "$ROOT/deploy/maven/kafka" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$RDV_HOME/jars/kafka")
  (cd "$ROOT/deploy/maven/flink" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DexcludeArtifactIds=slf4j-api,commons-lang3 -DoutputDirectory="$RDV_HOME/jars/flink")
  (cd "$ROOT/deploy/java" && mvn -q -B package -DskipTests && cp target/rdv-flink-kafka-*.jar "$RDV_HOME/jars/flink/")
  # rdv sql: the 'avro' table format for queries in a local mini-cluster (deploy/maven/sql/pom.xml)
  mkdir -p "$RDV_HOME/jars/sql"
  (cd "$ROOT/deploy/maven/sql" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$RDV_HOME/jars/sql")
  echo "$want" > "$RDV_HOME/jars/.stamp"
fi
