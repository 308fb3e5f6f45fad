"""Classification metrics as the MIDOG 2025 Track 2 evaluator computes them, and threshold choice.

Atypical is the positive class. The evaluator pools every stack, takes sensitivity and specificity
from the predicted classes (balanced accuracy = their mean, the ranking metric) and ROC AUC from the
confidences (P(atypical)), with scikit-learn.
"""

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def class_rates(labels, predicted) -> dict:
    """Sensitivity, specificity, their mean (balanced accuracy) and accuracy of predicted classes (1 = atypical)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    sensitivity = float(np.mean(predicted[labels == 1] == 1)) if (labels == 1).any() else float("nan")
    specificity = float(np.mean(predicted[labels == 0] == 0)) if (labels == 0).any() else float("nan")
    return {"balanced_accuracy": (sensitivity + specificity) / 2, "sensitivity": sensitivity,
            "specificity": specificity, "accuracy": float(np.mean(labels == predicted))}


def roc_auc(labels, scores) -> float:
    """ROC AUC of scores for P(atypical); NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < np.sum(labels) < len(labels) else float("nan")


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Balanced accuracy, sensitivity, specificity, accuracy and ROC AUC at `threshold` (p >= t is atypical)."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    return {"n": int(len(labels)), "n_atypical": int(labels.sum()), "threshold": float(threshold),
            **class_rates(labels, predicted), "roc_auc": roc_auc(labels, probabilities)}


def best_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on these predictions.

    Returned halfway between the chosen score and the next lower one, so that the confusion
    matrix on these predictions is the one that was maximised, with the most room on each side.
    """
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    upper = min(float(thresholds[best]), 1.0)
    lower = float(thresholds[best + 1]) if best + 1 < len(thresholds) else 0.0
    return (upper + lower) / 2


def cross_validated_threshold_metrics(labels, probabilities, folds) -> dict | None:
    """Balanced accuracy when each fold's threshold is chosen on the other folds only.

    The threshold chosen on all out-of-fold predictions has seen the labels it is scored on, so its
    balanced accuracy flatters; this is the honest estimate of what a threshold does on new slides.
    None when there are fewer than two folds.
    """
    labels, probabilities, folds = (np.asarray(a) for a in (labels, probabilities, folds))
    if len(np.unique(folds)) < 2:
        return None
    predicted = np.zeros(len(labels), dtype=int)
    for fold in np.unique(folds):
        inside = folds == fold
        threshold = best_threshold(labels[~inside], probabilities[~inside])
        predicted[inside] = probabilities[inside] >= threshold
    # Feed hard 0/1 "probabilities" through the same code path, at threshold 0.5.
    result = binary_metrics(labels, predicted.astype(float), 0.5)
    result.pop("roc_auc")
    result.pop("threshold")
    return result
