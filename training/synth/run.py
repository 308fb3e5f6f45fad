"""A generator run folder: one config, one split, one sub-folder per fold.

Layout (`runs/synth/<name>/` by default):
    config.yaml  split.json                 resolved config; the classifier run's split, copied
    fold_<k>/vae/                           the fold's VAE (or a pointer to a pretrained one)
    fold_<k>/pretrain/  fold_<k>/finetune/  DiT stages: checkpoints, metrics.csv, config.yaml, provenance.json
    fold_<k>/latents.safetensors            the fold's encoded training patches (shared by both DiT stages)
    fold_<k>/manifest.csv  images/  sample.json   the balance set, where training.crossval looks for it
    fold_<k>/quality/                       quality.json, quality.md, gallery.png, gallery_synthetic.png
A run folder holds one config: opening it with another is refused, so its folds stay comparable.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.splits import load_split, save_split
from training.synth.config import SynthConfig, config_text, save_synth_config, synth_config_from_dict
from training.synth.data import FoldData, check_fold, read_fold_data


@dataclass
class GeneratorRun:
    """An opened run folder: its resolved config, its split, and per-fold data on demand."""

    config: SynthConfig
    root: Path
    split: dict
    _fold_data: dict = field(default_factory=dict, repr=False)

    def fold_dir(self, fold) -> Path:
        return self.root / f"fold_{check_fold(self.split, fold)}"

    def fold_data(self, fold) -> FoldData:
        fold = check_fold(self.split, fold)
        if fold not in self._fold_data:
            self._fold_data[fold] = read_fold_data(self.config, self.split, fold)
        return self._fold_data[fold]


def open_run(config: SynthConfig, root: Path, split_path: Path | None = None) -> GeneratorRun:
    """Create or reopen `root` for `config`; the split comes from `split_path`, the config or the folder."""
    root = Path(root)
    source = Path(split_path) if split_path else Path(config.split) if config.split else None
    saved = root / "split.json"
    if source is not None and not source.is_file():
        raise FileNotFoundError(f"{source}: no such split file (the classifier run's split.json)")
    if source is None and not saved.is_file():
        raise FileNotFoundError("no split given: pass --split runs/<classifier run>/split.json (or set `split:` in the "
                                "config); the generator of fold k must leave out fold k of the classifier's own split")
    split = load_split(source) if source is not None else load_split(saved)
    if saved.is_file() and load_split(saved) != split:
        raise ValueError(f"{saved}: this run folder was made with another split than {source}; use another --out")
    saved_config = root / "config.yaml"
    if saved_config.is_file():  # the split's content was compared above; its path is the one first given
        config.split = yaml.safe_load(saved_config.read_text()).get("split")
        if saved_config.read_text() != config_text(config):
            raise ValueError(f"{saved_config}: this run folder holds another config; use another --out, "
                             f"or delete the folder to start over")
    else:
        config.split = str(source)
    root.mkdir(parents=True, exist_ok=True)
    save_split(split, saved)
    save_synth_config(config, root / "config.yaml")
    return GeneratorRun(config=config, root=root, split=split)


def load_run(root: Path) -> GeneratorRun:
    """Reopen a run folder made by open_run (for sampling and quality reports)."""
    root = Path(root)
    for required in ("config.yaml", "split.json"):
        if not (root / required).is_file():
            raise FileNotFoundError(f"{root}: not a generator run folder ({required} missing); "
                                    f"train one with `synth train-vae`/`synth all` first")
    config = synth_config_from_dict(yaml.safe_load((root / "config.yaml").read_text()), str(root / "config.yaml"))
    return GeneratorRun(config=config, root=root, split=load_split(root / "split.json"))
