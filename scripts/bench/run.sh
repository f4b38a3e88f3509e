#!/usr/bin/env bash
# make bench: measure, print figures, assert nothing. Medians of several runs, because
# this machine is noisy; servers are compared as ratios measured in the same run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_DIR="$ROOT/scripts/bench"
RUNS="${BENCH_RUNS:-5}"

# Every tool the parts need, checked before any runs: a missing one is named with its
# package at once, not after minutes of figures.
require_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
  command -v wrk >/dev/null || missing+=("wrk (apt-get install wrk)")
  command -v git >/dev/null || missing+=("git (apt-get install git)")
  command -v docker >/dev/null || missing+=("docker (apt-get install docker.io)")
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
    || missing+=("docker-compose (apt-get install docker-compose)")
  # Debian keeps PostgreSQL's server tools off PATH.
  command -v pg_ctl >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null \
    || missing+=("pg_ctl (apt-get install postgresql)")
  if ((${#missing[@]})); then
    printf 'make bench: needs %s\n' "${missing[@]}" >&2
    exit 1
  fi
}

require_tools
for script in "$BENCH_DIR"/start.sh "$BENCH_DIR"/http.sh "$BENCH_DIR"/docker.sh; do
  [[ -x "$script" ]] || continue
  printf '\n== %s\n' "${script#"$ROOT"/}"
  RUNS="$RUNS" "$script"
done
for script in "$BENCH_DIR"/workers.py "$BENCH_DIR"/db.py; do
  printf '\n== %s\n' "${script#"$ROOT"/}"
  RUNS="$RUNS" "$ROOT/.venv/bin/python" "$script"
done
