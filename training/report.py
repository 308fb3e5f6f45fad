"""A run's results as something to read and look at: results.md, ROC, per-domain and learning-curve plots.

Everything here is computed from the run folder alone (results.json, oof_predictions.csv and each
fold's metrics.csv), so a report can be rebuilt at any time with `python -m training report RUN`.
"""

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.special import expit
from sklearn.metrics import roc_curve

from training.train import read_oof


def _fmt(value: float) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def plot_roc(oof_rows: list[dict], threshold: float, path: Path) -> None:
    """Pooled and per-fold ROC curves of the out-of-fold predictions, with the chosen operating point."""
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    labels = np.array([r["label"] for r in oof_rows])
    scores = np.array([r["score"] for r in oof_rows])
    folds = np.array([str(r["fold"]) for r in oof_rows])
    for fold in sorted(set(folds)):
        inside = folds == fold
        if 0 < labels[inside].sum() < inside.sum():
            fpr, tpr, _ = roc_curve(labels[inside], scores[inside])
            axes.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"fold {fold}")
    fpr, tpr, _ = roc_curve(labels, scores)
    axes.plot(fpr, tpr, color="black", lw=2, label="pooled")
    predicted = expit(scores) >= threshold
    axes.plot(np.mean(predicted[labels == 0]), np.mean(predicted[labels == 1]), "o", color="crimson",
              label=f"threshold {threshold:.3f}")
    axes.plot([0, 1], [0, 1], ":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity (atypical)", title="Out-of-fold ROC", aspect="equal")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_per_domain(per_domain: dict, path: Path) -> None:
    """Balanced accuracy and ROC AUC per domain value, one panel per domain key."""
    keys = list(per_domain)
    figure = Figure(figsize=(4 * len(keys), 3.5))
    panels = figure.subplots(1, len(keys), squeeze=False)
    for axes, key in zip(panels[0], keys):
        values = list(per_domain[key])
        x = np.arange(len(values))
        for offset, metric in ((-0.2, "balanced_accuracy"), (0.2, "roc_auc")):
            axes.bar(x + offset, [per_domain[key][v][metric] for v in values], width=0.4, label=metric.replace("_", " "))
        axes.set_xticks(x, [f"{v}\n(n={per_domain[key][v]['n']})" for v in values], fontsize=8)
        axes.set(ylim=(0, 1), title=key)
        axes.axhline(0.5, color="grey", lw=0.5)
    panels[0][0].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_learning_curves(fold_folders: list[Path], path: Path) -> None:
    """Training loss and validation ROC AUC per epoch, one line per fold."""
    figure = Figure(figsize=(9, 3.5))
    loss_axes, auc_axes = figure.subplots(1, 2)
    for folder in fold_folders:
        with (folder / "metrics.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        loss_axes.plot(epochs, [float(r["train_loss"]) for r in rows], label=folder.name)
        if rows and "val_roc_auc" in rows[0]:
            auc_axes.plot(epochs, [float(r["val_roc_auc"]) for r in rows], label=folder.name)
    loss_axes.set(xlabel="epoch", ylabel="training loss")
    auc_axes.set(xlabel="epoch", ylabel="validation ROC AUC (EMA weights)")
    auc_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _metrics_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| | n (atypical) | balanced accuracy | sensitivity | specificity | ROC AUC |", "|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['n']} ({m['n_atypical']}) | {_fmt(m['balanced_accuracy'])} | "
                     f"{_fmt(m['sensitivity'])} | {_fmt(m['specificity'])} | {_fmt(m.get('roc_auc'))} |")
    return lines


def results_markdown(run_dir: Path, results: dict) -> str:
    """The run's summary as Markdown."""
    oof = results["oof"]
    honest = oof["threshold_chosen_on_other_folds"]
    train = results["train"]
    lines = [
        f"# Results: {Path(run_dir).name}",
        "",
        f"Out-of-fold predictions of {len(results['folds'])} slide-grouped folds: every patch scored by the "
        f"fold model that did not train on its slide, with the deployed test-time views. "
        f"Backbone {train[0]['backbone']}, {train[0]['epochs']} epochs, "
        f"{np.mean([t['train_seconds'] for t in train]) / 60:.1f} min and "
        f"{np.mean([t['train_images_per_second'] for t in train]):.0f} training images/s per fold.",
        "",
        f"Threshold {oof['threshold']:.4f} maximises the pooled balanced accuracy; that choice has seen the "
        "labels it is scored on, so the row where each fold's threshold was chosen on the other folds "
        "is the honest estimate for new slides.",
        "",
        *_metrics_table([("pooled, at the chosen threshold", oof["at_threshold"]), ("pooled, at 0.5", oof["at_0_5"])]),
    ]
    selected = [t["fold"] for t in train if t.get("selected_on_validation")]
    if selected:
        lines[1:1] = ["", f"**Warning: early stopping chose the weights of folds {selected} on their validation "
                          "part, so these out-of-fold metrics are optimistic.**"]
    if honest:
        lines.append(f"| pooled, threshold chosen on the other folds | {honest['n']} ({honest['n_atypical']}) | "
                     f"{_fmt(honest['balanced_accuracy'])} | {_fmt(honest['sensitivity'])} | "
                     f"{_fmt(honest['specificity'])} | |")
    lines += ["", f"ROC AUC per fold: mean {_fmt(oof['roc_auc_fold_mean'])}, sd {_fmt(oof['roc_auc_fold_sd'])}.", "",
              *_metrics_table([(f"fold {k}", m) for k, m in oof["per_fold"].items()])]
    for key, values in oof.get("per_domain", {}).items():
        lines += ["", f"Per {key} (at the pooled threshold):", "", *_metrics_table(list(values.items()))]
    lines += ["", "![ROC](roc.png)", "", "![learning curves](learning_curves.png)"]
    if oof.get("per_domain"):
        lines += ["", "![per domain](per_domain.png)"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write results.md and the plots next to the run's results.json; return the Markdown path."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    oof_rows = read_oof(run_dir / "oof_predictions.csv")
    plot_roc(oof_rows, results["oof"]["threshold"], run_dir / "roc.png")
    plot_learning_curves([run_dir / name for name in results["folds"]], run_dir / "learning_curves.png")
    if results["oof"].get("per_domain"):
        plot_per_domain(results["oof"]["per_domain"], run_dir / "per_domain.png")
    markdown = run_dir / "results.md"
    markdown.write_text(results_markdown(run_dir, results))
    return markdown
