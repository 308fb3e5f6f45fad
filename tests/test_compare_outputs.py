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
