"""ONNX Runtime session creation by graph optimisation level, and from graphs optimised ahead of time.

Each cell is timed in a fresh process (after numpy and onnxruntime are imported), because the first
session of a process is what the container pays: session creation, then the first run on the 16
sample pages. A graph optimised ahead of time at the basic level holds only provider-independent
rewrites, so it could ship; one optimised at the full level holds this CPU's NCHWc layout (AVX-512
block size here) and could not, which ONNX Runtime itself warns about. The table says what either
would save.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import quiet
from benchmarks.common import MODEL_DIR, ROOT, median, ms, report, sample_stack_pixels

PROBE = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, level, pages = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
options = ort.SessionOptions()
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
began = time.perf_counter()
session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
created = time.perf_counter()
probabilities = session.run(None, {session.get_inputs()[0].name: pages})[0]
print(json.dumps({"create": created - began, "run": time.perf_counter() - created, "p": probabilities.tolist()}))
"""
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")


def optimise_ahead(source: Path, target: Path, level: str) -> Path:
    """The graph as ONNX Runtime leaves it after optimising at `level`, saved."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3  # its warning that a fully optimised graph is hardware-specific is the point
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    return target


def sample_pages(folder: Path) -> Path:
    path = folder / "pages.npy"
    np.save(path, sample_stack_pixels())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    shipped = MODEL_DIR / json.loads((MODEL_DIR / "model.json").read_text())["onnx"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        pages = sample_pages(scratch)
        cases = {f"shipped graph, {level}": (shipped, level) for level in LEVELS}
        cases["optimised ahead at BASIC (portable), loaded with ORT_ENABLE_ALL"] = (
            optimise_ahead(shipped, scratch / "basic.onnx", "ORT_ENABLE_BASIC"), "ORT_ENABLE_ALL")
        cases["optimised ahead at ALL (this CPU only), loaded with ORT_DISABLE_ALL"] = (
            optimise_ahead(shipped, scratch / "all.onnx", "ORT_ENABLE_ALL"), "ORT_DISABLE_ALL")
        state = quiet.from_arguments(args)
        results = {case: [] for case in cases}
        for _ in range(args.runs):  # interleaved
            for case, (path, level) in cases.items():
                output = subprocess.run([args.python, "-c", PROBE, str(path), level, str(pages)], cwd=ROOT,
                                        capture_output=True, text=True, check=True).stdout
                results[case].append(json.loads(output))
    reference = np.array(results[f"shipped graph, {LEVELS[0]}"][0]["p"])
    rows = [[case, ms(median([r["create"] for r in runs])), ms(median([r["run"] for r in runs])),
             f"{np.abs(np.array(runs[0]['p']) - reference).max():.1e}"] for case, runs in results.items()]
    report("session", f"ONNX Runtime session creation and first run (16 pages), fresh process, {args.runs} runs each",
           ["graph and level", "create median ms", "first run median ms", "max abs P change"], rows, state=state,
           notes=["process.py uses the first row. Intra-op threads: ONNX Runtime's default (one per core)."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
