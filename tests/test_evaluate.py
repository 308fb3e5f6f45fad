"""`training evaluate`: the official evaluator's metrics, intervals, and running the exported model."""

import json

import numpy as np
import pytest

from tests.amibr_fixture import write_amibr
from tests.conftest import write_image
from tests.fake_model import fake_probability, write_fake_model
from training.cli import main as training_cli
from training.splits import fold_fingerprint
from training.statistics import bootstrap_intervals, evaluator_aggregates

OFFICIAL_KEYS = {"overall_sensitivity", "overall_specificity", "overall_balanced_accuracy", "overall_roc_auc",
                 "overall_accuracy"}


def test_aggregates_have_the_official_keys_and_a_hand_counted_value():
    labels = [1, 1, 0, 0, 0, 1]
    predicted = [1, 0, 0, 1, 0, 1]
    scores = [0.9, 0.4, 0.1, 0.6, 0.2, 0.8]
    domains = [1, 1, 1, 2, 2, 2]
    aggregates = evaluator_aggregates(labels, predicted, scores, domains)
    assert OFFICIAL_KEYS <= set(aggregates) and {"domain_1", "domain_2"} <= set(aggregates)
    assert aggregates["overall_sensitivity"] == pytest.approx(2 / 3)
    assert aggregates["overall_specificity"] == pytest.approx(2 / 3)
    assert aggregates["overall_accuracy"] == pytest.approx(4 / 6)
    assert aggregates["overall_roc_auc"] == pytest.approx(8 / 9)  # one (atypical 0.4 < normal 0.6) pair of 9 wrong
    assert aggregates["domain_1"]["sensitivity"] == pytest.approx(1 / 2)
    assert aggregates["domain_1"]["specificity"] == 1.0 and aggregates["domain_2"]["n"] == 3


def test_intervals_hold_the_estimate_and_narrow_with_more_pages():
    rng = np.random.default_rng(0)

    def interval_width(n):
        labels = rng.integers(0, 2, n)
        scores = np.clip(0.3 * labels + rng.normal(0.35, 0.2, n), 0, 1)
        intervals = bootstrap_intervals(labels, scores >= 0.5, scores, resamples=300)
        estimate = evaluator_aggregates(labels, scores >= 0.5, scores, np.zeros(n))["overall_roc_auc"]
        assert intervals["roc_auc"][0] <= estimate <= intervals["roc_auc"][1]
        return intervals["balanced_accuracy"][1] - intervals["balanced_accuracy"][0]

    assert interval_width(2000) < interval_width(100)


def brightness_stack(values):
    return np.stack([np.full((128, 128, 3), v, np.uint8) for v in values])


def test_evaluate_cases_runs_the_container_code_on_each_stack(tmp_path):
    model_dir = write_fake_model(tmp_path / "model", threshold=0.5)
    stacks = {"stack_1.tiff": [30, 200, 240], "stack_2.tiff": [20, 220]}
    truth = [{"image": "stack_1.tiff", "labels": ["normal", "atypical", "atypical"], "tumordomains": [1, 1, 2]},
             {"image": "stack_2.tiff", "labels": ["atypical", "normal"], "tumordomains": [2, 2]}]
    for name, values in stacks.items():
        write_image(tmp_path / "stacks" / name, brightness_stack(values))
    (tmp_path / "ground_truth.json").write_text(json.dumps(truth))
    out = tmp_path / "evaluation"
    assert training_cli(["evaluate", "--model", str(model_dir), "--cases", str(tmp_path / "stacks"),
                         "--ground-truth", str(tmp_path / "ground_truth.json"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    probabilities = np.concatenate([fake_probability(brightness_stack(v)) for v in stacks.values()])
    labels = [0, 1, 1, 1, 0]
    expected = evaluator_aggregates(labels, (probabilities >= 0.5).astype(int), probabilities, [1, 1, 2, 2, 2])
    assert metrics["aggregates"]["overall_balanced_accuracy"] == pytest.approx(expected["overall_balanced_accuracy"])
    assert metrics["aggregates"]["overall_roc_auc"] == pytest.approx(expected["overall_roc_auc"])
    assert json.loads((out / "outputs" / "stack_2.json").read_text())[0]["class"] == "normal"
    for plot in ("roc.png", "reliability.png", "per_domain.png"):
        assert (out / plot).stat().st_size > 0


def test_evaluate_cases_refuses_a_length_mismatch(tmp_path):
    model_dir = write_fake_model(tmp_path / "model")
    write_image(tmp_path / "stacks" / "s.tiff", brightness_stack([10, 20]))
    (tmp_path / "gt.json").write_text(json.dumps([{"image": "s.tiff", "labels": ["normal"], "tumordomains": [1]}]))
    assert training_cli(["evaluate", "--model", str(model_dir), "--cases", str(tmp_path / "stacks"),
                         "--ground-truth", str(tmp_path / "gt.json"), "--out", str(tmp_path / "e")]) == 1


def test_evaluate_a_patch_set_and_one_folds_validation_part(tmp_path):
    data = write_amibr(tmp_path / "amibr", n_slides=4, per_slide=6)
    model_dir = write_fake_model(tmp_path / "model")
    out = tmp_path / "all"
    assert training_cli(["evaluate", "--model", str(model_dir), "--data-kind", "amibr", "--data-root", str(data),
                         "--domain-key", "dataset", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 24 and {"domain_MIDOG21", "domain_TUPAC16"} <= set(metrics["aggregates"])
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 24

    assert training_cli(["split", "--data-kind", "amibr", "--data-root", str(data), "--folds", "2",
                         "--out", str(tmp_path / "split.json")]) == 0
    fold_1 = ["evaluate", "--model", str(model_dir), "--data-kind", "amibr", "--data-root", str(data),
              "--split", str(tmp_path / "split.json"), "--fold", "1", "--out", str(tmp_path / "f1")]
    assert training_cli(fold_1) == 1  # the fake model records no members: nothing shows they held fold 1 out
    spec = json.loads((model_dir / "model.json").read_text())
    split = json.loads((tmp_path / "split.json").read_text())
    spec["members"] = [{"backbone": "fake", "fold": 1, "fold_sha256": fold_fingerprint(split, 1)}]
    (model_dir / "model.json").write_text(json.dumps(spec))
    assert training_cli(fold_1) == 0
    assert json.loads((tmp_path / "f1" / "metrics.json").read_text())["n"] == 12
