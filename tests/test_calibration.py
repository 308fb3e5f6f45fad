"""Calibration (training/calibration.py): the fit recovers a known temperature and bias, ECE measures what it should."""

import numpy as np
import pytest
from scipy.special import expit

from training.calibration import calibrated, cross_fitted, expected_calibration_error, fit_calibration


def miscalibrated(n: int = 20000, temperature: float = 3.0, bias: float = 0.0, seed: int = 0):
    """Labels drawn from sigmoid(z), scores (z - bias) * temperature: too sure of itself, and shifted by -bias."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, n)
    labels = (rng.random(n) < expit(logits)).astype(int)
    return (logits - bias) * temperature, labels


def test_the_fit_recovers_the_temperature_and_bias_that_made_the_scores():
    scores, labels = miscalibrated(temperature=3.0)
    temperature, bias = fit_calibration(scores, labels)
    assert temperature == pytest.approx(3.0, rel=0.08) and abs(bias) < 0.1
    underconfident, labels = miscalibrated(temperature=0.5, bias=-1.5, seed=1)
    temperature, bias = fit_calibration(underconfident, labels)
    assert temperature == pytest.approx(0.5, rel=0.08) and bias == pytest.approx(-1.5, abs=0.1)


def test_a_shifted_prior_needs_the_bias_and_calibration_keeps_the_ranking():
    # what class-weighted training does: right confidence, wrong base rate
    scores, labels = miscalibrated(temperature=1.0, bias=-1.5, seed=2)
    temperature, bias = fit_calibration(scores, labels)
    before, after = calibrated(scores, 1.0), calibrated(scores, temperature, bias)
    assert expected_calibration_error(labels, before) > 0.1 > 0.02 > expected_calibration_error(labels, after)
    assert np.array_equal(np.argsort(before, kind="stable"), np.argsort(after, kind="stable"))
    np.testing.assert_allclose(before, expit(scores))


def test_cross_fitting_maps_each_fold_with_a_fit_on_the_others_only():
    scores, labels = miscalibrated(temperature=2.0, bias=1.0, seed=3)
    folds = np.arange(len(scores)) % 4
    probabilities = cross_fitted(scores, labels, folds)
    inside = folds == 0
    np.testing.assert_allclose(probabilities[inside],
                               calibrated(scores[inside], *fit_calibration(scores[~inside], labels[~inside])))
    assert expected_calibration_error(labels, probabilities) < 0.02


def test_ece_of_a_perfectly_calibrated_model_is_near_zero_and_of_a_constant_one_is_its_gap():
    rng = np.random.default_rng(2)
    probabilities = rng.random(50000)
    labels = (rng.random(50000) < probabilities).astype(int)
    assert expected_calibration_error(labels, probabilities) < 0.01
    assert expected_calibration_error(np.array([0, 0, 0, 1]), np.full(4, 0.75)) == pytest.approx(0.5)
