#!/usr/bin/env bash
# Time from `./start.sh` to the first 200 on /, with the venv already installed.
# Goal: <= 1 s.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

RUNS="${RUNS:-5}"
port="$(free_port)"
"$ROOT/start.sh" install >/dev/null

samples=()
for _ in $(seq "$RUNS"); do
  started="$(now)"
  PORT="$port" "$ROOT/start.sh" >/dev/null
  curl -fsS -o /dev/null "http://127.0.0.1:$port/"
  samples+=("$(seconds_since "$started")")
  PORT="$port" "$ROOT/start.sh" stop >/dev/null
done
printf 'start.sh to first 200: median %.3f s over %d runs (goal <= 1 s); samples: %s\n' \
  "$(median "${samples[@]}")" "$RUNS" "${samples[*]}"
