"""Generator configuration: one YAML per generator size, parsed once into dataclasses.

The same habits as training/config.py (timm's `args.yaml`, nanoGPT's plain-data model args):
unknown keys are an error, and every stage saves the resolved config next to its results.
Shipped configs live in training/synth/configs/ (`synth_cpu`, `synth_gpu`).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.config import DataConfig, build_dataclass, config_path

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    """One training stage's optimisation: AdamW, linear warm-up then constant or cosine, EMA.

    `ema_decay` 0 keeps no EMA copy; with EMA the decay warms up (diffusers' EMAModel, power 3/4)
    and the EMA weights are the ones sampled from (DiT's `find_model` prefers "ema").
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"  # "constant" or "cosine" after the warm-up
    grad_clip: float = 1.0  # 0: no clipping
    ema_decay: float = 0.9999
    log_every: int = 50  # steps per row of metrics.csv
    checkpoint_every: int = 200  # steps between resume points


@dataclass
class VAEConfig:
    """The latent space: a pretrained AutoencoderKL from a local folder, or one trained per fold.

    `pretrained` names a folder in diffusers' `save_pretrained` layout (e.g. a local copy of an SD
    VAE such as stabilityai/sd-vae-ft-ema); it must not have been trained on the evaluation data.
    Otherwise a small AutoencoderKL is trained from scratch for each fold on that fold's
    pre-training images, on random `crop` x `crop` pieces (it is convolutional, so it then encodes
    whole patches). Loss: L1 reconstruction + `kl_weight` x KL, and with `adversarial_weight` > 0 a
    patch discriminator's hinge loss from step `adversarial_start` on, weighted adaptively as in
    latent diffusion's autoencoder (trainer.adversarial_weight). No perceptual (LPIPS) term: its
    network would need downloaded weights. Without the adversarial term reconstructions are smoother
    than an SD VAE's (an L1 loss rewards the blur that averages what it cannot place).
    """

    pretrained: str | None = None
    block_out_channels: list = field(default_factory=lambda: [32, 64, 128, 128])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    crop: int = 64
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0  # 0: no discriminator; latent diffusion's autoencoders use 0.5
    adversarial_start: int = 0  # VAE step the discriminator starts at (after the L1 loss has settled)
    discriminator_channels: int = 64
    discriminator_layers: int = 2  # each patch logit sees 34 px at 2 layers (networks.PatchDiscriminator)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, batch_size=16, lr=2e-4, warmup_steps=100, ema_decay=0.0))


@dataclass
class DiTConfig:
    """The class-conditional diffusion transformer: a variant from networks.DIT_VARIANTS."""

    variant: str = "DiT-T/2"
    class_dropout: float = 0.1  # fine-tuning: share of labels replaced by the null class (for guidance)
    # fine-tuning: the class embeddings' learning rate as a multiple of the stage's. Under Adam an
    # embedding row moves about lr per step, while the timestep MLP it is added to grows with its
    # fan-in: at 1x, after pre-training the timestep term is ~100x the class term and a short
    # fine-tuning leaves the class without visible effect (docs/synthesis.md, "The class that did nothing").
    label_lr_scale: float = 30.0
    # fine-tuning: draw each class equally often (atypical figures are a fifth of the patches, so
    # plain draws show the atypical class embedding a fifth as many examples)
    balanced_batches: bool = False


@dataclass
class DiffusionConfig:
    """The noise process (diffusers schedulers) and the default sampler settings."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # DiT's: linear betas 1e-4 .. 0.02
    prediction_type: str = "epsilon"  # or "v_prediction"
    sampler: str = "dpm"  # "dpm" (DPM-Solver++), "ddim" or "ddpm"; see diffusion.SAMPLERS
    steps: int = 20
    guidance: float = 2.0  # classifier-free guidance scale; 1 = none


@dataclass
class SampleConfig:
    """Balance sets: how many synthetic atypical images each fold gets, and how they are drawn."""

    ratio: float = 1.0  # times the fold's training gap n_normal - n_atypical
    batch_size: int = 64
    seed: int = 0


@dataclass
class QualityConfig:
    """How many synthetic images per class the quality report compares with the real ones."""

    n_per_class: int = 200
    gallery_columns: int = 8


@dataclass
class SynthConfig:
    """Everything that defines one generator; saved, resolved, in its run folder.

    `split` is the classifier run's split JSON: the generator for fold k is trained without fold
    k's validation slides of that very split. `extra_pretrain_data` lists further datasets
    ({kind, root[, slides]}) for the pre-training stage and the VAE only; they are assumed
    disjoint from the evaluation data (they are checked for shared slide names and files).
    """

    name: str = "synth"
    data: DataConfig = field(default_factory=DataConfig)
    split: str | None = None
    extra_pretrain_data: list = field(default_factory=list)
    image_size: int = 128
    views: list = field(default_factory=lambda: ["identity", "vflip", "hflip", "rot180"])
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    seed: int = 0
    threads: int = 0  # 0: every core this process may use
    device: str = "auto"  # "auto": CUDA when present, else CPU
    amp: bool = True  # bfloat16 autocast, on CUDA only


def synth_config_from_dict(values: dict, where: str = "synth config") -> SynthConfig:
    """A SynthConfig from plain data (as read from YAML); extra datasets become DataConfigs."""
    config = build_dataclass(SynthConfig, values, where)
    config.extra_pretrain_data = [
        entry if isinstance(entry, DataConfig) else build_dataclass(DataConfig, entry, f"{where}.extra_pretrain_data[{i}]")
        for i, entry in enumerate(config.extra_pretrain_data)]
    return config


def load_synth_config(name_or_path: str) -> SynthConfig:
    """Read a config by path, or by name from training/synth/configs/."""
    path = config_path(name_or_path, CONFIG_DIR, "generator config")
    return synth_config_from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path))


def config_text(config: SynthConfig) -> str:
    """The resolved config as YAML text (also what resume points compare)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def save_synth_config(config: SynthConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(config_text(config))
