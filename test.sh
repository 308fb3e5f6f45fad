#!/usr/bin/env bash
# Run the container the way grand-challenge runs it on the sample cases, and compare each output with
# its golden output (scripts/compare_outputs.py): the stack interface's cases test/input/ (.tiff),
# test/mha/input/ (.mha) and test/hand-named/input/ against test/expected_output.json, and
# test/points/input/ (whole image + candidate points) against test/points/expected_output.json.
# Ends with one line: PASS (every case matched) or FAIL: <reason>.
#
# The platform's conditions: no network, /input read-only, /output writable, a scratch /tmp, the
# model baked into the image (or, with --model-tarball, an uploaded model at /opt/ml/model/), a
# memory limit, and the GPU when there is one. The root file system is read-only too, which is
# stricter than the platform: a write outside /output and /tmp fails here first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

TAG=""
VARIANT=gpu
# The default cases, as "input folder:golden output". The golden output's form (a JSON list, or a
# Multiple points object) says which file the container must write. The first two and the points case
# are laid out as grand-challenge lays out /input (the image under a UUID name, its upload name in
# inputs.json): the stack as a multi-page .tiff and as a 3-D RGB .mha. The hand-named case has the
# file under its upload name, as cases made by hand often do. The three stacks hold the same pixels.
CASES=("test/input:test/expected_output.json"
       "test/mha/input:test/expected_output.json"
       "test/hand-named/input:test/expected_output.json"
       "test/points/input:test/points/expected_output.json")
INPUT_DIR=""
EXPECTED=""
MODEL_DIR="model"
STACK_OUTPUT="multiple-mitotic-figure-classification.json"
POINTS_OUTPUT="atypical-mitotic-figures.json"
MEMORY="8g"
MODE=docker
MOUNT_MODEL=0
BUILD=0
GPUS=auto
KEEP=0

usage() {
    cat <<EOF
Usage: ./test.sh [--cpu] [--local] [--model-tarball] [--input DIR] [--expected FILE] [--model DIR]
                 [--tag NAME] [--build] [--gpus | --no-gpus] [--memory SIZE] [--keep]

Runs the image (built first with ./build.sh when missing) on each sample case like grand-challenge
does and compares its output with the case's golden output: test/input/, test/mha/input/ and
test/hand-named/input/ (the stack interface: .tiff and .mha under UUID names as the platform
stores them, and a file under its upload name) with test/expected_output.json, test/points/input/
(whole image + candidate points) with test/points/expected_output.json. Prints PASS (exit 0) when
every case matches, else FAIL: <reason> (exit 1).

  --cpu            the CPU image (./build.sh --cpu, tag midog25-atypical:cpu) instead of the GPU
                   image; implies --no-gpus
  --local          no Docker: .venv/bin/python process.py --input DIR --output TMP --model DIR
                   (runs ./setup.sh first when .venv/ is missing)
  --model-tarball  mount the model folder read-only at /opt/ml/model, where grand-challenge
                   extracts an uploaded model tarball, instead of using the baked-in model
  --input DIR      run this one case instead (inputs.json + images/...; default test/input)
  --expected FILE  its golden output (default test/expected_output.json)
  --model DIR      model folder for --local and --model-tarball (default $MODEL_DIR);
                   with Docker it implies --model-tarball
  --tag NAME       image to run (default $TAG, or midog25-atypical:cpu with --cpu)
  --build          (re)build the image first even when it exists
  --gpus | --no-gpus  pass or do not pass --gpus all (default: when docker lists an nvidia runtime)
  --memory SIZE    container memory limit (default $MEMORY)
  --keep           keep the output folders (they are always kept on FAIL)
  -h, --help       this help
EOF
}

OUTPUT_ROOT=""
cleanup() {
    if [ -n "$OUTPUT_ROOT" ] && [ "$KEEP" -eq 0 ]; then
        rm -rf "$OUTPUT_ROOT"
    fi
}
trap cleanup EXIT

log() { echo "test: $*"; }
fail() {
    if [ -n "$OUTPUT_ROOT" ] && [ -n "$(find "$OUTPUT_ROOT" -type f -print -quit 2>/dev/null)" ]; then
        KEEP=1
        log "output kept in $OUTPUT_ROOT"
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
        --no-gpus) GPUS=no; shift ;;
        --cpu) VARIANT=cpu; GPUS=no; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "test: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$TAG" ]; then
    if [ "$VARIANT" = cpu ]; then TAG="midog25-atypical:cpu"; else TAG="midog25-atypical:latest"; fi
fi
if [ -n "$INPUT_DIR$EXPECTED" ]; then
    CASES=("${INPUT_DIR:-test/input}:${EXPECTED:-test/expected_output.json}")
fi

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

