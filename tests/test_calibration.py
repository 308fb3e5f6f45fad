"""Temperature scaling (training/calibration.py): the fit recovers a known temperature, ECE measures what it should."""

import numpy as np
import pytest
from scipy.special import expit

from training.calibration import calibrated, expected_calibration_error, fit_temperature


def overconfident(n: int = 20000, temperature: float = 3.0, seed: int = 0):
    """Labels drawn from sigmoid(z), scores z * temperature: a model `temperature` times too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, n)
    labels = (rng.random(n) < expit(logits)).astype(int)
    return logits * temperature, labels


def test_the_fit_recovers_the_temperature_that_made_the_scores():
    scores, labels = overconfident(temperature=3.0)
    assert fit_temperature(scores, labels) == pytest.approx(3.0, rel=0.08)
    underconfident, labels = overconfident(temperature=0.5, seed=1)
    assert fit_temperature(underconfident, labels) == pytest.approx(0.5, rel=0.08)


def test_calibration_lowers_the_expected_calibration_error_and_keeps_the_ranking():
    scores, labels = overconfident(temperature=3.0)
    temperature = fit_temperature(scores, labels)
    before, after = calibrated(scores, 1.0), calibrated(scores, temperature)
    assert expected_calibration_error(labels, before) > 0.05 > expected_calibration_error(labels, after)
    assert np.array_equal(np.argsort(before, kind="stable"), np.argsort(after, kind="stable"))
    np.testing.assert_allclose(before, expit(scores))


def test_ece_of_a_perfectly_calibrated_model_is_near_zero_and_of_a_constant_one_is_its_gap():
    rng = np.random.default_rng(2)
    probabilities = rng.random(50000)
    labels = (rng.random(50000) < probabilities).astype(int)
    assert expected_calibration_error(labels, probabilities) < 0.01
    assert expected_calibration_error(np.array([0, 0, 0, 1]), np.full(4, 0.75)) == pytest.approx(0.5)
