"""Which real images each stage of fold k's generator may see, and the record that proves it.

The rule (no leakage): every stage of the generator that makes images for fold k (its VAE,
pre-training and fine-tuning) is trained without fold k's validation slides of the classifier
run's split. Pre-training and the VAE take every real patch of the dataset outside those slides
plus any extra datasets the config names (assumed disjoint from the evaluation data; shared slide
names or files are refused); fine-tuning takes fold k's labelled training part. Each stage writes
`provenance.json` with the fold's fingerprint (a hash of its validation ids and slides), and every
later stage refuses an upstream stage whose fingerprint differs.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.data import Sample, config_samples, read_dataset
from training.splits import fold_fingerprint, fold_indices

PROVENANCE_FILE = "provenance.json"
# What every stage's provenance records as the code that made it; a stage made by another version
# is refused. 2: fine-tuning starts the class embeddings at the null one and trains them faster
# (before, version 1 or no field, the class label had no visible effect on the images).
GENERATOR_VERSION = 2


def to_model_range(patches: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return patches.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) numpy."""
    pixels = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def check_fold(split: dict, fold) -> int:
    """`fold` as an int, or a ValueError naming the folds the split has."""
    n_folds = len(split["folds"])
    try:
        fold = int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold {fold!r} is not a fold number (the split has folds 0..{n_folds - 1})") from None
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} is not in the split (it has folds 0..{n_folds - 1})")
    return fold


@dataclass
class FoldData:
    """The real images of one fold, by what may use them.

    `pretrain`: VAE and DiT pre-training (unlabelled use); `finetune`: class-conditional training;
    `validation`: fold k's held-out part, only ever compared with (quality report).
    """

    fold: int
    fingerprint: str
    pretrain: list
    finetune: list
    validation: list
    datasets: list

    def describe(self, stage_samples: list) -> dict:
        """Plain data for provenance.json: what the stage saw and what it was kept from."""
        labels = np.bincount([s.label for s in stage_samples], minlength=2)
        return {"fold": self.fold, "split_fingerprint": self.fingerprint, "datasets": self.datasets,
                "n_images": len(stage_samples), "n_normal": int(labels[0]), "n_atypical": int(labels[1]),
                "n_slides": len({s.slide for s in stage_samples}),
                "excluded_validation_slides": len({s.slide for s in self.validation}),
                "excluded_validation_images": len(self.validation)}


def check_disjoint(samples: list, validation: list, where: str) -> None:
    """Refuse samples that share a slide name or an image file with the validation part."""
    val_slides = {s.slide for s in validation}
    val_files = {Path(s.path).resolve() for s in validation}
    leaking = [s for s in samples if s.slide in val_slides or Path(s.path).resolve() in val_files]
    if leaking:
        raise ValueError(f"{where}: {len(leaking)} images come from the fold's validation slides or files "
                         f"(e.g. {leaking[0].sample_id} of slide {leaking[0].slide}); the generator must not see them")


def read_fold_data(config, split: dict, fold: int) -> FoldData:
    """Fold `fold`'s pre-training, fine-tuning and validation images under the no-leakage rule."""
    fold = check_fold(split, fold)
    samples = config_samples(config.data)
    train_index, val_index = fold_indices(split, samples, fold)
    validation = [samples[i] for i in val_index]
    finetune = [samples[i] for i in train_index if not samples[i].synthetic]
    check_disjoint(finetune, validation, f"{config.data.root}")
    datasets = [{"kind": config.data.kind, "root": str(config.data.root), "use": "outside the fold's validation slides"}]
    extra: list[Sample] = []
    for entry in config.extra_pretrain_data:
        found = [s for s in read_dataset(entry.kind, entry.root, slides=entry.slides) if not s.synthetic]
        check_disjoint(found, validation, f"extra pre-training data {entry.root}")
        extra += found
        datasets.append({"kind": entry.kind, "root": str(entry.root), "use": "all (assumed disjoint from evaluation)"})
    return FoldData(fold=fold, fingerprint=fold_fingerprint(split, fold), pretrain=finetune + extra,
                    finetune=finetune, validation=validation, datasets=datasets)


def write_provenance(stage_dir: Path, record: dict) -> None:
    """Write a stage's provenance.json, stamped with this code's GENERATOR_VERSION."""
    record = {**record, "generator_version": GENERATOR_VERSION}
    (Path(stage_dir) / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def check_generator_version(path: Path, record: dict) -> None:
    """Refuse a stage (its provenance `record`, read from `path`) made by another version of this code."""
    version = record.get("generator_version", 1)
    if version != GENERATOR_VERSION:
        raise ValueError(f"{path}: made by generator version {version}, this code is version {GENERATOR_VERSION} "
                         f"(fine-tuning now makes the class label count); delete {Path(path).parent.parent} "
                         f"and train this fold's generator again")


def read_provenance(stage_dir: Path, fold_data: FoldData, stage: str) -> dict:
    """An upstream stage's provenance, checked against this fold; a clear error when it is missing or foreign."""
    path = Path(stage_dir) / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{stage_dir}: no finished {stage} stage ({PROVENANCE_FILE} missing); "
                                f"run `synth {'train-vae' if stage == 'vae' else stage}` for fold {fold_data.fold} first")
    record = json.loads(path.read_text())
    check_generator_version(path, record)
    if record.get("source") == "pretrained":
        return record  # a VAE from elsewhere, declared disjoint from the evaluation data by the config
    if record.get("fold") != fold_data.fold or record.get("split_fingerprint") != fold_data.fingerprint:
        raise ValueError(f"{path}: made for fold {record.get('fold')} of another split (fingerprint "
                         f"{str(record.get('split_fingerprint'))[:12]}), not fold {fold_data.fold} of this one "
                         f"({fold_data.fingerprint[:12]}); it may have seen this fold's validation slides")
    return record
