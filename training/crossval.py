"""Run an experiment's cross-validation folds and pool their out-of-fold predictions.

Layout of a run folder:
    <run>/config.yaml  split.json  fold_0/ ... fold_<k-1>/  oof_predictions.csv  results.json
          results.md  roc.png  learning_curves.png  per_domain.png  (training/report.py)
A fold whose `summary.json` exists is finished and is not trained again, so an interrupted
experiment resumes at the first unfinished fold.
"""

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.special import expit

from training.config import ExperimentConfig, load_config, recipe_differences, save_config
from training.data import config_samples, labels_of, load_images, read_manifest
from training.metrics import best_threshold, binary_metrics, cross_validated_threshold_metrics
from training.report import write_report
from training.splits import fold_fingerprint, fold_indices, load_split, save_split, split_for, split_fingerprint
from training.synth.data import PROVENANCE_FILE, check_generator_version
from training.train import OOF_COLUMNS, read_oof, train_fold


def fold_dirs(run_dir: Path) -> list[Path]:
    """The finished cross-validation folds of a run (with out-of-fold predictions), in fold order.

    `fold_all` (trained on every sample) has no validation part and is not among them.
    """
    folders = [p for p in Path(run_dir).glob("fold_*")
               if (p / "summary.json").is_file() and (p / "oof_predictions.csv").is_file()]
    return sorted(folders, key=lambda p: int(p.name.removeprefix("fold_")))


