"""Does the shipped threshold transfer? Hold slides out of everything, train and export without them, and see.

The exported threshold is chosen on the members' out-of-fold predictions, where each patch is
scored by one member, and it is applied to the average of every member over every test-time view.
This command measures what that costs on slides no member saw: for each held-out group (one
fold of the recipe's own split), it trains the recipe's cross-validation on the remaining slides
(`data.exclude_slides`), exports the ensemble once per view set (the config's views, and all
eight flips/rotations), scores the held-out patches with the exported graph through ONNX Runtime
(the container's own code), and compares every threshold rule of training.thresholds with the
best threshold on the held-out patches themselves (which no rule can know). Sensitivity and
specificity are reported beside balanced accuracy, with percentile bootstrap intervals over
patches (patches of one slide are correlated, so these intervals are on the narrow side).

Layout: <out>/outer_split.json, <out>/holdout_<k>/run/ (the inner run folder),
<out>/holdout_<k>/model_<views>/ (exported), <out>/holdout_<k>/held_out_<views>.csv,
<out>/transfer.json, transfer.md, transfer.png. Resumes: finished inner folds are not retrained, and an export
of the very same checkpoints that the container's loader accepts is not made again.
"""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from inference.errors import InputError
from inference.model import Model, load_model, predict, read_model_spec, sha256_of
from training.config import ExperimentConfig
from training.crossval import fold_dirs, run_crossval
from training.data import config_samples, labels_of, load_images
from training.ensemble import DIHEDRAL_VIEWS
from training.export import export_model
from training.metrics import best_threshold, binary_metrics, roc_auc
from training.plots import plot_threshold_transfer
from training.splits import save_split, split_for
from training.statistics import bootstrap_intervals
from training.thresholds import RULES

VIEW_SETS = {"config": None, "dihedral": list(DIHEDRAL_VIEWS)}
RATES = ("balanced_accuracy", "sensitivity", "specificity")


def _inner_config(config: ExperimentConfig, held_slides) -> ExperimentConfig:
    """The recipe with the held-out slides excluded from every read of the dataset."""
    data = dataclasses.replace(config.data, exclude_slides=sorted({*config.data.exclude_slides, *held_slides}))
    return dataclasses.replace(config, data=data)


def _at(labels, probabilities, threshold: float) -> dict:
    """Balanced accuracy, sensitivity, specificity at `threshold`, each with a 95% bootstrap interval."""
    metrics = binary_metrics(labels, probabilities, threshold)
    intervals = bootstrap_intervals(labels, (probabilities >= threshold).astype(int), probabilities, resamples=1000)
    return {"threshold": float(threshold), **{rate: metrics[rate] for rate in RATES},
            "intervals_95": {rate: intervals[rate] for rate in RATES}}


def _write_predictions(path: Path, samples, labels, probabilities) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "slide", "label", "probability"])
        for sample, label, probability in zip(samples, labels, probabilities):
            writer.writerow([sample.sample_id, sample.slide, int(label), f"{probability:.6f}"])


def _exported(fold_folders, model_dir: Path, *, name: str, views) -> tuple[dict, Model]:
    """The export of `fold_folders` and the container's model on it.

    A finished export of these very checkpoints (a resumed run) is reused when the container's own
    loader accepts it (model.json, graph and weight digests); otherwise it is exported (again).
    """
    checkpoints = [sha256_of(Path(folder) / "model.safetensors") for folder in fold_folders]
    try:
        spec = read_model_spec(Path(model_dir) / "model.json")
        if spec.get("name") == name and [m.get("checkpoint_sha256") for m in spec.get("members", [])] == checkpoints:
            return spec, load_model(model_dir=Path(model_dir))
    except InputError:
        pass  # no export yet, or a damaged one
    spec = export_model(fold_folders, model_dir, name=name, views=views)
    return spec, load_model(model_dir=Path(model_dir))


