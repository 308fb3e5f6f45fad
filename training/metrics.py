"""Classification metrics as the MIDOG 2025 Track 2 evaluator computes them, and threshold choice.

Atypical is the positive class. The evaluator pools every stack, takes sensitivity and specificity
from the predicted classes (balanced accuracy = their mean, the ranking metric) and ROC AUC from the
confidences (P(atypical)), with scikit-learn.
"""

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Balanced accuracy, sensitivity, specificity, accuracy and ROC AUC at `threshold` (p >= t is atypical)."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    both_classes = 0 < labels.sum() < len(labels)
    return {
        "n": int(len(labels)),
        "n_atypical": int(labels.sum()),
        "threshold": float(threshold),
        "balanced_accuracy": float((sensitivity + specificity) / 2),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "accuracy": float((tp + tn) / len(labels)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
    }


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
