"""Experiment configuration: one YAML file per experiment, parsed once into dataclasses.

Follows timm's `train.py` (the resolved arguments are saved as `config.yaml` next to the results)
and nanoGPT (architecture arguments as plain data). Unknown keys are an error, so a typo in a
config cannot silently fall back to a default.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.augment import AugmentConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Which dataset to read (a kind from training.data.READERS) and where it lies."""

    kind: str = "amibr"
    root: str = "../shared/data/amibr-dev"


@dataclass
class SplitConfig:
    """Slide-grouped k-fold cross-validation."""

    n_folds: int = 5
    seed: int = 0


@dataclass
class OptimConfig:
    """Optimiser, schedule and the loop's own settings."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    ema_decay: float = 0.995  # 0 disables the exponential moving average of weights
    class_weighting: str = "balanced"  # "balanced": inverse class frequency in the loss; "none"
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int = 0  # 0: every core this process may use


@dataclass
class ExperimentConfig:
    """Everything that defines one experiment; saved, resolved, with its results."""

    name: str = "experiment"
    backbone: str = "resnet10t_slim"
    input_crop: int | None = None  # centre crop (pixels) fed to the network; None: the whole patch
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta_views: list = field(default_factory=lambda: ["identity", "vflip"])


def _build(cls, values: dict, where: str):
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclasses."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict, where: str = "config") -> ExperimentConfig:
    """An ExperimentConfig from plain data (as read from YAML)."""
    return _build(ExperimentConfig, values, where)


def load_config(name_or_path: str) -> ExperimentConfig:
    """Read a config by path, or by name from training/configs/."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config {name_or_path!r} (a YAML path, or one of: {known})")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path))


def save_config(config: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
