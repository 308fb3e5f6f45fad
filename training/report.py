"""Reports as Markdown: a run's results.md (with its plots) and a study's study.md.

A run's report is computed from the run folder alone (results.json, oof_predictions.csv and each
fold's metrics.csv), so it can be rebuilt at any time with `python -m training report RUN`; a
study's from the numbers training.study gathers. The figures are drawn by training.plots.
"""

import json
from pathlib import Path

import numpy as np

from training.plots import plot_learning_curves, plot_per_domain, plot_roc
from training.statistics import verdict
from training.train import read_oof


def _fmt(value: float) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


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


def _interval(pair) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def study_markdown(results: dict, leave_out: str | None) -> str:
    """The study's report as Markdown."""
    folds = sorted({f for run in results["runs"].values() for f in run["per_fold"]}, key=int)
    coverage = results["coverage"]
    trained = ("all " if len(coverage["folds_trained"]) == coverage["n_folds"] else "only folds "
               + ", ".join(coverage["folds_trained"]) + " of the ") + f"{coverage['n_folds']} folds"
    lines = ["# Study", "", f"Baseline: `{results['baseline']}`. Every config is compared on the same slide-grouped "
             f"folds ({trained}; out-of-fold n = {coverage['n']} patches, {coverage['n_atypical']} atypical); "
             "balanced accuracy per fold uses a threshold chosen on the other trained folds.", ""]
    lines += _uneven_coverage_lines(coverage)
    lines += ["## Per fold", "", "| config | metric | " + " | ".join(f"fold {f}" for f in folds) + " | mean +- sd |",
              "|---|---|" + "---|" * (len(folds) + 1)]
    for name, run in results["runs"].items():
        for metric in ("roc_auc", "balanced_accuracy"):
            values = " | ".join(_fmt(run["per_fold"][f][metric]) if f in run["per_fold"] else "-" for f in folds)
            lines.append(f"| {name} | {metric.replace('_', ' ')} | {values} | "
                         f"{_fmt(run[metric]['mean'])} +- {_fmt(run[metric]['sd'])} |")
    if results["differences"]:
        lines += ["", "## Paired differences (config - baseline)", "",
                  "| config | metric | per fold | mean | 95% t-interval (folds) | pooled | 95% bootstrap (patches) |",
                  "|---|---|---|---|---|---|---|"]
        for name, difference in results["differences"].items():
            for metric, d in difference.items():
                per_fold = ", ".join(f"{v:+.3f}" for v in d["per_fold"])
                pooled = f"{d['pooled']:+.3f}" if "pooled" in d else ""
                boot = _interval(d["pooled_bootstrap_95"]) if "pooled_bootstrap_95" in d else ""
                lines.append(f"| {name} | {metric.replace('_', ' ')} | {per_fold} | {d['mean']:+.3f} | "
                             f"{_interval(d['t_interval_95'])} | {pooled} | {boot} |")
        lines.append("")
        lines += [f"`{name}`: ROC AUC {verdict(difference['roc_auc'])}; balanced accuracy "
                  f"{verdict(difference['balanced_accuracy'])}." for name, difference in results["differences"].items()]
        lines.append("")
    lines += _domain_lines(results, leave_out)
    lines += _selection_lines(results)
    lines += ["", "![per fold](study_folds.png)"] + (["", "![differences](study_differences.png)"]
                                                     if results["differences"] else [])
    return "\n".join(lines) + "\n"


def _uneven_coverage_lines(coverage: dict) -> list[str]:
    """A note when some configs trained more folds than the ones they are paired on."""
    per_config = coverage.get("folds_trained_per_config", {})
    more = {name: folds for name, folds in per_config.items() if folds != coverage["folds_trained"]}
    if not more:
        return []
    listed = "; ".join(f"`{name}`: folds {', '.join(folds)}" for name, folds in more.items())
    return [f"Not every config trained every fold ({listed}). The paired differences use only the folds all "
            "of them trained; each config's per-fold rows, means and selection score use all of its own folds.", ""]


def _selection_lines(results: dict) -> list[str]:
    """The recipe selection score of docs/recipes.md: S = (mean k-fold ROC AUC + mean leave-one-out ROC AUC) / 2."""
    if not results.get("selection"):
        return []
    lines = ["", "## Selection score (docs/recipes.md)", "",
             "| config | mean k-fold ROC AUC | mean leave-one-out ROC AUC | S |", "|---|---|---|---|"]
    lines += [f"| {name} | {_fmt(s['kfold_roc_auc'])} | {_fmt(s['leave_one_out_roc_auc'])} | {_fmt(s['score'])} |"
              for name, s in results["selection"].items()]
    return lines


def _domain_lines(results: dict, leave_out: str | None) -> list[str]:
    lines = []
    for name, run in results["runs"].items():
        for key, values in run["per_domain"].items():
            lines += ["", f"## Per {key}: {name} (pooled out-of-fold, at the pooled threshold)", "",
                      "| value | n | balanced accuracy | ROC AUC |", "|---|---|---|---|"]
            lines += [f"| {v} | {m['n']} | {_fmt(m['balanced_accuracy'])} | {_fmt(m['roc_auc'])} |"
                      for v, m in values.items()]
    if results["leave_one_out"]:
        lines += ["", f"## Leave one {leave_out} out (train on the others, test on it)", "",
                  "Balanced accuracy, sensitivity and specificity at a threshold chosen on the other runs' "
                  "left-out patches", "",
                  "| config | left out | n | balanced accuracy | sensitivity | specificity | ROC AUC |",
                  "|---|---|---|---|---|---|---|"]
        for name, per_domain in results["leave_one_out"].items():
            lines += [f"| {name} | {d} | {m['n']} | {_fmt(m['balanced_accuracy'])} | {_fmt(m['sensitivity'])} | "
                      f"{_fmt(m['specificity'])} | {_fmt(m['roc_auc'])} |" for d, m in per_domain.items()]
    return lines
