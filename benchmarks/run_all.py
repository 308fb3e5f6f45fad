"""Run every benchmark, one after the other, each in a fresh process, and print every table.

Each benchmark waits for a quiet machine first (benchmarks/quiet.py) and writes its tables to
benchmarks/results/*.md; options after `--` go to every benchmark that takes them (e.g. --no-wait).
"""

import argparse
import subprocess
import sys

from benchmarks.common import ROOT

# (module, its own arguments): the order is cheapest and most asked-for first.
BENCHMARKS = [
    ("benchmarks.image_size", []),
    ("benchmarks.startup", ["--runs", "10"]),
    ("benchmarks.session", []),
    ("benchmarks.graph_profile", []),
    ("benchmarks.throughput", []),
    ("benchmarks.ort_vs_torch", []),
    ("benchmarks.precision", []),
    ("benchmarks.container", ["--runs", "10"]),
    ("benchmarks.paper_ensemble", ["--runs", "3"]),
    ("benchmarks.training_speed", []),
]
TAKES_WAIT_OPTIONS = {module for module, _ in BENCHMARKS} - {"benchmarks.image_size"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these (e.g. startup throughput)")
    parser.add_argument("--baseline", metavar="REV", help="git revision for startup's and container's before/after")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- options for every benchmark (e.g. -- --no-wait)")
    args = parser.parse_args(argv)
    shared = [option for option in args.rest if option != "--"]
    failed = []
    for module, own in BENCHMARKS:
        if args.only is not None and module.removeprefix("benchmarks.") not in args.only:
            continue
        baseline = ["--baseline", args.baseline] if args.baseline and module in ("benchmarks.startup",
                                                                                 "benchmarks.container") else []
        command = [sys.executable, "-m", module, *own, *baseline, *(shared if module in TAKES_WAIT_OPTIONS else [])]
        print(f"run_all: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            failed.append(module)
    if failed:
        print(f"run_all: FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
