"""Inference throughput of the shipped graph in ONNX Runtime, by batch size and thread count.

The session has the container's own settings (`inference.model.session_options`), with the intra-op thread count
set; the patches are real AMi-Br patches. Each cell is the median of repeated `session.run` calls
after two warm-up runs: a long-running service's speed, without the container's start-up.
"""

import argparse
import sys
import time

import onnxruntime as ort

from inference.model import session_options
from benchmarks import quiet
from benchmarks.common import amibr_patches, display_path, median, report, shipped_onnx

BATCH_SIZES = (1, 16, 64, 256)
THREADS = (1, 2)


def seconds_per_run(session, patches, *, min_runs: int, min_seconds: float) -> float:
    """Median seconds of one session.run on `patches`, over at least min_runs and min_seconds."""
    feed = {session.get_inputs()[0].name: patches}
    for _ in range(2):
        session.run(None, feed)
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        began = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - began)
    return median(times)


def open_session(onnx_path, threads: int, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    """A session with process.py's settings and `threads` intra-op threads, on `provider` (CPU fallback)."""
    providers = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
    return ort.InferenceSession(str(onnx_path), sess_options=session_options(threads), providers=providers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(shipped_onnx()))
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--provider", default="CPUExecutionProvider",
                        help="e.g. CUDAExecutionProvider on a GPU machine (onnxruntime-gpu)")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    patches = amibr_patches(max(BATCH_SIZES))
    state = quiet.from_arguments(args)
    cells = {}
    for threads in THREADS:
        session = open_session(args.model, threads, args.provider)
        for batch in BATCH_SIZES:
            cells[batch, threads] = seconds_per_run(session, patches[:batch], min_runs=args.min_runs,
                                                    min_seconds=args.min_seconds)
    rows = [[batch, *(f"{batch / cells[batch, threads]:.0f} ({cells[batch, threads] * 1000:.1f} ms)"
                      for threads in THREADS)] for batch in BATCH_SIZES]
    device = session.get_providers()[0].removesuffix("ExecutionProvider")
    report("throughput", f"ONNX Runtime throughput of the shipped ensemble ({device}), patches/s (ms per run)",
           ["batch", *(f"{threads} thread{'s' * (threads > 1)}" for threads in THREADS)], rows, state=state,
           notes=[f"Model {display_path(args.model)}: 5 members x 2 views, so one patch is 10 network passes. "
                  f"Median of at least "
                  f"{args.min_runs} runs and {args.min_seconds:.0f} s per cell, after 2 warm-up runs."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
