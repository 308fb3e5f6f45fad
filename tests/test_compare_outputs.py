"""scripts/compare_outputs.py: what test.sh accepts as the container's output and what it rejects."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.compare_outputs import compare

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_outputs.py"
THRESHOLD = 0.5


@pytest.fixture
def expected() -> list[dict]:
    return [
        {"class": "normal", "confidence": 0.1},
        {"class": "atypical", "confidence": 0.9},
        {"class": "atypical", "confidence": 0.5004},  # within 1e-3 of the threshold
        {"class": "normal", "confidence": 0.3},
    ]


def test_identical_outputs_match(expected):
    assert compare(expected, copy.deepcopy(expected), threshold=THRESHOLD) == []


def test_small_confidence_difference_passes(expected):
    actual = copy.deepcopy(expected)
    actual[3]["confidence"] += 5e-4
    assert compare(expected, actual, threshold=THRESHOLD) == []


def test_large_confidence_difference_fails(expected):
    actual = copy.deepcopy(expected)
    actual[3]["confidence"] += 2e-3
    problems = compare(expected, actual, threshold=THRESHOLD)
    assert len(problems) == 1 and problems[0].startswith("page 3: confidence")


def test_class_flip_far_from_threshold_fails(expected):
    actual = copy.deepcopy(expected)
    actual[0]["class"] = "atypical"
    problems = compare(expected, actual, threshold=THRESHOLD)
    assert any(problem.startswith("page 0: class 'atypical', expected 'normal'") for problem in problems)


def test_class_flip_near_threshold_passes(expected):
    actual = copy.deepcopy(expected)
    actual[2] = {"class": "normal", "confidence": 0.4998}
    assert compare(expected, actual, threshold=THRESHOLD) == []


def test_class_that_contradicts_its_confidence_fails(expected):
    actual = copy.deepcopy(expected)
    actual[2]["class"] = "normal"  # the confidence 0.5004 says atypical
    problems = compare(expected, actual, threshold=THRESHOLD)
    assert problems and "means 'atypical'" in problems[0]


def test_length_mismatch_fails(expected):
    problems = compare(expected, expected[:-1], threshold=THRESHOLD)
    assert problems == ["actual has 3 pages, expected 4"]


def test_integer_confidence_fails(expected):
    actual = copy.deepcopy(expected)
    actual[0]["confidence"] = 0
    problems = compare(expected, actual, threshold=THRESHOLD)
    assert problems and "not a JSON float" in problems[0]


def test_extra_key_fails(expected):
    actual = copy.deepcopy(expected)
    actual[1]["label"] = 1
    problems = compare(expected, actual, threshold=THRESHOLD)
    assert problems and "expected exactly ['class', 'confidence']" in problems[0]


def test_not_a_list_and_unknown_class_fail(expected):
    assert compare(expected, {"pages": expected}, threshold=THRESHOLD) == ["actual: not a JSON list but dict"]
    actual = copy.deepcopy(expected)
    actual[0]["class"] = "Normal"
    assert "is not one of" in compare(expected, actual, threshold=THRESHOLD)[0]


def test_script_exit_codes_and_last_line(tmp_path, expected):
    """Run as test.sh runs it: a stdlib-only script; 0 on a match, 1 on a mismatch, 2 on a bad file."""
    expected_path, actual_path = tmp_path / "expected.json", tmp_path / "actual.json"
    expected_path.write_text(json.dumps(expected))
    actual_path.write_text(json.dumps(expected))
    command = [sys.executable, str(SCRIPT), str(expected_path), str(actual_path), "--threshold", "0.5"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("outputs match: 4 pages (2 atypical)")

    tampered = copy.deepcopy(expected)
    tampered[1]["confidence"] = 0.7
    actual_path.write_text(json.dumps(tampered))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("outputs differ: page 1: confidence 0.700000")

    actual_path.write_text("[{")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "cannot read" in result.stdout


# ---------------------------------------------------------------------------------------------
# the points interface: grand-challenge Multiple points


@pytest.fixture
def expected_points() -> dict:
    def point(name, xyz, probability):
        return {"name": f"{name} mitotic figure", "point": xyz, "probability": probability}

    return {
        "type": "Multiple points",
        "points": [
            point("normal", [0.0375, 0.0275, 0.0], 0.1),
            point("atypical", [0.0825, 0.0625, 0.0], 0.9),
            point("atypical", [0.157, 0.075, 0.0], 0.5004),  # within 1e-3 of the threshold
            point("normal", [0.01, 0.117, 0.0], 0.3),
        ],
        "version": {"major": 1, "minor": 0},
    }


def test_identical_points_match(expected_points):
    assert compare(expected_points, copy.deepcopy(expected_points), threshold=THRESHOLD) == []
    empty = {**expected_points, "points": []}
    assert compare(empty, copy.deepcopy(empty), threshold=THRESHOLD) == []


def test_points_small_probability_and_coordinate_differences_pass(expected_points):
    actual = copy.deepcopy(expected_points)
    actual["points"][3]["probability"] += 5e-4
    actual["points"][0]["point"][0] += 5e-10
    assert compare(expected_points, actual, threshold=THRESHOLD) == []


def test_points_large_probability_difference_fails(expected_points):
    actual = copy.deepcopy(expected_points)
    actual["points"][3]["probability"] += 2e-3
    problems = compare(expected_points, actual, threshold=THRESHOLD)
    assert len(problems) == 1 and problems[0].startswith("point 3: probability")


def test_points_moved_or_reordered_fail(expected_points):
    actual = copy.deepcopy(expected_points)
    actual["points"][1]["point"][1] += 2e-9
    assert compare(expected_points, actual, threshold=THRESHOLD)[0].startswith("point 1: at")
    actual = copy.deepcopy(expected_points)
    actual["points"][0], actual["points"][3] = actual["points"][3], actual["points"][0]
    problems = compare(expected_points, actual, threshold=THRESHOLD)
    assert any("points out of order" in problem for problem in problems)


def test_points_count_mismatch_fails(expected_points):
    actual = copy.deepcopy(expected_points)
    del actual["points"][2]
    assert compare(expected_points, actual, threshold=THRESHOLD) == ["actual has 3 points, expected 4"]


def test_points_name_flip_far_from_threshold_fails_near_it_passes(expected_points):
    actual = copy.deepcopy(expected_points)
    actual["points"][0] = {**actual["points"][0], "name": "atypical mitotic figure", "probability": 0.1}
    problems = compare(expected_points, actual, threshold=THRESHOLD)
    assert any("means 'normal mitotic figure'" in problem for problem in problems)
    actual = copy.deepcopy(expected_points)
    actual["points"][2] = {**actual["points"][2], "name": "normal mitotic figure", "probability": 0.4998}
    assert compare(expected_points, actual, threshold=THRESHOLD) == []


def test_points_contract(expected_points):
    def problems_after(change):
        actual = copy.deepcopy(expected_points)
        change(actual)
        return compare(expected_points, actual, threshold=THRESHOLD)

    assert "not a JSON float" in problems_after(lambda a: a["points"][0].update(probability=0))[0]
    assert "not a JSON float" in problems_after(lambda a: a["points"][1].update(probability=1.5))[0]
    assert "expected exactly" in problems_after(lambda a: a["points"][0].update(warning="x"))[0]
    assert "is not one of" in problems_after(lambda a: a["points"][0].update(name="normal"))[0]
    assert "not three numbers" in problems_after(lambda a: a["points"][0].update(point=[0.1, 0.2]))[0]
    assert "expected 'Multiple points'" in problems_after(lambda a: a.update(type="Mulitple points"))[0]
    assert "version" in problems_after(lambda a: a.pop("version"))[0]
    assert "beyond" in problems_after(lambda a: a.update(extra=1))[0]
    assert compare(expected_points, expected_points["points"], threshold=THRESHOLD) == [
        "actual: not a JSON object (Multiple points) but list"]


def test_script_on_points(tmp_path, expected_points):
    expected_path, actual_path = tmp_path / "expected.json", tmp_path / "actual.json"
    expected_path.write_text(json.dumps(expected_points))
    actual_path.write_text(json.dumps(expected_points))
    command = [sys.executable, str(SCRIPT), str(expected_path), str(actual_path), "--threshold", "0.5"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("outputs match: 4 points (2 atypical)")
