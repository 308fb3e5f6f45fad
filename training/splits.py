"""Cross-validation splits grouped by slide, computed once from a seed and saved as JSON.

Follows nnU-Net's `do_split`: the split is data, not a side effect of training; every fold of every
experiment on the same dataset reads the same file, so out-of-fold predictions of different
backbones line up sample by sample. No slide is ever in both the training and validation part of
a fold (patches of one slide share staining, scanner and often the same tumour region).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from training.data import Sample, labels_of


def _fold_entry(fold: int, samples: list[Sample], val_index) -> dict:
    return {
        "fold": fold,
        "val_slides": sorted({samples[i].slide for i in val_index}),
        "val_ids": sorted(samples[i].sample_id for i in val_index),
    }


def make_split(samples: list[Sample], *, n_folds: int = 5, seed: int = 0, stratify: str | None = None) -> dict:
    """k folds grouped by slide, stratified by label (and by the domain key `stratify`), as plain data."""
    real = [s for s in samples if not s.synthetic]
    slides = [sample.slide for sample in real]
    n_slides = len(set(slides))
    if n_slides < n_folds:
        raise ValueError(f"{n_slides} slides cannot make {n_folds} slide-disjoint folds")
    strata = labels_of(real).astype(str)
    if stratify:
        strata = np.array([f"{label}|{s.domain.get(stratify, '?')}" for label, s in zip(strata, real)])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = [_fold_entry(fold, real, val_index)
             for fold, (_, val_index) in enumerate(splitter.split(np.zeros(len(real)), strata, slides))]
    return {"n_folds": n_folds, "seed": seed, "group": "slide",
            "stratify": "label" + (f" + {stratify}" if stratify else ""), "folds": folds}


def make_domain_split(samples: list[Sample], key: str) -> dict:
    """Leave-one-domain-out: one fold per value of domain `key`, validating on all of that domain."""
    real = [s for s in samples if not s.synthetic]
    values = sorted({s.domain.get(key) for s in real} - {None})
    if len(values) < 2:
        raise ValueError(f"domain key {key!r} has {len(values)} value(s); leave-one-out needs at least 2")
    folds = []
    for fold, value in enumerate(values):
        entry = _fold_entry(fold, real, [i for i, s in enumerate(real) if s.domain.get(key) == value])
        folds.append({**entry, "left_out": {key: value}})
    crossing = set.intersection(*(set(f["val_slides"]) for f in folds)) if len(folds) > 1 else set()
    if crossing:
        raise ValueError(f"slides {sorted(crossing)[:3]} hold more than one {key}; folds would share slides")
    return {"n_folds": len(folds), "seed": None, "group": f"domain {key}", "stratify": None, "folds": folds}


def split_for(samples: list[Sample], split_config) -> dict:
    """The split a SplitConfig asks for: leave-one-domain-out when `leave_out` is set, else k-fold."""
    if split_config.leave_out:
        return make_domain_split(samples, split_config.leave_out)
    return make_split(samples, n_folds=split_config.n_folds, seed=split_config.seed, stratify=split_config.stratify)


def save_split(split: dict, path: Path) -> None:
    """Write the split JSON (atomically: a crash leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(split, indent=1) + "\n")
    scratch.replace(path)


def load_split(path: Path) -> dict:
    """Read a split written by save_split."""
    return json.loads(Path(path).read_text())


def fold_fingerprint(split: dict, fold: int) -> str:
    """sha256 of fold `fold`'s validation ids and slides: equal fingerprints, equal held-out data."""
    entry = split["folds"][int(fold)]
    payload = json.dumps({"val_ids": sorted(entry["val_ids"]), "val_slides": sorted(entry["val_slides"])})
    return hashlib.sha256(payload.encode()).hexdigest()


def split_fingerprint(split: dict) -> str:
    """sha256 of every fold's fingerprint, in fold order: equal fingerprints, the same split of the same samples."""
    payload = json.dumps([fold_fingerprint(split, fold) for fold in range(len(split["folds"]))])
    return hashlib.sha256(payload.encode()).hexdigest()


def slide_digest(slide: str) -> str:
    """A short sha256 of a slide's name: model.json can say which slides trained it without naming them."""
    return hashlib.sha256(str(slide).encode()).hexdigest()[:16]


def fold_indices(split: dict, samples: list[Sample], fold: int | str) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into `samples` for `fold`; fold "all" trains on everything.

    Synthetic samples only ever enter training. Raises if the split names samples the dataset lacks.
    """
    if fold == "all":
        real = np.array([i for i, s in enumerate(samples) if not s.synthetic], dtype=np.int64)
        return real, np.array([], dtype=np.int64)
    entry = split["folds"][int(fold)]
    val_ids = set(entry["val_ids"])
    known = {sample.sample_id for sample in samples if not sample.synthetic}
    unknown = val_ids - known
    if unknown:
        raise ValueError(f"split names {len(unknown)} samples the dataset lacks, e.g. {sorted(unknown)[0]}")
    val_slides = set(entry["val_slides"])
    train, val = [], []
    for index, sample in enumerate(samples):
        if sample.sample_id in val_ids and not sample.synthetic:
            val.append(index)
        elif sample.slide not in val_slides:
            train.append(index)
    return np.array(train, dtype=np.int64), np.array(val, dtype=np.int64)
