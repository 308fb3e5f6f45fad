#!/usr/bin/env bash
# Build the grand-challenge container image (see Dockerfile): the GPU image (default; onnxruntime-gpu
# for CUDA 12, requirements.txt) or, with --cpu, the CPU image (onnxruntime alone, requirements-cpu.txt).
#
# Normal mode: a plain `docker build` on python:3.11-slim-bookworm from Docker Hub, pip from PyPI.
# Offline mode (--offline, or chosen automatically when that base image cannot be pulled): a local
# Debian bookworm base image made with debootstrap, and wheels downloaded on the host into
# build/wheels/<gpu|cpu>/, which the build installs with --no-index (pip inside a build may have no network,
# or no way to verify TLS behind a proxy). Needs root for debootstrap the first time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

TAG=""
VARIANT=gpu
DEFAULT_BASE="python:3.11-slim-bookworm"
OFFLINE_BASE="midog25-base:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PULL_TIMEOUT="${PULL_TIMEOUT:-60}"
# What the offline base runs: Debian bookworm's CPython 3.11 on glibc 2.36 (the default base is
# CPython 3.11 on bookworm as well). pip does not widen --platform manylinux_2_36 to the older
# glibc tags that wheels carry, so every one of them is listed.
WHEEL_TARGET=(--python-version 3.11 --implementation cp --abi cp311)
for (( glibc_minor = 36; glibc_minor >= 5; glibc_minor-- )); do
    WHEEL_TARGET+=(--platform "manylinux_2_${glibc_minor}_x86_64")
done
WHEEL_TARGET+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
MODE=auto
SAVE=0
NO_CACHE=()

usage() {
    cat <<EOF
Usage: ./build.sh [--cpu] [--tag NAME] [--offline | --online] [--save] [--mirror URL] [--no-cache]

Builds the container image: by default the GPU image midog25-atypical:latest (onnxruntime-gpu for
CUDA 12, NVIDIA driver 525 or newer; runs on the CPU where there is no usable GPU), with --cpu the
CPU image midog25-atypical:cpu (onnxruntime alone: no CUDA libraries, a fraction of the size).

  --cpu         the CPU image (requirements-cpu.txt) instead of the GPU image (requirements.txt)
  --tag NAME    image tag (default midog25-atypical:latest, or midog25-atypical:cpu with --cpu)
  --online      plain docker build on $DEFAULT_BASE, requirements from PyPI
  --offline     local base image $OFFLINE_BASE (made once with debootstrap, needs root) and
                wheels downloaded on the host into build/wheels/<gpu|cpu>/ (cached), installed
                with --no-index
                Without either flag: online when $DEFAULT_BASE is present or can be pulled
                within ${PULL_TIMEOUT}s (PULL_TIMEOUT), offline otherwise.
  --save        also write build/midog25-atypical.tar.gz (build/midog25-atypical-cpu.tar.gz with
                --cpu; docker save | gzip: the image to upload) and build/model.tar.gz (the files
                of model/ at the archive root: grand-challenge's model tarball, extracted to
                /opt/ml/model/)
  --mirror URL  Debian mirror for debootstrap (default \$DEBIAN_MIRROR or $MIRROR)
  --no-cache    build without Docker's layer cache
  -h, --help    this help

When build/wheels/<gpu|cpu>/ holds wheels, every build of that image installs from them (delete
the folder to use PyPI).
EOF
}

log() { echo "build: $*"; }
die() { echo "build: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) VARIANT=cpu; shift ;;
        --gpu) VARIANT=gpu; shift ;;
        --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        --tag=*) TAG="${1#--tag=}"; shift ;;
        --offline) MODE=offline; shift ;;
        --online) MODE=online; shift ;;
        --save) SAVE=1; shift ;;
        --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; MIRROR="$2"; shift 2 ;;
        --mirror=*) MIRROR="${1#--mirror=}"; shift ;;
        --no-cache) NO_CACHE=(--no-cache); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# What the variant decides: its requirements, wheel folder, default tag and saved archive.
if [ "$VARIANT" = cpu ]; then
    REQUIREMENTS=requirements-cpu.txt
    SAVED=build/midog25-atypical-cpu.tar.gz
    TAG=${TAG:-midog25-atypical:cpu}
else
    REQUIREMENTS=requirements.txt
    SAVED=build/midog25-atypical.tar.gz
    TAG=${TAG:-midog25-atypical:latest}
fi
WHEEL_DIR="build/wheels/$VARIANT"

seconds_since() { echo $(( $(date +%s) - $1 )); }

check_docker() {
    command -v docker >/dev/null 2>&1 \
        || die "docker not found. Install Docker Engine (https://docs.docker.com/engine/install/; on Debian: apt-get install docker.io)."
    local err
    if ! err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
        die "the Docker daemon does not answer: start it (systemctl start docker, or run dockerd as root) and check that your user may use it (the docker group). docker said: $err"
    fi
}

check_sources() {
    [ -f process.py ] || die "process.py is missing"
    [ -f model/model.json ] \
        || die "model/model.json is missing: the image bakes in model/ (export one with ./export.sh RUN_DIR --out model)"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

pull_with_timeout() {
    if command -v timeout >/dev/null 2>&1; then
        timeout "$PULL_TIMEOUT" docker pull --quiet "$1"
    else
        docker pull --quiet "$1"
    fi
}

choose_mode() {
    [ "$MODE" = auto ] || return 0
    local pull_output
    if image_exists "$DEFAULT_BASE"; then
        MODE=online
    elif pull_output=$(pull_with_timeout "$DEFAULT_BASE" 2>&1); then
        MODE=online
    else
        log "cannot pull $DEFAULT_BASE (no access to Docker Hub? $(echo "${pull_output:-timed out after ${PULL_TIMEOUT}s}" | tail -n 1))"
        log "switching to OFFLINE mode: local Debian base image + wheels downloaded on the host"
        MODE=offline
    fi
}

ROOTFS=""
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap mounts /proc (and more) inside the target; a failed run can leave them mounted.
    local mount_point
    awk -v root="$ROOTFS/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r mount_point; do umount -l "$mount_point" || true; done
    rm -rf --one-file-system "$ROOTFS"
}

