"""Where a graph's time goes: ONNX Runtime's own profile of one 16-page stack, per operator type.

The shipped model (and, with `--candidate MODEL_DIR`, another export beside it) runs the sample
stack with the container's session settings (`inference.model.session_options`) and ONNX Runtime's
profiler on; the runs of the two alternate, so that a change in load hits them alike. Each row is
an operator type's kernel time per run (the sum over its nodes, median over runs); the network's
own operator types (convolutions, pooling, the head) are summed apart from the rest, which for a
stain normalising graph is mostly its colour work (its 1x1 colour convolutions count as Conv, the
layout reorders ONNX Runtime puts around them as the rest). Session building comes from the same
profiles.
"""

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from inference.model import session_options
from benchmarks import quiet
from benchmarks.common import MODEL_DIR, display_path, median, report, sample_stack_pixels

NETWORK_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm"}
SESSION_EVENTS = ("model_loading_uri", "session_initialization")


def profiled_session(model_dir: Path, scratch: Path) -> ort.InferenceSession:
    onnx_path = model_dir / json.loads((model_dir / "model.json").read_text())["onnx"]
    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / model_dir.name)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def profile_summary(events: list, runs: int) -> dict:
    """{"ops": {op type: ms per run}, "session": ms to load and build}, from one session's profile."""
    per_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    session = sum(event["dur"] for event in events if event.get("cat") == "Session"
                  and event["name"] in SESSION_EVENTS) / 1000
    return {"ops": dict(per_op), "session": session}


def measure(model_dirs: list, runs: int, repeats: int) -> list:
    """Per model, the median over `repeats` fresh sessions of profile_summary (runs after one warm-up)."""
    pages = sample_stack_pixels()
    summaries = [[] for _ in model_dirs]
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(repeats):
            sessions = [profiled_session(model_dir, Path(scratch)) for model_dir in model_dirs]
            for session in sessions:
                session.run(None, {session.get_inputs()[0].name: pages})
            for _ in range(runs):
                for session in sessions:
                    session.run(None, {session.get_inputs()[0].name: pages})
            for index, session in enumerate(sessions):
                events = json.loads(Path(session.end_profiling()).read_text())
                summaries[index].append(profile_summary(events, runs + 1))
    return [{"ops": {op: median([s["ops"].get(op, 0.0) for s in per_model])
                     for op in {op for s in per_model for op in s["ops"]}},
             "session": median([s["session"] for s in per_model])} for per_model in summaries]


def table_rows(results: list, top: int) -> list:
    """Rows: network total, the rest's total, its `top` slowest operator types, session building."""
    def total(result, network: bool):
        return sum(ms for op, ms in result["ops"].items() if (op in NETWORK_OPS) == network)

    rest = collections.Counter()
    for result in results:
        for op, ms in result["ops"].items():
            if op not in NETWORK_OPS:
                rest[op] = max(rest[op], ms)
    rows = [["**network** (" + ", ".join(sorted(NETWORK_OPS)) + ")", *[f"{total(r, True):.1f}" for r in results]],
            ["**everything else**", *[f"{total(r, False):.1f}" for r in results]]]
    rows += [[f"  {op}", *[f"{r['ops'].get(op, 0.0):.1f}" for r in results]] for op, _ in rest.most_common(top)]
    rows.append(["session: load the file and build", *[f"{r['session']:.0f}" for r in results]])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--candidate", type=Path, metavar="MODEL_DIR", help="another export, profiled alternately")
    parser.add_argument("--runs", type=int, default=10, help="profiled runs per session")
    parser.add_argument("--repeats", type=int, default=3, help="fresh sessions per model (medians over them)")
    parser.add_argument("--top", type=int, default=8, help="operator types listed outside the network")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    state = quiet.from_arguments(args)
    model_dirs = [args.model.resolve()] + ([args.candidate.resolve()] if args.candidate else [])
    results = measure(model_dirs, args.runs, args.repeats)
    report("graph_profile" + ("_candidate" if args.candidate else ""),
           "ONNX Runtime kernel time per 16-page stack (ms per run, median), by operator type",
           ["operator type", *[display_path(d) for d in model_dirs]], table_rows(results, args.top), state=state,
           packages=("onnxruntime",),
           notes=["Kernel times from ONNX Runtime's profiler (the sum of a type's nodes per run); the "
                  "session row is its model_loading_uri + session_initialization events, in ms."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
