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
from training.lora import LoraConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Which dataset to read (a kind from training.data.READERS) and where it lies."""

    kind: str = "amibr"
    root: str = "data/amibr-dev"
    slides: str | None = None  # midog25 only: folder of original images to cut patches from
    slides_spacing_um: float | None = None  # their microns per pixel, when not about 0.25 (resampled)
    exclude_slides: list = field(default_factory=list)  # slides never read: held out of everything (threshold-transfer)


@dataclass
class SplitConfig:
    """Slide-grouped k-fold cross-validation, or leave-one-domain-out folds.

    `stratify` names a domain key (e.g. tumor) to balance across folds besides the label;
    `leave_out` names a domain key whose every value becomes one validation fold (n_folds is then
    the number of values).
    """

    n_folds: int = 5
    seed: int = 0
    stratify: str | None = None
    leave_out: str | None = None


@dataclass
class SyntheticConfig:
    """Synthetic atypical figures mixed into training (the synthetic-balanced variant).

    `dir` holds one generator's output per fold, `<dir>/fold_<k>/manifest.csv` (a generator that
    made images for fold k never saw fold k's validation slides). Each fold adds `ratio` times the
    gap between its normal and atypical training counts (1.0: balanced classes).
    """

    dir: str | None = None
    ratio: float = 1.0


@dataclass
class OptimConfig:
    """Optimiser, schedule, loss and the loop's own settings."""

    epochs: int = 30
    batch_size: int = 64  # per process; with torchrun the global batch is this times the processes
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None  # timm's layer-wise lr decay (e.g. 0.75 for ViT fine-tuning)
    warmup_epochs: int = 1
    ema_decay: float = 0.995  # 0 disables the exponential moving average of weights
    loss: str = "ce"  # "ce": cross-entropy; "focal": focal loss (Lin et al., ICCV 2017)
    focal_gamma: float = 2.0
    class_weighting: str = "balanced"  # "balanced": inverse class frequency in the loss; "none"
    # "balanced": each sample's loss also weighted by the inverse frequency of its domain (the value
    # of domain_key, e.g. tumor) in the training part: the winner's domain-weighted loss; "none"
    domain_weighting: str = "none"
    domain_key: str = "tumor"
    grad_checkpointing: bool = False  # recompute block activations in the backward pass (large ViTs)
    sampler: str = "uniform"  # "uniform": each patch once per epoch; "balanced": classes drawn equally often
    label_smoothing: float = 0.0
    early_stopping_patience: int = 0  # >0: stop after this many epochs without a better validation ROC AUC
    amp: bool = True  # bfloat16 autocast, on CUDA only
    seed: int = 0
    threads: int = 0  # 0: every core this process may use
    device: str = "auto"  # "auto": CUDA when present, else CPU
    tensorboard: bool = True


@dataclass
class ExperimentConfig:
    """Everything that defines one experiment; saved, resolved, with its results."""

    name: str = "experiment"
    backbone: str = "resnet10t_slim"
    pretrained: bool = False  # start from the backbone's hub weights (needs internet; see `weights`)
    weights: str | None = None  # start from a local weight file or folder instead
    backbone_kwargs: dict = field(default_factory=dict)  # over the backbone's timm kwargs (e.g. depth for timm:<arch>)
    input_crop: int | None = None  # centre crop (pixels) fed to the network; None: the whole patch
    stain_norm: str = "none"  # "reinhard": each patch's Lab mean/std moved to its training fold's (training/stain.py)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tta_views: list = field(default_factory=lambda: ["identity", "vflip"])
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank > 0: LoRA adapters on the `weights` (training/lora.py)
    # "majority": the experts' majority label is the target; "soft": the share of experts voting
    # atypical, as the target of a binary cross-entropy (metrics are always against the majority)
    labels: str = "majority"


def build_dataclass(cls, values: dict, where: str):
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
            kwargs[name] = build_dataclass(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def with_overrides(config, overrides: dict):
    """A copy of dataclass `config` with dotted fields replaced (`{"data.root": ..., "optim.epochs": ...}`).

    None means "not given" and changes nothing, so command-line options pass straight through.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        head, _, rest = dotted.partition(".")
        inner = with_overrides(getattr(config, head), {rest: value}) if rest else value
        config = dataclasses.replace(config, **{head: inner})
    return config


# Fields that say where or how a run executes, not what it trains: a finished or interrupted fold may
# be reused under other values (another machine's path to the same data, thread count or device)
RUN_LOCAL_FIELDS = ("data.root", "optim.threads", "optim.device", "optim.tensorboard")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_differences(recorded: ExperimentConfig, current: ExperimentConfig) -> list[str]:
    """The fields (dotted) in which two configs train differently, as 'field: recorded -> current'."""
    old, new = _flat(dataclasses.asdict(recorded)), _flat(dataclasses.asdict(current))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if key not in RUN_LOCAL_FIELDS and old.get(key) != new.get(key)]


def config_from_dict(values: dict, where: str = "config") -> ExperimentConfig:
    """An ExperimentConfig from plain data (as read from YAML)."""
    return build_dataclass(ExperimentConfig, values, where)


def config_path(name_or_path: str, config_dir: Path, what: str = "config") -> Path:
    """A YAML path as given, or `<config_dir>/<name>.yaml`; the error lists the names there."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(config_dir) / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(config_dir).glob("*.yaml")))
        raise FileNotFoundError(f"no {what} {name_or_path!r} (a YAML path, or one of: {known})")
    return path


def load_config(name_or_path: str) -> ExperimentConfig:
    """Read a config by path, or by name from training/configs/."""
    path = config_path(name_or_path, CONFIG_DIR)
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path))


def save_config(config: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
