#!/usr/bin/env bash
# Smoke test of the compose stack with the real commands: build and start it, wait until
# both services are healthy, check Hello World, then check that visits survive `down`/`up`.
# CI runs it on GitHub's runners with the public images and compose v2 (`up --build --wait`);
# the test suite runs it here with compose v1 and the offline stand-ins.
#
# Environment (all optional):
#   COMPOSE               compose command (default: `docker compose` when present, else docker-compose)
#   COMPOSE_PROJECT_NAME  project to create and remove (default: hello-smoke-<pid>)
#   COMPOSE_ENV_FILE      passed as --env-file, e.g. .env.offline
#   WEB_PORT              host port of the app (default 8080)
# It removes its containers and its volume on exit, whatever the outcome.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hello-smoke-$$}"
WEB_PORT="${WEB_PORT:-8080}"
export WEB_PORT
BASE_URL="http://127.0.0.1:$WEB_PORT"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"

if [[ -n "${COMPOSE:-}" ]]; then
  read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
if [[ -n "${COMPOSE_ENV_FILE:-}" ]]; then
  compose+=(--env-file "$COMPOSE_ENV_FILE")
fi

log() { printf '==> %s\n' "$*" >&2; }
fail() {
  printf 'compose_smoke: FAIL: %s\n' "$*" >&2
  "${compose[@]}" ps >&2 || true
  "${compose[@]}" logs --tail 30 >&2 || true
  exit 1
}
cleanup() { "${compose[@]}" down --volumes --remove-orphans --rmi local >/dev/null 2>&1 || true; }
trap cleanup EXIT

# v2 waits by itself; v1 has no --wait, so poll each container's health status.
up() {
  if [[ "${compose[*]}" == "docker compose"* ]]; then
    "${compose[@]}" up --build --wait --wait-timeout "$HEALTH_TIMEOUT" \
      || fail "the stack did not turn healthy"
    return
  fi
  "${compose[@]}" up --build --detach || fail "docker-compose up failed"
  local deadline=$((SECONDS + HEALTH_TIMEOUT)) ids status
  while :; do
    mapfile -t ids < <("${compose[@]}" ps -q)
    status="$(docker inspect -f '{{.State.Health.Status}}' "${ids[@]}" 2>/dev/null | sort -u)" || true
    [[ ${#ids[@]} -eq 2 && "$status" == healthy ]] && return
    ((SECONDS < deadline)) || fail "not healthy after ${HEALTH_TIMEOUT}s"
    sleep 1
  done
}

visits() {
  curl -fsS "$@" "$BASE_URL/visits" | grep -o '"visits": *[0-9]*' | grep -o '[0-9]*$'
}

main() {
  log "Starting project $COMPOSE_PROJECT_NAME with ${compose[*]} on port $WEB_PORT"
  up
  body="$(curl -fsS "$BASE_URL/")"
  [[ "$body" == "Hello World" ]] || fail "GET / answered '$body', not 'Hello World'"
  log "GET / answers Hello World"

  before="$(visits)"
  after="$(visits -X POST)"
  [[ "$after" == $((before + 1)) ]] || fail "POST /visits went from $before to $after"

  "${compose[@]}" down
  up
  kept="$(visits)"
  [[ "$kept" == "$after" ]] || fail "visits were $after before down/up and $kept after"
  log "visits persisted across down/up ($kept)"
  log "compose smoke test passed"
}

main "$@"