def _is_main_process() -> bool:
    """False in every torchrun process but rank 0: only rank 0 writes run-level files."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_split(config: ExperimentConfig, samples, run_dir: Path, split_path: Path | None = None) -> dict:
    """Reuse `split_path` or the run's split.json; otherwise compute the split and save it there.

    A run that has started folds keeps its split: another one would mix folds trained on different
    held-out slides into one set of out-of-fold predictions.
    """
    target = Path(run_dir) / "split.json"
    source = Path(split_path) if split_path else target
    if source.is_file():
        split = load_split(source)
    else:
        split = split_for(samples, config.split)  # deterministic: every process computes the same
    started = sorted(p.name for p in Path(run_dir).glob("fold_*") if p.is_dir() and any(p.iterdir()))
    if target.is_file() and started and split_fingerprint(load_split(target)) != split_fingerprint(split):
        raise ValueError(f"{run_dir} has folds ({', '.join(started)}) trained on its split.json, and "
                         f"{source if source != target else 'the config'} gives another split; resume with the run's "
                         "own split (no --split), or train into a new run folder")
    if _is_main_process():
        save_split(split, target)
    return split


def check_finished_fold(fold_dir: Path, split: dict, fold) -> None:
    """A finished fold must have held out exactly the validation samples `split` gives that fold."""
    summary = json.loads((Path(fold_dir) / "summary.json").read_text())
    if fold == "all":
        return
    recorded = summary.get("fold_sha256")
    if recorded is not None:
        same = recorded == fold_fingerprint(split, fold)
    else:  # folds finished before the fingerprint was recorded: their out-of-fold rows say what they held out
        scored = {row["sample_id"] for row in read_oof(Path(fold_dir) / "oof_predictions.csv")}
        same = scored == set(split["folds"][int(fold)]["val_ids"])
    if not same:
        raise ValueError(f"{fold_dir}: finished on another split than this run's split.json (its held-out samples "
                         "differ); its predictions cannot be pooled with this split's folds")


def fold_recipe_differences(fold_dir: Path, config: ExperimentConfig) -> list[str]:
    """How the recipe a fold was trained with (its config.yaml) differs from `config`, RUN_LOCAL_FIELDS aside."""
    path = Path(fold_dir) / "config.yaml"
    if not path.is_file():
        return []  # written by every fold since configs were saved; nothing to compare against
    return recipe_differences(load_config(str(path)), config)


def check_same_recipe(fold_dir: Path, config: ExperimentConfig) -> None:
    """A finished fold is reused only for the config it was trained with (RUN_LOCAL_FIELDS aside)."""
    differences = fold_recipe_differences(fold_dir, config)
    if differences:
        raise ValueError(f"{fold_dir} was finished with another config ({'; '.join(differences)}); its predictions "
                         "would be pooled as this config's. Train into another folder (--out) or delete the fold")


def synthetic_for_fold(config: ExperimentConfig, samples, split: dict, fold) -> list:
    """The synthetic atypical samples fold `fold` trains with: `ratio` x its class gap, from its own generator."""
    if not config.synthetic.dir:
        return []
    generator_dir = Path(config.synthetic.dir)
    manifest = generator_dir / f"fold_{fold}" / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no synthetic images for fold {fold} (make them with "
                                f"`python -m training synth all --fold {fold} --split <this run's split.json>`)")
    generator_split = generator_dir / "split.json"
    if not generator_split.is_file() or fold_fingerprint(load_split(generator_split), fold) != fold_fingerprint(split, fold):
        raise ValueError(f"{generator_dir}: its generator for fold {fold} was made on another split, so it may have "
                         f"seen this fold's validation slides; make it with --split <this run's split.json>")
    made_by = generator_dir / f"fold_{fold}" / "finetune" / PROVENANCE_FILE
    if not made_by.is_file():
        raise FileNotFoundError(f"{made_by}: missing; a balance set is only used beside the record of the generator "
                                f"that drew it")
    check_generator_version(made_by, json.loads(made_by.read_text()))
    available = [s for s in read_manifest(manifest) if s.label == 1]
    train_index, _ = fold_indices(split, samples, fold)
    counts = np.bincount(labels_of([samples[i] for i in train_index]), minlength=2)
    wanted = int(round(config.synthetic.ratio * max(counts[0] - counts[1], 0)))
    if wanted > len(available):
        raise ValueError(f"{manifest}: {len(available)} synthetic atypical images, fold {fold} needs {wanted}")
    chosen = available[:wanted]
    if any(not s.synthetic for s in chosen):
        raise ValueError(f"{manifest}: rows not marked synthetic; only synthetic images may be mixed in")
    return chosen


def _check_finished_folds(config, split, run_dir, folds) -> None:
    """Every finished fold of `folds` was trained on this split with this config, or nothing is written."""
    for fold in folds:
        fold_dir = run_dir / f"fold_{fold}"
        if (fold_dir / "summary.json").is_file():
            check_finished_fold(fold_dir, split, fold)
            check_same_recipe(fold_dir, config)


def _train_folds(config, samples, images, split, run_dir, folds, show_progress) -> None:
    for fold in folds:
        fold_dir = run_dir / f"fold_{fold}"
        if (fold_dir / "summary.json").is_file():
            print(f"fold {fold}: finished earlier, skipped ({fold_dir})")
            continue
        synthetic = synthetic_for_fold(config, samples, split, fold) if fold != "all" else []
        fold_samples = samples + synthetic
        fold_images = np.concatenate([images, load_images(synthetic)]) if synthetic else images
        train_fold(config, fold_samples, fold_images, split, fold, fold_dir, show_progress=show_progress)


def run_crossval(config: ExperimentConfig, run_dir: Path, *, folds=None, split_path=None,
                 show_progress=True) -> dict | None:
    """Train every fold (or the ones listed) not yet finished, then pool the results (None off rank 0)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    samples = config_samples(config.data)
    split = prepare_split(config, samples, run_dir, split_path)
    folds = list(folds) if folds is not None else list(range(split["n_folds"]))
    _check_finished_folds(config, split, run_dir, folds)
    if _is_main_process():
        save_config(config, run_dir / "config.yaml")
    images = load_images(samples, progress=show_progress, spacing_um=config.data.slides_spacing_um)
    _train_folds(config, samples, images, split, run_dir, folds, show_progress)
    return pool_results(run_dir, samples) if _is_main_process() else None


def pooled_oof(fold_folders) -> dict[str, dict]:
    """Out-of-fold predictions of several members, averaged per sample as scores (logits)."""
    return pool_rows([(Path(folder), read_oof(Path(folder) / "oof_predictions.csv")) for folder in fold_folders])


