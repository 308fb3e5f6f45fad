#!/usr/bin/env bash
# Run the container the way grand-challenge runs it, on test/input/, and compare its output with
# test/expected_output.json (scripts/compare_outputs.py). Ends with one line: PASS or FAIL: <reason>.
#
# The platform's conditions: no network, /input read-only, /output writable, a scratch /tmp, the
# model baked into the image (or, with --model-tarball, an uploaded model at /opt/ml/model/), a
# memory limit, and the GPU when there is one. The root file system is read-only too, which is
# stricter than the platform: a write outside /output and /tmp fails here first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

TAG="midog25-atypical:latest"
INPUT_DIR="test/input"
EXPECTED="test/expected_output.json"
MODEL_DIR="model"
OUTPUT_NAME="multiple-mitotic-figure-classification.json"
MEMORY="8g"
MODE=docker
MOUNT_MODEL=0
BUILD=0
GPUS=auto
KEEP=0

usage() {
    cat <<EOF
Usage: ./test.sh [--local] [--model-tarball] [--input DIR] [--expected FILE] [--model DIR]
                 [--tag NAME] [--build] [--gpus | --cpu] [--memory SIZE] [--keep]

Runs the image (built first with ./build.sh when missing) on $INPUT_DIR/ like grand-challenge
does and compares the output with $EXPECTED. Prints PASS (exit 0) or FAIL: <reason> (exit 1).

  --local          no Docker: .venv/bin/python process.py --input DIR --output TMP --model DIR
                   (runs ./setup.sh first when .venv/ is missing)
  --model-tarball  mount the model folder read-only at /opt/ml/model, where grand-challenge
                   extracts an uploaded model tarball, instead of using the baked-in model
  --input DIR      input case: inputs.json + images/... (default $INPUT_DIR)
  --expected FILE  golden output (default $EXPECTED)
  --model DIR      model folder for --local and --model-tarball (default $MODEL_DIR);
                   with Docker it implies --model-tarball
  --tag NAME       image to run (default $TAG)
  --build          (re)build the image first even when it exists
  --gpus | --cpu   pass or do not pass --gpus all (default: when docker lists an nvidia runtime)
  --memory SIZE    container memory limit (default $MEMORY)
  --keep           keep the output folder (it is always kept on FAIL)
  -h, --help       this help
EOF
}

OUTPUT_DIR=""
cleanup() {
    if [ -n "$OUTPUT_DIR" ] && [ "$KEEP" -eq 0 ]; then
        rm -rf "$OUTPUT_DIR"
    fi
}
trap cleanup EXIT

log() { echo "test: $*"; }
fail() {
    if [ -n "$OUTPUT_DIR" ] && [ -n "$(ls -A "$OUTPUT_DIR" 2>/dev/null)" ]; then
        KEEP=1
        log "output kept in $OUTPUT_DIR"
    fi
    echo "FAIL: $*"
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --local) MODE=local; shift ;;
        --model-tarball) MOUNT_MODEL=1; shift ;;
        --input|--expected|--model|--tag|--memory)
            [ $# -ge 2 ] || { usage >&2; echo "test: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --input) INPUT_DIR="$2" ;;
                --expected) EXPECTED="$2" ;;
                --model) MODEL_DIR="$2"; MOUNT_MODEL=1 ;;
                --tag) TAG="$2" ;;
                --memory) MEMORY="$2" ;;
            esac
            shift 2 ;;
        --build) BUILD=1; shift ;;
        --gpus) GPUS=yes; shift ;;
        --cpu) GPUS=no; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# Seconds with a fraction where bash offers it (bash 5), whole seconds otherwise.
now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/,/.}"; else date +%s; fi; }
took() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f s", end - start }'; }

find_python() {  # sets PYTHON
    local candidate
    for candidate in python3 .venv/bin/python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            PYTHON="$candidate"
            return 0
        fi
    done
    fail "no python3 to compare the outputs with"
}

threshold_of() {  # model.json on stdin -> its threshold
    "$PYTHON" -c 'import json, sys; print(float(json.load(sys.stdin)["threshold"]))'
}

absolute() { (cd "$1" && pwd); }

check_docker() {
    command -v docker >/dev/null 2>&1 \
        || fail "docker not found (install Docker Engine, or run ./test.sh --local)"
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
        || fail "the Docker daemon does not answer (start it, check your access to it, or run ./test.sh --local)"
}

has_nvidia_runtime() {
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia
}

