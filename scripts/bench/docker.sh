#!/usr/bin/env bash
# Docker figures for `make bench`; printed, never asserted:
#   - what the image adds on top of its base image     (goal <= 20 MB)
#   - a rebuild after a code-only change              (goal <= 5 s)
#   - docker-compose up until both services are healthy, images already built (goal <= 15 s)
# Base images: the public ones, or the offline stand-ins (scripts/images/select.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO_ROOT="$PWD"
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

log() { printf '==> %s\n' "$*" >&2; }

PROJECT="hello-bench-$$"
IMAGE="hello-bench-app:$$"
CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/hello-bench.XXXXXX")"
ENV_FILE="$CONTEXT.env"
if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
compose+=(--project-name "$PROJECT" --env-file "$ENV_FILE")

cleanup() {
  "${compose[@]}" down --volumes --remove-orphans --rmi local >/dev/null 2>&1 || true
  docker rmi "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$CONTEXT" "$ENV_FILE"
}
trap cleanup EXIT

image_size() { docker image inspect --format '{{.Size}}' "$1"; }

build() { docker build --quiet --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --tag "$IMAGE" "$@" >/dev/null 2>&1; }

bench_size() {
  local added
  build "$REPO_ROOT"
  added=$(($(image_size "$IMAGE") - $(image_size "$PYTHON_IMAGE")))
  awk -v b="$added" -v base="$PYTHON_IMAGE" \
    'BEGIN { printf "docker image: adds %.1f MB on top of %s (goal <= 20 MB)\n", b / 1e6, base }'
}

# A copy of the build context, so the code change never touches the working tree.
bench_code_rebuild() {
  local start
  cp -r Dockerfile .dockerignore requirements.txt app "$CONTEXT/"
  build "$CONTEXT"
  printf '\n# bench: code-only change %s\n' "$$" >>"$CONTEXT/app/main.py"
  start="$(now)"
  build "$CONTEXT"
  echo "docker image: code-only rebuild in $(seconds_since "$start") s (goal <= 5 s)"
}

wait_healthy() {
  local ids status
  while :; do
    mapfile -t ids < <("${compose[@]}" ps -q)
    status="$(docker inspect -f '{{.State.Health.Status}}' "${ids[@]}" 2>/dev/null | sort -u)" || true
    [[ ${#ids[@]} -eq 2 && "$status" == healthy ]] && return
    sleep 0.2
  done
}

bench_compose_up() {
  local start port
  port="$(free_port)"
  printf 'PYTHON_IMAGE=%s\nPOSTGRES_IMAGE=%s\nWEB_PORT=%s\n' "$PYTHON_IMAGE" "$POSTGRES_IMAGE" "$port" \
    >"$ENV_FILE"
  "${compose[@]}" build --quiet >/dev/null 2>&1
  start="$(now)"
  "${compose[@]}" up --detach >/dev/null 2>&1
  timeout 120 bash -c "$(declare -f wait_healthy); $(declare -p compose); wait_healthy" \
    || { echo "compose: not healthy after 120 s" >&2; exit 1; }
  echo "compose: up until both services are healthy in $(seconds_since "$start") s (goal <= 15 s)"
}

main() {
  local selected
  selected="$(scripts/images/select.sh)"
  PYTHON_IMAGE="$(sed -n 's/^PYTHON_IMAGE=//p' <<<"$selected")"
  POSTGRES_IMAGE="$(sed -n 's/^POSTGRES_IMAGE=//p' <<<"$selected")"
  log "Docker benchmarks on $PYTHON_IMAGE and $POSTGRES_IMAGE"
  bench_size
  bench_code_rebuild
  bench_compose_up
}

main "$@"
