#!/usr/bin/env bash
# Prints the variables that select the project's base images, one KEY=VALUE a line:
# the public images (the defaults in Dockerfile and docker-compose.yml) when they are
# present or can be pulled, otherwise the offline stand-ins, built when missing.
# The test suite and scripts/bench/docker.sh both call it, so they always pick alike.
# Variables already set in the environment win.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

public_image() {
  case "$1" in
    PYTHON_IMAGE) sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO_ROOT/Dockerfile" ;;
    POSTGRES_IMAGE) grep -o 'POSTGRES_IMAGE:-[^}]*' "$REPO_ROOT/docker-compose.yml" | cut -d- -f2- ;;
  esac
}

have_or_pull() {
  docker image inspect "$1" >/dev/null 2>&1 || docker pull --quiet "$1" >/dev/null 2>&1
}

main() {
  local var image all_public=1
  declare -A chosen from_env
  for var in PYTHON_IMAGE POSTGRES_IMAGE; do
    image="${!var:-$(public_image "$var")}"
    [[ -n "$image" ]] || { echo "select.sh: no default found for $var" >&2; exit 1; }
    chosen[$var]="$image"
    if [[ -n "${!var:-}" ]]; then
      from_env[$var]=1
    elif ! have_or_pull "$image"; then
      all_public=0
    fi
  done
  if ((all_public == 0)); then
    echo "select.sh: cannot pull the public base images; using the offline stand-ins" >&2
    "$REPO_ROOT/scripts/images/build.sh" python postgres
    for var in PYTHON_IMAGE POSTGRES_IMAGE; do
      [[ -n "${from_env[$var]:-}" ]] || chosen[$var]="$(sed -n "s/^$var=//p" "$REPO_ROOT/.env.offline")"
    done
  fi
  for var in PYTHON_IMAGE POSTGRES_IMAGE; do echo "$var=${chosen[$var]}"; done
}

main "$@"
