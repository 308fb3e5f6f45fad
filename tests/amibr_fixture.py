"""A tiny dataset in AMi-Br's layout (AMI-BR.csv + patches/{atypical,normal}/), made by the tests.

Atypical patches get a dark centre and normal ones a light centre, so that a network can learn
something in one epoch; slides are named so that tests can check grouping.
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ["", "slide", "dataset", "uid", "x", "y", "expert1_label", "expert2_label",
           "expert1_atypical", "expert2_atypical", "expert3_atypical", "majority_atypical"]


def make_patch(rng: np.random.Generator, atypical: bool, size: int = 128) -> np.ndarray:
    """A pink noisy patch with a dark (atypical) or mid-grey (normal) blob in the middle."""
    patch = rng.normal((220, 170, 200), 12, size=(size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    blob = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 6) ** 2
    patch[blob] = (40, 20, 80) if atypical else (150, 110, 170)
    return patch.clip(0, 255).astype(np.uint8)


def write_amibr(root: Path, *, n_slides: int = 8, per_slide: int = 6, seed: int = 0, size: int = 128) -> Path:
    """Write the dataset (size x size patches) under `root`; every slide holds both classes. Returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for label in ("atypical", "normal"):
        (root / "patches" / label).mkdir(parents=True, exist_ok=True)
    rows, uid = [], 0
    for slide in range(n_slides):
        dataset = "MIDOG21" if slide % 2 else "TUPAC16"
        for index in range(per_slide):
            atypical = index % 3 == 0
            Image.fromarray(make_patch(rng, atypical, size)).save(
                root / "patches" / ("atypical" if atypical else "normal") / f"{dataset}_{uid}.png")
            rows.append([uid, f"slide_{slide:02d}.tif", dataset, uid, 100, 100, "x", "x",
                         atypical, atypical, atypical, atypical])
            uid += 1
    with (root / "AMI-BR.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return root


def train_and_export(work: Path, name: str, **config_changes) -> tuple[Path, Path]:
    """(run folder, model folder) of a 2-fold, 1-epoch run of the CLI on a 6-slide dataset, exported as `name`."""
    import yaml

    from training.cli import main as training_cli

    data_root = write_amibr(work / "amibr", n_slides=6, per_slide=8)
    config = {
        "name": name, "backbone": "resnet10t_slim", "input_crop": 64,
        "data": {"kind": "amibr", "root": str(data_root)},
        "split": {"n_folds": 2, "seed": 0},
        "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2},
        **config_changes,
    }
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir, model_dir = work / "run", work / "model"
    assert training_cli(["train", "--config", str(config_path), "--out", str(run_dir), "--quiet"]) == 0
    assert training_cli(["export", str(run_dir), "--out", str(model_dir), "--name", name]) == 0
    return run_dir, model_dir
