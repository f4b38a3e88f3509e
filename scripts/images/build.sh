#!/usr/bin/env bash
# Builds offline stand-ins for public base images from Debian's packages, for machines that
# reach Debian's mirror but no container registry. Used by `make images` and the test suite.
#
# One directory per image under scripts/images/:
#   packages     Debian packages to install (whitespace-separated, # comments), required
#   Dockerfile   optional; built on top of the debootstrapped rootfs (build arg BASE_IMAGE),
#                with the image's directory as context
# The image is tagged hello-standin-<dir>:<hash of its definition>, so an unchanged image is
# never rebuilt and a changed one always is. The variable <DIR>_IMAGE (upper-cased, - → _)
# selecting it is written to .env.offline, e.g. PYTHON_IMAGE=hello-standin-python:0123abcd.
# Adding an image means adding a directory; nothing here changes.
#
# Usage: scripts/images/build.sh [NAME...]   (default: every image)
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$IMAGES_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$IMAGES_DIR/../.." && pwd)"
ENV_FILE="${ENV_FILE:-$REPO_ROOT/.env.offline}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Downloaded .debs are kept here, so a second image or a rebuild fetches little.
CACHE_DIR="${STANDIN_CACHE_DIR:-/var/cache/hello-standin/debs}"
# The machine's TLS-intercepting proxy signs with this CA; pip inside a build needs it.
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# The host's own CA certificates, kept where update-ca-certificates finds them, so an image
# that installs ca-certificates later (the bare debian12 one) still trusts the proxy.
HOST_CA_DIR="${HOST_CA_DIR:-/usr/local/share/ca-certificates}"

ROOTFS=""
cleanup() {
  [[ -n "$ROOTFS" ]] || return 0
  # A failed debootstrap can leave /proc or /sys mounted inside the rootfs.
  umount -R "$ROOTFS/proc" "$ROOTFS/sys" 2>/dev/null || true
  rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"
}
trap cleanup EXIT

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

image_names() {
  local dir
  for dir in "$IMAGES_DIR"/*/; do
    [[ -f "$dir/packages" ]] && basename "$dir"
  done
}

variable_for() {
  local name="${1^^}"
  printf '%s_IMAGE' "${name//-/_}"
}

# Hash of everything that defines the image, this script included.
tag_for() {
  local name="$1" hash
  hash="$(cd "$IMAGES_DIR" && find "$name" -type f -print0 | sort -z \
    | xargs -0 sha256sum | cat - "$SELF" | sha256sum | cut -c1-12)"
  printf 'hello-standin-%s:%s' "$name" "$hash"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

package_list() {
  sed -e 's/#.*//' "$IMAGES_DIR/$1/packages" | tr -s '[:space:]' ',' | sed -e 's/^,//' -e 's/,$//'
}

build_image() {
  local name="$1" tag packages
  tag="$(tag_for "$name")"
  if image_exists "$tag"; then
    log "$tag is up to date"
    return
  fi
  log "Building $tag from Debian $SUITE packages (about a minute)"
  ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/hello-standin-$name.XXXXXX")"
  packages="$(package_list "$name")"
  mkdir -p "$CACHE_DIR"
  debootstrap --variant=minbase --cache-dir="$CACHE_DIR" ${packages:+--include="$packages"} \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 20 "$ROOTFS.log" >&2; die "debootstrap failed for $name (its last lines are above)"; }
  if [[ -f "$HOST_CA_BUNDLE" ]]; then
    mkdir -p "$ROOTFS/etc/ssl/certs"
    cp "$HOST_CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  if compgen -G "$HOST_CA_DIR/*.crt" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp "$HOST_CA_DIR"/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  fi
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  if [[ -f "$IMAGES_DIR/$name/Dockerfile" ]]; then
    tar -C "$ROOTFS" -c . | docker import - "${tag/:/-rootfs:}" >/dev/null
    # Only shown on failure: the legacy builder warns about itself on every build.
    docker build --quiet --build-arg BASE_IMAGE="${tag/:/-rootfs:}" --tag "$tag" \
      "$IMAGES_DIR/$name" >"$ROOTFS.log" 2>&1 \
      || { cat "$ROOTFS.log" >&2; die "docker build failed for $name"; }
  else
    tar -C "$ROOTFS" -c . | docker import - "$tag" >/dev/null
  fi
  cleanup
  ROOTFS=""
  log "Built $tag"
}

write_env_file() {
  local name tag tmp
  tmp="$(mktemp "$ENV_FILE.XXXXXX")"
  {
    echo "# Written by scripts/images/build.sh: offline stand-ins for the public base images."
    echo "# Use: docker-compose --env-file .env.offline up --build"
    for name in $(image_names); do
      tag="$(tag_for "$name")"
      image_exists "$tag" && echo "$(variable_for "$name")=$tag"
    done
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
  log "Wrote $ENV_FILE"
}

main() {
  local names name
  command -v docker >/dev/null || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running?)"
  if (($# > 0)); then names=("$@"); else mapfile -t names < <(image_names); fi
  for name in "${names[@]}"; do
    [[ -f "$IMAGES_DIR/$name/packages" ]] || die "no image '$name' (no $IMAGES_DIR/$name/packages)"
  done
  # Test runs and other worktrees may build at the same time on one daemon.
  exec 9>"${TMPDIR:-/tmp}/hello-standin.lock"
  flock 9
  for name in "${names[@]}"; do
    image_exists "$(tag_for "$name")" || command -v debootstrap >/dev/null \
      || die "debootstrap is not installed (apt-get install debootstrap)"
    build_image "$name"
  done
  write_env_file
}

main "$@"