# Runs the image; sets THRESHOLD. The output lands in $OUTPUT_DIR.
run_docker() {
    check_docker
    if [ "$BUILD" -eq 1 ] || ! docker image inspect "$TAG" >/dev/null 2>&1; then
        log "building $TAG first (./build.sh)"
        ./build.sh --tag "$TAG" || fail "./build.sh failed"
    fi
    if [ "$MOUNT_MODEL" -eq 1 ]; then
        THRESHOLD=$(threshold_of < "$MODEL_DIR/model.json") || fail "cannot read the threshold of $MODEL_DIR/model.json"
    else
        # The baked-in model decides, so read its threshold from the image, and say when the
        # image was built from another model/ or process.py than the ones here.
        local image_model_json
        image_model_json=$(docker run --rm --network none --entrypoint cat "$TAG" /opt/app/model/model.json) \
            || fail "cannot read /opt/app/model/model.json in $TAG"
        THRESHOLD=$(threshold_of <<< "$image_model_json") || fail "cannot read the threshold of the image's model.json"
        if ! "$PYTHON" -c 'import json, sys; sys.exit(json.loads(sys.argv[1]) != json.load(open(sys.argv[2])))' \
                "$image_model_json" "$MODEL_DIR/model.json" 2>/dev/null \
            || ! docker run --rm --network none --entrypoint cat "$TAG" /opt/app/process.py | cmp -s - process.py; then
            log "WARNING: $TAG was built from another model/ or process.py than this checkout's: rebuild with ./test.sh --build"
        fi
    fi

    chmod -R -f o+rX "$INPUT_DIR" || true  # the container's user is not the files' owner
    local args=(run --rm --network none --read-only --tmpfs /tmp
                --cap-drop ALL --security-opt no-new-privileges --pids-limit 256
                --memory "$MEMORY" --memory-swap "$MEMORY" --shm-size 128m
                --volume "$(absolute "$INPUT_DIR"):/input:ro"
                --volume "$OUTPUT_DIR:/output")
    if [ "$MOUNT_MODEL" -eq 1 ]; then
        chmod -R -f o+rX "$MODEL_DIR" || true
        args+=(--volume "$(absolute "$MODEL_DIR"):/opt/ml/model:ro")
    fi
    if [ "$GPUS" = yes ] || { [ "$GPUS" = auto ] && has_nvidia_runtime; }; then
        args+=(--gpus all)
    fi
    args+=("$TAG")
    log "docker ${args[*]}"
    local started status=0
    started=$(now)
    docker "${args[@]}" || status=$?
    log "container run took $(took "$started")"
    [ "$status" -eq 0 ] || fail "the container exited with code $status"
}

run_local() {
    if [ ! -x .venv/bin/python ]; then
        log ".venv/ is missing: running ./setup.sh"
        ./setup.sh || fail "./setup.sh failed"
    fi
    THRESHOLD=$(threshold_of < "$MODEL_DIR/model.json") || fail "cannot read the threshold of $MODEL_DIR/model.json"
    log ".venv/bin/python process.py --input $INPUT_DIR --output $OUTPUT_DIR --model $MODEL_DIR"
    local started status=0
    started=$(now)
    .venv/bin/python process.py --input "$INPUT_DIR" --output "$OUTPUT_DIR" --model "$MODEL_DIR" || status=$?
    log "process.py took $(took "$started")"
    [ "$status" -eq 0 ] || fail "process.py exited with code $status"
}

main() {
    find_python
    [ -d "$INPUT_DIR" ] || fail "input folder $INPUT_DIR not found"
    [ -f "$EXPECTED" ] || fail "expected output $EXPECTED not found"
    if [ "$MODE" = local ] || [ "$MOUNT_MODEL" -eq 1 ]; then
        [ -f "$MODEL_DIR/model.json" ] || fail "$MODEL_DIR/model.json not found"
    fi
    OUTPUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/midog25-output.XXXXXX")
    chmod 777 "$OUTPUT_DIR"  # writable by the container's non-root user
    THRESHOLD=""
    if [ "$MODE" = local ]; then
        run_local
    else
        run_docker
    fi
    local output="$OUTPUT_DIR/$OUTPUT_NAME" report status=0
    [ -f "$output" ] || fail "no $OUTPUT_NAME was written"
    report=$("$PYTHON" scripts/compare_outputs.py "$EXPECTED" "$output" --threshold "$THRESHOLD") || status=$?
    echo "$report"
    [ "$status" -eq 0 ] || fail "$(echo "$report" | tail -n 1)"
    [ "$KEEP" -eq 0 ] || log "output kept in $OUTPUT_DIR"
    echo "PASS"
}

main