output_name_of() {  # golden output file -> the output file name of its interface
    "$PYTHON" -c 'import json, sys; print(sys.argv[2] if isinstance(json.load(open(sys.argv[1])), list) else sys.argv[3])' \
        "$1" "$STACK_OUTPUT" "$POINTS_OUTPUT"
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

# Builds the image when needed and sets THRESHOLD; once, before the cases.
prepare_docker() {
    check_docker
    if [ "$BUILD" -eq 1 ] || ! docker image inspect "$TAG" >/dev/null 2>&1; then
        log "building $TAG first (./build.sh --$VARIANT)"
        ./build.sh "--$VARIANT" --tag "$TAG" || fail "./build.sh --$VARIANT failed"
    fi
    if [ "$MOUNT_MODEL" -eq 1 ]; then
        THRESHOLD=$(threshold_of < "$MODEL_DIR/model.json") || fail "cannot read the threshold of $MODEL_DIR/model.json"
        return 0
    fi
    # The baked-in model decides, so read its threshold from the image, and say when the image was
    # built from another model/, process.py or crops.py than the ones here.
    local image_model_json source
    image_model_json=$(docker run --rm --network none --entrypoint cat "$TAG" /opt/app/model/model.json) \
        || fail "cannot read /opt/app/model/model.json in $TAG"
    THRESHOLD=$(threshold_of <<< "$image_model_json") || fail "cannot read the threshold of the image's model.json"
    if ! "$PYTHON" -c 'import json, sys; sys.exit(json.loads(sys.argv[1]) != json.load(open(sys.argv[2])))' \
            "$image_model_json" "$MODEL_DIR/model.json" 2>/dev/null; then
        log "WARNING: $TAG was built from another model/ than this checkout's: rebuild with ./test.sh --build$([ "$VARIANT" = cpu ] && echo " --cpu")"
    fi
    for source in process.py inference/*.py; do
        if ! docker run --rm --network none --entrypoint cat "$TAG" "/opt/app/$source" 2>/dev/null | cmp -s - "$source"; then
            log "WARNING: $TAG was built from another $source than this checkout's: rebuild with ./test.sh --build$([ "$VARIANT" = cpu ] && echo " --cpu")"
        fi
    done
}

run_docker() {  # INPUT_DIR OUTPUT_DIR
    chmod -R -f o+rX "$1" || true  # the container's user is not the files' owner
    local args=(run --rm --network none --read-only --tmpfs /tmp
                --cap-drop ALL --security-opt no-new-privileges --pids-limit 256
                --memory "$MEMORY" --memory-swap "$MEMORY" --shm-size 128m
                --volume "$(absolute "$1"):/input:ro"
                --volume "$2:/output")
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
    [ "$status" -eq 0 ] || fail "$1: the container exited with code $status"
}

prepare_local() {  # sets THRESHOLD
    if [ ! -x .venv/bin/python ]; then
        log ".venv/ is missing: running ./setup.sh"
        ./setup.sh || fail "./setup.sh failed"
    fi
    THRESHOLD=$(threshold_of < "$MODEL_DIR/model.json") || fail "cannot read the threshold of $MODEL_DIR/model.json"
}

run_local() {  # INPUT_DIR OUTPUT_DIR
    log ".venv/bin/python process.py --input $1 --output $2 --model $MODEL_DIR"
    local started status=0
    started=$(now)
    .venv/bin/python process.py --input "$1" --output "$2" --model "$MODEL_DIR" || status=$?
    log "process.py took $(took "$started")"
    [ "$status" -eq 0 ] || fail "$1: process.py exited with code $status"
}

run_case() {  # INPUT_DIR EXPECTED INDEX: run one case and compare its output with the golden one
    local input="$1" expected="$2" output_dir="$OUTPUT_ROOT/case$3" name written report status=0
    [ -d "$input" ] || fail "input folder $input not found"
    [ -f "$expected" ] || fail "expected output $expected not found"
    name=$(output_name_of "$expected") || fail "cannot read $expected"
    mkdir -p "$output_dir"
    chmod 777 "$output_dir"  # writable by the container's non-root user
    log "case $input: expecting $name like $expected"
    if [ "$MODE" = local ]; then
        run_local "$input" "$output_dir"
    else
        run_docker "$input" "$output_dir"
    fi
    written=$(ls -A "$output_dir")
    [ "$written" = "$name" ] || fail "$input: the output folder holds '${written//$'\n'/ }', expected only $name"
    report=$("$PYTHON" scripts/compare_outputs.py "$expected" "$output_dir/$name" --threshold "$THRESHOLD") || status=$?
    echo "$report"
    [ "$status" -eq 0 ] || fail "$input: $(echo "$report" | tail -n 1)"
}

main() {
    find_python
    if [ "$MODE" = local ] || [ "$MOUNT_MODEL" -eq 1 ]; then
        [ -f "$MODEL_DIR/model.json" ] || fail "$MODEL_DIR/model.json not found"
    fi
    OUTPUT_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/midog25-output.XXXXXX")
    chmod 755 "$OUTPUT_ROOT"
    THRESHOLD=""
    if [ "$MODE" = local ]; then
        prepare_local
    else
        prepare_docker
    fi
    local index=0 spec
    for spec in "${CASES[@]}"; do
        run_case "${spec%%:*}" "${spec#*:}" "$index"
        index=$(( index + 1 ))
    done
    [ "$KEEP" -eq 0 ] || log "output kept in $OUTPUT_ROOT"
    echo "PASS"
}

main
