"""Per-stack wall time of process.py, cold: a fresh process per run, from its start to its exit.

Grand-challenge starts the container once per stack, so what a user waits for is the whole life of
the process: the interpreter, the imports, the model, the image, the inference, the JSON. The total
is timed from outside (spawn to exit); `process.py --timings` reports its own phases (and when its
main() started and ended), so the start-up before main() and the exit after it are split off too.
Interpreter start-up and exit alone (`python -c pass`) and the import of process.py are timed in
fresh processes of their own. With `--baseline REV` the process.py and crops.py
of that git revision run interleaved with the current ones, as a before/after; with `--candidate
MODEL_DIR` the current process.py runs another model folder interleaved with the shipped one (a
recipe candidate against the time budget: both see the same machine, run for run).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import quiet
from benchmarks.common import MODEL_DIR, ROOT, display_path, median, ms, report

SAMPLE_STACK = ROOT / "test" / "input"  # 16 pages of 128x128, as the official stacks, laid out as the platform does
# The same stack under its upload name: revisions before the platform layout was read only find it so.
HAND_NAMED_STACK = ROOT / "test" / "hand-named" / "input"
TIMINGS_PREFIX = "process: timings "


def sample_case(baseline: str | None) -> Path:
    """The case to time: the platform-laid-out stack, or with a baseline the hand-named one both revisions read."""
    return HAND_NAMED_STACK if baseline else SAMPLE_STACK


def spawn(command: list[str], cwd: Path) -> tuple[float, float, str, float]:
    """(Unix time at spawn, at exit, stderr, peak resident MB) of one run; raises when it fails.

    The child is reaped with os.wait4, whose resource usage is that child's alone (Linux reports
    ru_maxrss in KiB). Linux carries the memory the child had between fork and exec, i.e. its
    parent's, into that peak: keep the measuring process small (this module imports no torch).
    """
    with tempfile.TemporaryFile() as stderr_file:
        started = time.time()
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr_file)
        _, status, usage = os.wait4(child.pid, 0)
        ended = time.time()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}): {stderr[-2000:]}")
    return started, ended, stderr, usage.ru_maxrss / 1024


def run_process(python: str, script: Path, *, input_dir: Path, model_dir: Path, timings: bool) -> dict:
    """One cold run of process.py; its total and, with --timings, its phases (seconds)."""
    with tempfile.TemporaryDirectory() as output_dir:
        command = [python, str(script), "--input", str(input_dir), "--output", output_dir, "--model", str(model_dir)]
        started, ended, stderr, peak_mb = spawn(command + (["--timings"] if timings else []), cwd=script.parent)
        if not any(Path(output_dir).iterdir()):
            raise RuntimeError(f"{script} wrote nothing")
    result = {"total": ended - started, "peak_mb": peak_mb}
    lines = [line for line in stderr.splitlines() if line.startswith(TIMINGS_PREFIX)]
    if timings and lines:
        phases = json.loads(lines[-1].removeprefix(TIMINGS_PREFIX))
        result.update(before_main=phases.pop("started_at") - started, after_main=ended - phases.pop("ended_at"),
                      **phases)
    return result


# process.py and the modules beside it, before and after they moved into inference/; a revision lacks some
BASELINE_FILES = ("process.py", "crops.py", "image_checks.py", *(f"inference/{path.name}" for path in
                                                                 sorted((ROOT / "inference").glob("*.py"))))


def phase_rows(runs: list[dict], interpreter: list[float], imports: list[float]) -> list[list[str]]:
    """One row per phase of the shipped model's runs: median, min and max in ms."""
    columns = {key: [run[key] for run in runs if key in run] for key, _ in PHASES}
    columns.update(interpreter=interpreter, imports=imports)
    return [[what, ms(median(columns[key])), ms(min(columns[key])), ms(max(columns[key]))]
            for key, what in PHASES if columns[key]]


def candidate_rows(runs: list[dict], name: str) -> list[list[str]]:
    """The phases a candidate model changes (load, inference, total), from its interleaved runs."""
    rows = []
    for key in ("load", "infer", "total"):
        values = [run[key] for run in runs if key in run]
        label = f"candidate {name}: {dict(PHASES)[key].strip('*')}"
        if values:
            rows.append([label + (" (the same runs, interleaved)" if key == "total" else ""),
                         ms(median(values)), ms(min(values)), ms(max(values))])
    return rows


def baseline_folder(revision: str, into: Path) -> Path:
    """process.py and the modules beside it at a git revision, in a folder of their own (the model is passed in)."""
    for name in BASELINE_FILES:
        shown = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=ROOT, capture_output=True, text=True,
                               check=name == "process.py")
        if shown.returncode == 0:
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_text(shown.stdout)
    return into / "process.py"


