"""The same ensemble in ONNX Runtime and in PyTorch eager, timed in one run, as a ratio.

PyTorch's ensemble is rebuilt from the fold folders the shipped graph was exported from
(`training.export.load_member`, `Preprocess.from_args`, `EnsembleClassifier`, the same views), and
both must agree on the patches (max |P_ort - P_torch| is in the table) before anything is timed.
Both use the same number of threads; the two are timed alternately, so that a change in the
machine's load hits both alike.
"""

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks import quiet
from benchmarks.common import RUN_DIR, amibr_patches, median, report, shipped_onnx
from benchmarks.throughput import open_session
from training.crossval import fold_dirs
from training.ensemble import EnsembleClassifier, Preprocess
from training.export import load_member

BATCH_SIZES = (16, 64)


def torch_ensemble(run_dir, channels_last: bool) -> torch.nn.Module:
    members = [load_member(folder) for folder in fold_dirs(run_dir)]
    views = members[0][2].tta_views
    networks = [network.to(memory_format=torch.channels_last) if channels_last else network
                for network, _, _ in members]
    return EnsembleClassifier(networks, [Preprocess.from_args(args) for _, args, _ in members], views).eval()


def timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(shipped_onnx()))
    parser.add_argument("--run", default=str(RUN_DIR), help="the run folder the model was exported from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; each times 3 calls per engine")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    patches = amibr_patches(max(BATCH_SIZES))
    session = open_session(args.model, args.threads)
    engines = {"ONNX Runtime": lambda x: session.run(None, {"patches": x})[0]}
    for label, channels_last in (("PyTorch eager", False), ("PyTorch eager, channels_last", True)):
        ensemble = torch_ensemble(args.run, channels_last)
        engines[label] = lambda x, ensemble=ensemble: ensemble(torch.from_numpy(x)).numpy()
    with torch.inference_mode():
        reference = engines["PyTorch eager"](patches)
        agreement = {label: float(np.abs(engine(patches) - reference).max()) for label, engine in engines.items()}
        state = quiet.from_arguments(args)
        seconds = {(label, batch): [] for label in engines for batch in BATCH_SIZES}
        for _ in range(args.rounds):
            for batch in BATCH_SIZES:
                for label, engine in engines.items():
                    seconds[label, batch].append(timed(lambda: engine(patches[:batch]), repeats=3))
    rows = []
    for label in engines:
        speeds = {batch: batch / median(seconds[label, batch]) for batch in BATCH_SIZES}
        ratios = [speeds[batch] / (batch / median(seconds["PyTorch eager", batch])) for batch in BATCH_SIZES]
        rows.append([label, *(f"{speeds[batch]:.0f}" for batch in BATCH_SIZES),
                     *(f"{ratio:.2f}x" for ratio in ratios), f"{agreement[label]:.1e}"])
    report("ort_vs_torch", f"ONNX Runtime vs PyTorch eager, the same 5-fold ensemble, CPU, {args.threads} threads",
           ["engine", *(f"patches/s, batch {b}" for b in BATCH_SIZES),
            *(f"vs PyTorch eager, batch {b}" for b in BATCH_SIZES), "max abs P difference vs PyTorch eager"],
           rows, state=state, packages=("onnxruntime", "torch", "numpy"),
           notes=[f"Median over {args.rounds} alternating rounds of the median of 3 calls each, after a warm-up; "
                  "uint8 NHWC patches in, P(atypical) out, both including the in-graph preprocessing and both views."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
