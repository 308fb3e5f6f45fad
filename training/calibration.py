"""Calibrated P(atypical): one temperature fitted on out-of-fold scores, and how calibrated a model is.

Labs read the probability, not only the class. Temperature scaling (Guo et al., "On Calibration
of Modern Neural Networks", ICML 2017) divides the ensemble's score (the mean logit difference) by
one number T before the sigmoid; T is fitted to minimise the negative log-likelihood of the pooled
out-of-fold predictions, so no patch that fits it has trained a member that scored it. A
temperature changes no ranking and no class at its matching threshold: ROC AUC and balanced
accuracy stay as they are; only the probabilities move. Expected calibration error (ECE) is the
bin-size-weighted mean gap between the observed share of atypical figures and the mean predicted
probability, over equal-width bins.
"""

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

ECE_BINS = 15
LOG_TEMPERATURE_BOUNDS = (-4.0, 4.0)  # T from e^-4 (0.02) to e^4 (55)


def fit_temperature(scores, labels) -> float:
    """The T that minimises the mean negative log-likelihood of sigmoid(scores / T) against labels (0/1)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)

    def negative_log_likelihood(log_temperature: float) -> float:
        scaled = scores / np.exp(log_temperature)
        return float(-np.mean(labels * log_expit(scaled) + (1 - labels) * log_expit(-scaled)))

    result = minimize_scalar(negative_log_likelihood, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded")
    return float(np.exp(result.x))


def calibrated(scores, temperature: float) -> np.ndarray:
    """P(atypical) = sigmoid(score / T), as the exported graph computes it."""
    return expit(np.asarray(scores, dtype=np.float64) / temperature)


def expected_calibration_error(labels, probabilities, bins: int = ECE_BINS) -> float:
    """Bin-size-weighted mean |observed share atypical - mean predicted P| over `bins` equal-width bins."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for index in range(bins):
        inside = which == index
        if inside.any():
            error += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(error)