def pool_rows(rows_by_folder: list[tuple[Path, list[dict]]]) -> dict[str, dict]:
    """Average out-of-fold rows per sample as scores; each run (a folder's parent) may score a sample once.

    Runs on the same split (several backbones) each predict a sample once, and their scores are
    averaged as the exported ensemble averages them. Two folds of one run scoring the same sample
    means folds of different splits, or one fold given twice: refused.
    """
    by_sample = defaultdict(list)
    scored_by = {}
    for folder, rows in rows_by_folder:
        for row in rows:
            key = (folder.resolve().parent, row["sample_id"])
            if key in scored_by:
                raise ValueError(f"sample {row['sample_id']} is scored twice in {key[0]}: by {scored_by[key].name} and "
                                 f"{folder.name} (folds of different splits, or a fold given twice)")
            scored_by[key] = folder
            by_sample[row["sample_id"]].append(row)
    pooled = {}
    for sample_id, rows in by_sample.items():
        score = float(np.mean([r["score"] for r in rows]))
        pooled[sample_id] = {**rows[0], "score": score, "probability": float(expit(score))}
    return pooled


def pooled_arrays(pooled: dict[str, dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, folds as strings) of pooled out-of-fold rows, in their order."""
    rows = list(pooled.values())
    return (np.array([r["label"] for r in rows]), np.array([r["probability"] for r in rows]),
            np.array([str(r["fold"]) for r in rows]))


def oof_metrics(pooled: dict[str, dict], samples=None, threshold: float | None = None) -> dict:
    """Metrics of pooled out-of-fold predictions at `threshold` (None: the one maximising balanced accuracy)."""
    rows = list(pooled.values())
    labels, probabilities, folds = pooled_arrays(pooled)
    threshold = best_threshold(labels, probabilities) if threshold is None else float(threshold)
    per_fold = {fold: binary_metrics(labels[folds == fold], probabilities[folds == fold], threshold)
                for fold in sorted(set(folds))}
    aucs = [m["roc_auc"] for m in per_fold.values()]
    result = {
        "n": int(len(rows)),
        "n_atypical": int(labels.sum()),
        "threshold": threshold,
        "at_threshold": binary_metrics(labels, probabilities, threshold),
        "at_0_5": binary_metrics(labels, probabilities, 0.5),
        "threshold_chosen_on_other_folds": cross_validated_threshold_metrics(labels, probabilities, folds),
        "per_fold": per_fold,
        "roc_auc_fold_mean": float(np.mean(aucs)),
        "roc_auc_fold_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan"),
    }
    if samples is not None:
        result["per_domain"] = _per_domain(rows, labels, probabilities, threshold, samples)
    return result


def _per_domain(rows, labels, probabilities, threshold, samples) -> dict:
    """Metrics per value of each domain key (e.g. dataset), at the pooled threshold."""
    domain_of = {s.sample_id: s.domain for s in samples}
    out = {}
    for key in sorted({k for s in samples for k in s.domain}):
        values = np.array([domain_of[r["sample_id"]].get(key, "?") for r in rows])
        if len(set(values)) > 1:
            out[key] = {v: binary_metrics(labels[values == v], probabilities[values == v], threshold)
                        for v in sorted(set(values))}
    return out


def pool_results(run_dir: Path, samples=None) -> dict:
    """Write the run's pooled oof_predictions.csv, results.json and report; return the results."""
    run_dir = Path(run_dir)
    folders = fold_dirs(run_dir)
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no finished fold (fold_*/summary.json)")
    pooled = pooled_oof(folders)
    with (run_dir / "oof_predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OOF_COLUMNS)
        writer.writerows([[row[c] for c in OOF_COLUMNS] for row in pooled.values()])
    results = {"folds": [p.name for p in folders], "oof": oof_metrics(pooled, samples),
               "train": [json.loads((p / "summary.json").read_text()) for p in folders]}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(run_dir)
    return results