def interpreter_seconds(python: str) -> float:
    """Spawn to exit of a Python that does nothing."""
    started, ended, _, _ = spawn([python, "-c", "pass"], cwd=ROOT)
    return ended - started


def import_seconds(python: str) -> float:
    """`import process` timed inside a fresh process (its modules' teardown at exit not included)."""
    code = ("import sys, time; began = time.perf_counter(); import process; "
            "print(time.perf_counter() - began, file=sys.stderr)")
    return float(spawn([python, "-c", code], cwd=ROOT)[2].split()[-1])


PHASES = [  # (key, what it is)
    ("interpreter", "Python start-up and exit alone (`python -c pass`)"),
    ("imports", "import process.py: numpy, onnxruntime, the inference package (in a fresh process)"),
    ("before_main", "spawn -> main() entered: interpreter start-up + imports"),
    ("load", "model: model.json, sha256, ONNX Runtime session"),
    ("read", "image read (inference/stack_files.py; for a TIFF, tifffile's import)"),
    ("infer", "fit pages + inference"),
    ("write", "JSON written atomically (fsync)"),
    ("after_main", "main() returned -> process gone"),
    ("total", "**spawn -> exit, JSON written**"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--input", type=Path, help="a case folder (default: test/input/, or test/hand-named/input/ "
                                                 "with --baseline, which older revisions can read)")
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--baseline", metavar="REV", help="also time process.py at this git revision, interleaved")
    parser.add_argument("--candidate", type=Path, metavar="MODEL_DIR",
                        help="also time this model folder (an export), interleaved with --model")
    parser.add_argument("--table", metavar="NAME", help="write benchmarks/results/NAME.md (default: startup, or "
                        "startup_candidate with --candidate), so that a new comparison keeps the tables docs cite")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    args.input = (args.input or sample_case(args.baseline)).resolve()  # the runs' working folder is the script's
    args.model = args.model.resolve()
    state = quiet.from_arguments(args)
    script = ROOT / "process.py"
    with tempfile.TemporaryDirectory() as scratch:
        old_script = baseline_folder(args.baseline, Path(scratch)) if args.baseline else None
        # One untimed run first: the libraries and the graph are then in the page cache for every run below.
        run_process(args.python, script, input_dir=args.input, model_dir=args.model, timings=False)
        if args.candidate:
            run_process(args.python, script, input_dir=args.input, model_dir=args.candidate.resolve(), timings=False)
        runs, old_runs, candidate_runs, interpreter, imports = [], [], [], [], []
        for _ in range(args.runs):
            runs.append(run_process(args.python, script, input_dir=args.input, model_dir=args.model, timings=True))
            if args.candidate:
                candidate_runs.append(run_process(args.python, script, input_dir=args.input,
                                                  model_dir=args.candidate.resolve(), timings=True))
            if old_script:
                old_runs.append(run_process(args.python, old_script, input_dir=args.input, model_dir=args.model,
                                            timings=False))
            interpreter.append(interpreter_seconds(args.python))
            imports.append(import_seconds(args.python))
    rows = phase_rows(runs, interpreter, imports)
    arms = {"process.py": runs}
    if candidate_runs:
        rows += candidate_rows(candidate_runs, args.candidate.name)
        arms[f"candidate {args.candidate.name}"] = candidate_runs
    if old_runs:
        old = [run["total"] for run in old_runs]
        rows.append([f"**total, process.py of {args.baseline}** (the same runs, interleaved)",
                     ms(median(old)), ms(min(old)), ms(max(old))])
        arms[f"process.py of {args.baseline}"] = old_runs
    case = args.input.resolve().relative_to(ROOT) if args.input.resolve().is_relative_to(ROOT) else args.input
    title = f"process.py per stack, cold ({args.runs} fresh processes, case {case})"
    if args.candidate:
        title += f"; model {display_path(args.model)} against candidate {display_path(args.candidate)}"
    report(args.table or ("startup_candidate" if args.candidate else "startup"), title,
           ["phase", "median ms", "min ms", "max ms"], rows, state=state,
           packages=("onnxruntime", "numpy", "tifffile"),
           notes=["Phases inside main() are process.py's own `--timings`; the rest of main() (arguments, "
                  "inputs.json, log lines) is not listed. Each phase's median is over its own runs, so the "
                  "medians need not add up to the total's.",
                  "Peak resident memory (os.wait4's ru_maxrss), median (max) over the same runs: "
                  + "; ".join(f"{arm} {median([r['peak_mb'] for r in arm_runs]):.0f} MB "
                              f"({max(r['peak_mb'] for r in arm_runs):.0f})" for arm, arm_runs in arms.items()) + "."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