def transfer_one(config: ExperimentConfig, samples, outer: dict, holdout: int, out_dir: Path,
                 show_progress: bool) -> tuple[dict, list[dict]]:
    """Train without outer fold `holdout`'s slides, export, and score every rule on those slides.

    Returns the group's results and its plot panels (training.plots.plot_threshold_transfer).
    """
    held_slides = set(outer["folds"][holdout]["val_slides"])
    held = [sample for sample in samples if sample.slide in held_slides and not sample.synthetic]
    group_dir = Path(out_dir) / f"holdout_{holdout}"
    run_dir = group_dir / "run"
    inner = _inner_config(config, held_slides)
    run_crossval(inner, run_dir, show_progress=show_progress)
    patches = load_images(held, spacing_um=config.data.slides_spacing_um)
    labels = labels_of(held)
    result = {"holdout": holdout, "n": len(held), "n_atypical": int(labels.sum()), "n_slides": len(held_slides),
              "n_train_slides": len({s.slide for s in samples}) - len(held_slides), "views": {}}
    panels = []
    for view_name, views in VIEW_SETS.items():
        model_dir = group_dir / f"model_{view_name}"
        spec, model = _exported(fold_dirs(run_dir), model_dir, name=f"holdout_{holdout}_{view_name}", views=views)
        probabilities = predict(model, patches).astype(np.float64)
        _write_predictions(group_dir / f"held_out_{view_name}.csv", held, labels, probabilities)
        best = best_threshold(labels, probabilities)
        rules = {rule: spec["threshold_candidates"][rule] for rule in RULES}
        result["views"][view_name] = {
            "tta_views": spec["tta_views"],
            "roc_auc": roc_auc(labels, probabilities),
            "best_on_held_out": _at(labels, probabilities, best),
            "rules": {rule: _at(labels, probabilities, threshold) for rule, threshold in rules.items()},
        }
        panels.append({"title": f"held-out group {holdout}, {view_name} views", "labels": labels,
                       "probabilities": probabilities, "rules": rules, "best": best})
    return result, panels


def rank_rules(groups: list[dict]) -> dict:
    """Each rule's mean shortfall in balanced accuracy from the held-out best, over groups and view sets."""
    shortfall = {rule: float(np.mean([view["best_on_held_out"]["balanced_accuracy"]
                                      - view["rules"][rule]["balanced_accuracy"]
                                      for group in groups for view in group["views"].values()]))
                 for rule in RULES}
    return {"mean_shortfall": shortfall, "transfers_best": min(shortfall, key=shortfall.get)}


def run_threshold_transfer(config: ExperimentConfig, out_dir: Path, *, holdouts=(0,), show_progress=True) -> dict:
    """Run every held-out group (resuming), then write transfer.json, transfer.md and transfer.png."""
    out_dir = Path(out_dir)
    samples = config_samples(config.data)
    outer = split_for(samples, config.split)
    unknown = [k for k in holdouts if not 0 <= k < outer["n_folds"]]
    if unknown:
        raise ValueError(f"held-out groups {unknown} are not folds of the {outer['n_folds']}-fold split")
    save_split(outer, out_dir / "outer_split.json")
    done = [transfer_one(config, samples, outer, k, out_dir, show_progress) for k in holdouts]
    groups = [group for group, _ in done]
    results = {"config": config.name, "split": {"n_folds": outer["n_folds"], "seed": outer["seed"]},
               "groups": groups, **rank_rules(groups)}
    (out_dir / "transfer.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "transfer.md").write_text(transfer_markdown(results))
    plot_threshold_transfer([panel for _, panels in done for panel in panels], out_dir / "transfer.png")
    return results


def _cell(entry: dict, rate: str) -> str:
    low, high = entry["intervals_95"][rate]
    return f"{entry[rate]:.3f} [{low:.3f}, {high:.3f}]"


def shortfall_line(results: dict) -> str:
    """Each rule's mean shortfall from the held-out best, and the rule that transfers best."""
    shortfall = ", ".join(f"{rule} {value:.3f}" for rule, value in results["mean_shortfall"].items())
    return (f"Mean shortfall in balanced accuracy from the held-out best: {shortfall}. "
            f"Transfers best: **{results['transfers_best']}**")


def transfer_markdown(results: dict) -> str:
    """The report: per group and view set, every rule's threshold and rates beside the held-out best."""
    lines = [f"# Threshold transfer: `{results['config']}`", "",
             "Each group: one fold of the recipe's split held out of training, validation and calibration; the "
             "recipe's cross-validation trained on the other slides and exported; the held-out patches scored by "
             "the exported graph (ONNX Runtime). Intervals: 95 % percentile bootstrap over patches.", ""]
    for group in results["groups"]:
        lines += [f"## Held-out group {group['holdout']}: n = {group['n']} ({group['n_atypical']} atypical), "
                  f"{group['n_slides']} slides (trained on {group['n_train_slides']})", ""]
        for view_name, view in group["views"].items():
            lines += [f"**Views: {view_name}** ({len(view['tta_views'])}); held-out ROC AUC {view['roc_auc']:.3f}", "",
                      "| threshold rule | threshold | balanced accuracy | sensitivity | specificity |",
                      "|---|---|---|---|---|"]
            for rule, entry in [*view["rules"].items(), ("best on the held-out patches", view["best_on_held_out"])]:
                cells = " | ".join(_cell(entry, rate) for rate in RATES)
                lines.append(f"| {rule} | {entry['threshold']:.3f} | {cells} |")
            lines.append("")
    lines += [f"{shortfall_line(results)} (over {len(results['groups'])} held-out group(s) x {len(VIEW_SETS)} "
              "view sets).", ""]
    return "\n".join(lines)