make_offline_base() {
    if image_exists "$OFFLINE_BASE"; then
        log "base image $OFFLINE_BASE exists"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 \
        || die "debootstrap not found (apt-get install debootstrap); it makes the offline base image $OFFLINE_BASE"
    [ "$(id -u)" -eq 0 ] \
        || die "making the base image $OFFLINE_BASE with debootstrap needs root: run 'sudo ./build.sh --offline' once"
    local started
    started=$(date +%s)
    log "making base image $OFFLINE_BASE with debootstrap from $MIRROR (a few minutes, once)"
    mkdir -p build
    ROOTFS=$(mktemp -d "$ROOT/build/rootfs.XXXXXX")
    trap cleanup_rootfs EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
        bookworm "$ROOTFS" "$MIRROR"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . \
        | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$OFFLINE_BASE" >/dev/null
    cleanup_rootfs
    ROOTFS=""
    log "base image $OFFLINE_BASE ready in $(seconds_since "$started")s"
}

host_pip_python() {
    local candidate
    for candidate in .venv/bin/python python3; do
        if "$candidate" -m pip --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    die "no Python with pip on this machine to download the wheels: run ./setup.sh first"
}

download_wheels() {
    # The stamp says for which requirements (and target) the folder was filled; an unchanged
    # file needs no network at all.
    local stamp="$WHEEL_DIR/.requirements.sha256" wanted python new_dir started
    wanted=$( { cat "$REQUIREMENTS"; echo "${WHEEL_TARGET[*]}"; } | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        log "wheels in $WHEEL_DIR/ are up to date with $REQUIREMENTS"
        return 0
    fi
    python=$(host_pip_python)
    started=$(date +%s)
    log "downloading the wheels of $REQUIREMENTS into $WHEEL_DIR/ (cp311, manylinux x86_64)"
    mkdir -p build/wheels
    # A fresh folder holds exactly what the requirements need; wheels already here are reused.
    new_dir=$(mktemp -d "$ROOT/build/wheels/.new.XXXXXX")
    local reuse=()
    [ -d "$WHEEL_DIR" ] && reuse=(--find-links "$WHEEL_DIR")
    if ! "$python" -m pip download --disable-pip-version-check --quiet --dest "$new_dir" \
            --only-binary=:all: "${WHEEL_TARGET[@]}" ${reuse[@]+"${reuse[@]}"} -r "$REQUIREMENTS"; then
        rm -rf "$new_dir"
        die "pip download failed (no access to PyPI?)"
    fi
    chmod 755 "$new_dir"
    rm -rf "$WHEEL_DIR"
    mv "$new_dir" "$WHEEL_DIR"
    echo "$wanted" > "$stamp"
    log "wheels ready in $(seconds_since "$started")s: $(du -sh "$WHEEL_DIR" | cut -f1)"
}

save_artifacts() {
    local started
    started=$(date +%s)
    mkdir -p build
    local compress=gzip
    command -v pigz >/dev/null 2>&1 && compress=pigz  # gzip on all cores
    log "writing $SAVED (docker save | $compress; minutes for a GPU image)"
    docker save "$TAG" | "$compress" > "$SAVED.part"
    mv "$SAVED.part" "$SAVED"
    log "writing build/model.tar.gz (the files of model/ at the archive root)"
    (cd model && tar -czf ../build/model.tar.gz.part -- *)
    mv build/model.tar.gz.part build/model.tar.gz
    log "saved in $(seconds_since "$started")s:"
    du -h "$SAVED" build/model.tar.gz | sed 's/^/build:   /'
}

main() {
    check_docker
    check_sources
    if compgen -G "build/wheels/*.whl" >/dev/null; then
        log "removing the wheels of an older layout from build/wheels/ (now build/wheels/<gpu|cpu>/)"
        rm -f build/wheels/*.whl build/wheels/.requirements.sha256
    fi
    choose_mode
    local base started
    if [ "$MODE" = offline ]; then
        make_offline_base
        download_wheels
        base="$OFFLINE_BASE"
        # The legacy builder needs no buildx and never asks a registry about the local base.
        export DOCKER_BUILDKIT=0
    else
        base="$DEFAULT_BASE"
        if [ -d "$WHEEL_DIR" ]; then
            log "note: $WHEEL_DIR/ exists, so the image installs from those wheels (delete it to use PyPI)"
        fi
        if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
            log "docker buildx is not installed: using the legacy builder"
            export DOCKER_BUILDKIT=0
        fi
    fi
    started=$(date +%s)
    log "building $TAG, the $VARIANT image, on $base ($MODE mode)"
    docker build ${NO_CACHE[@]+"${NO_CACHE[@]}"} --build-arg "BASE_IMAGE=$base" --build-arg "VARIANT=$VARIANT" \
        --tag "$TAG" .
    log "built $TAG in $(seconds_since "$started")s, size $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
    if [ "$SAVE" -eq 1 ]; then
        save_artifacts
    fi
}

main
