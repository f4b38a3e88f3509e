#!/usr/bin/env bash
# GET / throughput and p99 latency with wrk (-t2 -c50), for the app (request logs on, as in
# production) and for a raw WSGI baseline on the same waitress settings. Runs alternate,
# so both see the same noise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

RUNS="${RUNS:-5}"
DURATION="${BENCH_DURATION:-8s}"
PYTHON="$ROOT/.venv/bin/python"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

app_port="$(free_port)"
raw_port="$(free_port)"
logs="$(mktemp -d)"
(cd "$ROOT" && PORT="$app_port" DATABASE_URL="sqlite:///$logs/bench.sqlite3" \
  exec "$PYTHON" -m app) >"$logs/app.log" 2>&1 &
app_pid=$!
(cd "$ROOT/scripts/bench" && exec "$ROOT/.venv/bin/waitress-serve" --port="$raw_port" --threads=4 \
  --ident= raw_wsgi:app) >"$logs/raw.log" 2>&1 &
raw_pid=$!
trap 'kill "$app_pid" "$raw_pid" 2>/dev/null; wait; rm -rf "$logs"' EXIT

for port in "$app_port" "$raw_port"; do
  for try in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    ((try < 100)) || { echo "no server answered on port $port" >&2; cat "$logs"/*.log >&2; exit 1; }
    sleep 0.1
  done
done

# Prints "requests_per_second p99_milliseconds".
measure() {
  wrk -t2 -c50 -d"$DURATION" --latency "http://127.0.0.1:$1/" | awk '
    /^Requests\/sec/ {rps = $2}
    /^ +99%/ {v = $2; ms = v + 0; if (v ~ /us$/) ms /= 1000; else if (v ~ /[^m]s$/) ms *= 1000; p99 = ms}
    END {print rps, p99}'
}

app_rps=() app_p99=() raw_rps=() ratios=()
for _ in $(seq "$RUNS"); do
  read -r a_rps a_p99 < <(measure "$app_port")
  read -r r_rps _ < <(measure "$raw_port")
  app_rps+=("$a_rps") app_p99+=("$a_p99") raw_rps+=("$r_rps")
  ratios+=("$(ratio "$a_rps" "$r_rps")")
done

printf 'GET / on the app (waitress, 1 process, 4 threads), wrk -t2 -c50 -d%s, %d runs:\n' "$DURATION" "$RUNS"
printf '  throughput: median %.0f req/s   p99 latency: median %.1f ms\n' \
  "$(median "${app_rps[@]}")" "$(median "${app_p99[@]}")"
printf '  raw WSGI baseline on the same waitress: median %.0f req/s\n' "$(median "${raw_rps[@]}")"
printf '  app / baseline throughput ratio (per run, same noise): median %.2f\n' "$(median "${ratios[@]}")"
