#!/usr/bin/env bash
# make bench: measure, print figures, assert nothing. Medians of several runs, because
# this machine is noisy; servers are compared as ratios measured in the same run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_DIR="$ROOT/scripts/bench"
RUNS="${BENCH_RUNS:-5}"

for script in "$BENCH_DIR"/start.sh "$BENCH_DIR"/http.sh "$BENCH_DIR"/docker.sh; do
  [[ -x "$script" ]] || continue
  printf '\n== %s\n' "${script#"$ROOT"/}"
  RUNS="$RUNS" "$script"
done
for script in "$BENCH_DIR"/workers.py "$BENCH_DIR"/db.py; do
  printf '\n== %s\n' "${script#"$ROOT"/}"
  RUNS="$RUNS" "$ROOT/.venv/bin/python" "$script"
done
