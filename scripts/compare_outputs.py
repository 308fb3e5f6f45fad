"""Compare the output of process.py with a golden expected output (MIDOG 2025 Track 2).

Usage: python3 scripts/compare_outputs.py EXPECTED ACTUAL --threshold T [--tolerance 1e-3]

The form of EXPECTED says which of process.py's two outputs is compared:

- a JSON list: the stack interface, multiple-mitotic-figure-classification.json. One object per
  page, keys exactly `class` and `confidence`, `class` either "normal" or "atypical" and
  `confidence` = P(atypical) as a JSON float (the evaluator rejects `0` or `1`) in [0, 1].
- a JSON object: the points interface, atypical-mitotic-figures.json, grand-challenge "Multiple
  points": `type` "Multiple points", `version` {"major": 1, "minor": 0}, and `points`, each with
  keys exactly `name` ("normal mitotic figure" or "atypical mitotic figure"), `point` (three
  numbers, mm) and `probability` = P(atypical) as a JSON float in [0, 1]. The two files must list
  the same points in the same order, coordinates equal within 1e-9.

In ACTUAL, each class (name) must also follow from its probability: atypical exactly when the
probability is >= T. Item by item, probabilities must agree within the tolerance and classes must be
equal, except where the expected probability lies within the tolerance of the threshold: there a
difference too small to matter (another CPU, the GPU, another ONNX Runtime kernel) may rightly flip
the class.

Prints every problem and, last, one summary line. Exit code 0 when the outputs match, 1 when they
do not, 2 when a file cannot be read. Standard library only, so that test.sh can run it with any
python3.
"""

import argparse
import json
import math
from pathlib import Path
from typing import Any

CLASSES = ("normal", "atypical")  # (negative, positive), as in model.json's "classes"
KEYS = {"class", "confidence"}
POINT_NAMES = tuple(f"{name} mitotic figure" for name in CLASSES)
POINT_KEYS = {"name", "point", "probability"}
POINTS_TOP_KEYS = {"type", "points", "version", "name"}  # what grand-challenge's schema allows
POINTS_VERSION = {"major": 1, "minor": 0}
COORDINATE_TOLERANCE = 1e-9
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


def is_probability(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def point_problems(item: Any, *, where: str) -> list[str]:
    """Where one entry of a Multiple points output breaks the contract."""
    if not isinstance(item, dict):
        return [f"{where}: not an object but {type(item).__name__}"]
    if set(item) != POINT_KEYS:
        return [f"{where}: keys {sorted(item)}, expected exactly {sorted(POINT_KEYS)}"]
    problems = []
    if item["name"] not in POINT_NAMES:
        problems.append(f"{where}: name {item['name']!r} is not one of {list(POINT_NAMES)}")
    point = item["point"]
    if not (isinstance(point, list) and len(point) == 3
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in point)):
        problems.append(f"{where}: point {point!r} is not three numbers")
    if not is_probability(item["probability"]):
        problems.append(f"{where}: probability {item['probability']!r} is not a JSON float in [0, 1]")
    return problems


def points_contract_problems(output: Any, *, label: str) -> list[str]:
    """Where `output` breaks the Multiple points contract of the points interface (empty when it does not)."""
    if not isinstance(output, dict):
        return [f"{label}: not a JSON object (Multiple points) but {type(output).__name__}"]
    problems = []
    if not set(output) <= POINTS_TOP_KEYS:
        problems.append(f"{label}: keys {sorted(set(output) - POINTS_TOP_KEYS)} beyond {sorted(POINTS_TOP_KEYS)}")
    if output.get("type") != "Multiple points":
        problems.append(f"{label}: type {output.get('type')!r}, expected 'Multiple points'")
    if output.get("version") != POINTS_VERSION:
        problems.append(f"{label}: version {output.get('version')!r}, expected {POINTS_VERSION}")
    if not isinstance(output.get("points"), list):
        return problems + [f"{label}: points is not a list"]
    for index, item in enumerate(output["points"]):
        problems += point_problems(item, where=f"{label} point {index}")
    return problems


def compare_points(expected: Any, actual: Any, *, threshold: float, tolerance: float) -> list[str]:
    """Every difference that matters between two outputs of the points interface."""
    problems = points_contract_problems(expected, label="expected") + points_contract_problems(actual, label="actual")
    if problems:
        return problems
    want_points, got_points = expected["points"], actual["points"]
    if len(got_points) != len(want_points):
        return [f"actual has {len(got_points)} points, expected {len(want_points)}"]
    for index, (want, got) in enumerate(zip(want_points, got_points)):
        implied = POINT_NAMES[got["probability"] >= threshold]
        if got["name"] != implied:
            problems.append(f"actual point {index}: name {got['name']!r} but probability {got['probability']:.6f} "
                            f"with threshold {threshold} means {implied!r}")
        if any(abs(g - w) > COORDINATE_TOLERANCE for w, g in zip(want["point"], got["point"])):
            problems.append(f"point {index}: at {got['point']}, expected {want['point']} (points out of order?)")
        difference = abs(got["probability"] - want["probability"])
        if difference > tolerance:
            problems.append(f"point {index}: probability {got['probability']:.6f}, expected "
                            f"{want['probability']:.6f} (differs by {difference:.2e} > {tolerance:g})")
        if got["name"] != want["name"] and abs(want["probability"] - threshold) > tolerance:
            problems.append(f"point {index}: name {got['name']!r}, expected {want['name']!r} (expected "
                            f"probability {want['probability']:.6f} is not within {tolerance:g} of the "
                            f"threshold {threshold})")
    return problems


def compare(expected: Any, actual: Any, *, threshold: float,
            tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """Every difference that matters between two outputs (empty when they match); EXPECTED's form picks the interface."""
    if isinstance(expected, dict):
        return compare_points(expected, actual, threshold=threshold, tolerance=tolerance)
    return compare_stacks(expected, actual, threshold=threshold, tolerance=tolerance)


def compare_stacks(expected: Any, actual: Any, *, threshold: float, tolerance: float) -> list[str]:
    """Every difference that matters between two outputs of the stack interface."""
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


def summary(expected: Any, actual: Any, *, threshold: float, tolerance: float) -> str:
    """One line about two matching outputs."""
    if isinstance(expected, dict):
        items = [(want["probability"], got["probability"], want["name"], got["name"])
                 for want, got in zip(expected["points"], actual["points"])]
        unit, kind, positive = "points", "probability", POINT_NAMES[1]
    else:
        items = [(want["confidence"], got["confidence"], want["class"], got["class"])
                 for want, got in zip(expected, actual)]
        unit, kind, positive = "pages", "confidence", CLASSES[1]
    largest = max((abs(got - want) for want, got, _, _ in items), default=0.0)
    flips = sum(got_class != want_class for _, _, want_class, got_class in items)
    atypical = sum(got_class == positive for _, _, _, got_class in items)
    text = (f"outputs match: {len(items)} {unit} ({atypical} atypical), largest {kind} "
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
