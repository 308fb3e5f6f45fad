"""Compare the output of process.py with a golden expected output (MIDOG 2025 Track 2).

Usage: python3 scripts/compare_outputs.py EXPECTED ACTUAL --threshold T [--tolerance 1e-3]

Both files must follow the output contract of the Track 2 container: a JSON list with one object
per page, keys exactly `class` and `confidence`, `class` either "normal" or "atypical" and
`confidence` = P(atypical) as a JSON float (the evaluator rejects `0` or `1`) in [0, 1]. In ACTUAL,
each class must also follow from its confidence: "atypical" exactly when confidence >= T.

Page by page, confidences must agree within the tolerance and classes must be equal, except where
the expected confidence lies within the tolerance of the threshold: there a difference too small
to matter (another CPU, the GPU, another ONNX Runtime kernel) may rightly flip the class.

Prints every problem and, last, one summary line. Exit code 0 when the outputs match, 1 when they
do not, 2 when a file cannot be read. Standard library only, so that test.sh can run it with any
python3.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

CLASSES = ("normal", "atypical")  # (negative, positive), as in model.json's "classes"
KEYS = {"class", "confidence"}
DEFAULT_TOLERANCE = 1e-3
MAX_PROBLEMS_SHOWN = 20


def contract_problems(pages: Any, *, label: str) -> list[str]:
    """Where `pages` breaks the Track 2 output contract (empty when it does not)."""
    if not isinstance(pages, list):
        return [f"{label}: not a JSON list but {type(pages).__name__}"]
    problems = []
    for index, page in enumerate(pages):
        where = f"{label} page {index}"
        if not isinstance(page, dict):
            problems.append(f"{where}: not an object but {type(page).__name__}")
            continue
        if set(page) != KEYS:
            problems.append(f"{where}: keys {sorted(page)}, expected exactly {sorted(KEYS)}")
            continue
        if page["class"] not in CLASSES:
            problems.append(f"{where}: class {page['class']!r} is not one of {list(CLASSES)}")
        confidence = page["confidence"]
        if not isinstance(confidence, float):
            problems.append(f"{where}: confidence {confidence!r} is a {type(confidence).__name__}, "
                            "not a JSON float")
        elif not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            problems.append(f"{where}: confidence {confidence!r} is not a probability in [0, 1]")
    return problems


def consistency_problems(pages: list[dict[str, Any]], *, threshold: float, label: str) -> list[str]:
    """Pages whose class does not follow from their confidence and the threshold."""
    problems = []
    for index, page in enumerate(pages):
        implied = CLASSES[1] if page["confidence"] >= threshold else CLASSES[0]
        if page["class"] != implied:
            problems.append(f"{label} page {index}: class {page['class']!r} but confidence "
                            f"{page['confidence']:.6f} with threshold {threshold} means {implied!r}")
    return problems


def compare(expected: Any, actual: Any, *, threshold: float,
            tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """Every difference that matters between two outputs (empty when they match)."""
    problems = contract_problems(expected, label="expected") + contract_problems(actual, label="actual")
    if problems:
        return problems
    if len(actual) != len(expected):
        return [f"actual has {len(actual)} pages, expected {len(expected)}"]
    problems = consistency_problems(actual, threshold=threshold, label="actual")
    for index, (want, got) in enumerate(zip(expected, actual)):
        difference = abs(got["confidence"] - want["confidence"])
        if difference > tolerance:
            problems.append(f"page {index}: confidence {got['confidence']:.6f}, expected "
                            f"{want['confidence']:.6f} (differs by {difference:.2e} > {tolerance:g})")
        near_threshold = abs(want["confidence"] - threshold) <= tolerance
        if got["class"] != want["class"] and not near_threshold:
            problems.append(f"page {index}: class {got['class']!r}, expected {want['class']!r} "
                            f"(expected confidence {want['confidence']:.6f} is not within "
                            f"{tolerance:g} of the threshold {threshold})")
    return problems


def summary(expected: list[dict[str, Any]], actual: list[dict[str, Any]], *, threshold: float,
            tolerance: float) -> str:
    """One line about two matching outputs."""
    largest = max((abs(got["confidence"] - want["confidence"]) for want, got in zip(expected, actual)),
                  default=0.0)
    flips = sum(got["class"] != want["class"] for want, got in zip(expected, actual))
    atypical = sum(page["class"] == CLASSES[1] for page in actual)
    text = (f"outputs match: {len(actual)} pages ({atypical} atypical), largest confidence "
            f"difference {largest:.1e} (tolerance {tolerance:g})")
    if flips:
        text += f", {flips} class flip(s) within {tolerance:g} of the threshold {threshold}"
    return text


def read_json(path: Path) -> Any:
    """The parsed file; SystemExit(2) with a one-line reason when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"cannot read {path}: {' '.join(str(error).split())}")
        raise SystemExit(2) from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expected", type=Path, help="golden output, e.g. test/expected_output.json")
    parser.add_argument("actual", type=Path, help="output of process.py")
    parser.add_argument("--threshold", type=float, required=True,
                        help="the model's decision threshold (model.json 'threshold')")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"allowed confidence difference (default {DEFAULT_TOLERANCE:g})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    expected, actual = read_json(args.expected), read_json(args.actual)
    problems = compare(expected, actual, threshold=args.threshold, tolerance=args.tolerance)
    if not problems:
        print(summary(expected, actual, threshold=args.threshold, tolerance=args.tolerance))
        return 0
    if len(problems) == 1:
        print(f"outputs differ: {problems[0]}")
        return 1
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(problem)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    print(f"outputs differ: {len(problems)} problems, first: {problems[0]}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
