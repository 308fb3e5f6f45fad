"""Training loops of one fold's generator: its VAE, then DiT pre-training and fine-tuning.

The two DiT stages follow the paper's recipe (arXiv 2509.02612): pre-train on every mitotic-figure
patch available, then fine-tune class-conditionally on the training data. Pre-training here is
class-agnostic (every label is the null class): it learns what a mitotic figure looks like from
data whose atypical labels may be missing, and it trains exactly the unconditional branch that
classifier-free guidance uses; fine-tuning starts from its EMA weights and learns the classes,
still dropping 10 % of labels to the null class. Fine-tuning starts each class embedding at the
trained null one and trains the class embeddings `dit.label_lr_scale` times faster than the rest:
without both, the class had no visible effect (docs/synthesis.md).

Every stage is a folder (`vae/`, `pretrain/`, `finetune/`) with its resolved `config.yaml`,
`provenance.json` (data.py), `metrics.csv` (one row per `log_every` steps), `summary.json` when
finished, and `resume.pt` while unfinished: a stage killed midway continues from its last resume
point and ends with the same weights as an uninterrupted run, because every random draw of step s
comes from a generator seeded with (seed, stage, s) and the optimiser, schedule and EMA states are
saved. DiT weights are safetensors (`model.safetensors` raw, `ema.safetensors` averaged) with
`model_args.json` as plain data; the VAE is saved in diffusers' `save_pretrained` layout.
"""

import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from inference.model import sha256_of
from training.augment import dihedral
from training.checkpoints import clear_resume, load_resume, save_resume, write_metrics_csv
from training.data import load_images
from training.ensemble import VIEWS
from training.synth.config import SynthConfig, TrainConfig, config_text, save_synth_config
from training.synth.data import FoldData, read_provenance, to_model_range, write_provenance
from training.synth.diffusion import create_diffusion
from training.synth.networks import (LatentCodec, PatchDiscriminator, create_dit, create_vae, dit_args,
                                     import_diffusers, load_vae)

SUMMARY_FILE = "summary.json"
STAGE_IDS = {"vae": 1, "pretrain": 2, "finetune": 3}


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The CPU generator of every random draw of one step: a resumed run draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + STAGE_IDS[stage]) * 1_000_003 + step)


class _Optimisation:
    """AdamW, a warm-up schedule and (optionally) diffusers' EMAModel over one network.

    Args:
        network: the module trained.
        train: the stage's TrainConfig.
        faster: parameters that learn at `faster_scale` x the stage's learning rate (the schedule
            scales both groups alike).
    """

    def __init__(self, network: torch.nn.Module, train: TrainConfig, faster=(), faster_scale: float = 1.0):
        diffusers = import_diffusers()
        from diffusers.training_utils import EMAModel

        if train.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {train.schedule!r}")
        if faster_scale <= 0:
            raise ValueError(f"a learning-rate scale must be positive, got {faster_scale}")
        self.network, self.train = network, train
        chosen = {id(p) for p in faster}
        groups = [{"params": [p for p in network.parameters() if id(p) not in chosen]}]
        if chosen:
            groups.append({"params": [p for p in network.parameters() if id(p) in chosen], "lr": train.lr * faster_scale})
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
        self.schedule = diffusers.optimization.get_scheduler(
            f"{train.schedule}_with_warmup" if train.schedule == "constant" else "cosine", self.optimizer,
            num_warmup_steps=train.warmup_steps, num_training_steps=train.steps)
        self.ema = (EMAModel(network.parameters(), decay=train.ema_decay, use_ema_warmup=True, power=0.75, foreach=True)
                    if train.ema_decay else None)
        self.step = 0
        self.companions = {}  # name -> object with state_dict()/load_state_dict(), saved in resume points too

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.train.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.step(self.network.parameters())
        self.step += 1

    def averaged(self) -> torch.nn.Module:
        """A copy of the network holding the EMA weights (the network itself without EMA)."""
        if self.ema is None:
            return self.network
        averaged = copy.deepcopy(self.network)
        self.ema.copy_to(averaged.parameters())
        return averaged

    def state(self) -> dict:
        return {"step": self.step, "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "companions": {name: part.state_dict() for name, part in self.companions.items()}}

    def restore(self, state: dict) -> None:
        self.step = state["step"]
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name, part in self.companions.items():
            part.load_state_dict(state["companions"][name])


def _save_resume(stage_dir: Path, optimisation: _Optimisation, history: list, window: list, text: str) -> None:
    save_resume(stage_dir, {**optimisation.state(), "history": history, "window": window, "config": text})


def _load_resume(stage_dir: Path, optimisation: _Optimisation, text: str) -> dict:
    state = load_resume(stage_dir, device="cpu", checks={
        "config": (text, "left by a run with another config; delete it to train this stage afresh")})
    if not state:
        return {}
    optimisation.restore(state)
    print(f"{stage_dir}: resuming after step {optimisation.step}")
    return state


def run_steps(optimisation: _Optimisation, next_loss, stage_dir: Path, text: str, *, autocast, show_progress: bool,
              batch_size: int) -> list:
    """The step loop: `next_loss(step)` -> loss, logging, resume points; returns the metrics rows."""
    train = optimisation.train
    resume = _load_resume(stage_dir, optimisation, text)
    history, window = resume.get("history", []), resume.get("window", [])
    last = time.perf_counter()
    with tqdm(total=train.steps, initial=optimisation.step, desc=f"{stage_dir.parent.name}/{stage_dir.name}",
              unit="step", disable=not show_progress, dynamic_ncols=True) as progress:
        while optimisation.step < train.steps:
            optimisation.network.train()
            with autocast:
                loss = next_loss(optimisation.step)
            optimisation.update(loss)
            window.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{np.mean(window[-20:]):.4f}", refresh=False)
            step = optimisation.step
            if step % train.log_every == 0 or step == train.steps:
                seconds = time.perf_counter() - last
                history.append({"step": step, "lr": optimisation.optimizer.param_groups[0]["lr"],
                                "loss": float(np.mean(window)), "seconds": seconds,
                                "images_per_second": len(window) * batch_size / max(seconds, 1e-9)})
                write_metrics_csv(stage_dir / "metrics.csv", history)
                window, last = [], time.perf_counter()
            if step % train.checkpoint_every == 0 and step < train.steps:
                _save_resume(stage_dir, optimisation, history, window, text)
                last = time.perf_counter()
    return history


def _autocast(config: SynthConfig, device: torch.device):
    if config.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _begin_stage(config: SynthConfig, stage_dir: Path, fold_data: FoldData, samples: list, stage: str) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    save_synth_config(config, stage_dir / "config.yaml")
    if not samples:
        raise ValueError(f"fold {fold_data.fold}: no images for the {stage} stage")
    write_provenance(stage_dir, {"stage": stage, **fold_data.describe(samples), "finished": False})


def _finish_stage(stage_dir: Path, summary: dict) -> dict:
    provenance = json.loads((stage_dir / "provenance.json").read_text())
    write_provenance(stage_dir, {**provenance, "finished": True})
    (stage_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    clear_resume(stage_dir)
    return summary


def require_finished(stage_dir: Path, command: str) -> None:
    """A clear error unless the stage in `stage_dir` has finished."""
    if not (Path(stage_dir) / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{stage_dir}: this stage has not finished ({SUMMARY_FILE} missing); "
                                f"run `synth {command}` for this fold (it resumes an interrupted stage)")


def _finished(stage_dir: Path) -> dict | None:
    path = stage_dir / SUMMARY_FILE
    if path.is_file():
        print(f"{stage_dir}: finished earlier, skipped")
        return json.loads(path.read_text())
    return None


def _vae_batch(images: torch.Tensor, crop: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops of random patches in a random dihedral view, (B, 3, crop, crop) in [-1, 1]."""
    index = torch.randint(0, len(images), (batch_size,), generator=generator)
    size = images.shape[1]
    tops = torch.randint(0, size - crop + 1, (batch_size,), generator=generator).tolist()
    lefts = torch.randint(0, size - crop + 1, (batch_size,), generator=generator).tolist()
    crops = torch.stack([images[i, t:t + crop, left:left + crop] for i, t, left in zip(index.tolist(), tops, lefts)])
    return dihedral(to_model_range(crops), generator)


@torch.no_grad()
def _latent_scale(vae, images: torch.Tensor, device: torch.device, n: int = 256) -> float:
    """1 / std of the latents of up to n patches (Rombach et al.'s rule; SD's 0.18215 came from it)."""
    vae.eval()
    chosen = images[torch.linspace(0, len(images) - 1, min(n, len(images))).long()]  # spread over the datasets
    latents = [vae.encode(to_model_range(chosen[i:i + 32]).to(device)).latent_dist.mean.float().cpu()
               for i in range(0, len(chosen), 32)]
    return float(1.0 / torch.cat(latents).std())


def _point_to_pretrained_vae(config: SynthConfig, stage_dir: Path) -> dict:
    """Record the configured pretrained VAE as the fold's VAE (not copied: an SD VAE is 330 MB)."""
    vae = load_vae(Path(config.vae.pretrained))
    stage_dir.mkdir(parents=True, exist_ok=True)
    save_synth_config(config, stage_dir / "config.yaml")
    write_provenance(stage_dir, {"stage": "vae", "source": "pretrained", "path": str(Path(config.vae.pretrained).resolve()),
                                 "note": "assumed not trained on the evaluation data (see docs/synthesis.md)"})
    return _finish_stage(stage_dir, {"source": "pretrained", "scaling_factor": float(vae.config.scaling_factor)})


def train_vae(config: SynthConfig, fold_dir: Path, fold_data: FoldData, device: torch.device, *,
              show_progress: bool = True) -> dict:
    """Fill `<fold_dir>/vae/`: the configured pretrained VAE, or one trained on the fold's pre-training images."""
    stage_dir = Path(fold_dir) / "vae"
    done = _finished(stage_dir)
    if done is not None:
        return done
    if config.vae.pretrained:
        return _point_to_pretrained_vae(config, stage_dir)
    _begin_stage(config, stage_dir, fold_data, fold_data.pretrain, "vae")
    images = torch.from_numpy(load_images(fold_data.pretrain, config.image_size, progress=show_progress))
    torch.manual_seed(config.seed)
    vae_config = config.vae
    vae = create_vae(block_out_channels=vae_config.block_out_channels, layers_per_block=vae_config.layers_per_block,
                     latent_channels=vae_config.latent_channels, norm_num_groups=vae_config.norm_num_groups,
                     image_size=config.image_size).to(device)
    optimisation = _Optimisation(vae, vae_config.train)
    adversary = _Adversary(vae_config, vae, device) if vae_config.adversarial_weight > 0 else None
    if adversary is not None:
        optimisation.companions = adversary.parts()

    def next_loss(step: int) -> torch.Tensor:
        generator = step_generator(config.seed, "vae", step)
        batch = _vae_batch(images, vae_config.crop, vae_config.train.batch_size, generator).to(device)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(latents).sample.float()
        loss = F.l1_loss(reconstruction, batch)
        if adversary is not None and step >= vae_config.adversarial_start:
            loss = loss + adversary.generator_term(batch, reconstruction, loss)
        return loss + vae_config.kl_weight * posterior.kl().mean()

    started = time.perf_counter()
    history = run_steps(optimisation, next_loss, stage_dir, config_text(config), autocast=_autocast(config, device),
                        show_progress=show_progress, batch_size=vae_config.train.batch_size)
    trained = optimisation.averaged()
    trained.register_to_config(scaling_factor=_latent_scale(trained, images, device))
    trained.save_pretrained(str(stage_dir), safe_serialization=True)
    extra = adversary.summary() if adversary is not None else {}
    return _finish_stage(stage_dir, _summary(history, started, len(fold_data.pretrain), "vae",
                                             scaling_factor=float(trained.config.scaling_factor), **extra))


class _Adversary:
    """The VAE's patch discriminator, its optimiser, and the adversarial term of the VAE's loss.

    Latent diffusion's autoencoder recipe (Esser et al., "Taming Transformers", CVPR 2021): hinge
    losses, Adam with betas (0.5, 0.9), and the generator term weighted by the ratio of the
    reconstruction loss's and the adversarial loss's gradient norms at the decoder's last layer,
    times `adversarial_weight`, so neither term swamps the other whatever their scales.
    """

    def __init__(self, vae_config, vae, device: torch.device):
        self.scale = vae_config.adversarial_weight
        self.last_layer = vae.decoder.conv_out.weight
        self.discriminator = PatchDiscriminator(vae_config.discriminator_channels,
                                                vae_config.discriminator_layers).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=vae_config.train.lr, betas=(0.5, 0.9))
        self.recent = []  # (discriminator loss, adaptive weight) of the last steps, for the summary

    def parts(self) -> dict:
        return {"discriminator": self.discriminator, "discriminator_optimizer": self.optimizer}

    def generator_term(self, real: torch.Tensor, reconstruction: torch.Tensor,
                       reconstruction_loss: torch.Tensor) -> torch.Tensor:
        """Update the discriminator once on this batch, then return the VAE's weighted adversarial loss."""
        self.discriminator.train()
        self.optimizer.zero_grad(set_to_none=True)
        critic = 0.5 * (F.relu(1 - self.discriminator(real)).mean()
                        + F.relu(1 + self.discriminator(reconstruction.detach())).mean())
        critic.backward()
        self.optimizer.step()
        fooled = -self.discriminator(reconstruction).mean()
        weight = adaptive_weight(reconstruction_loss, fooled, self.last_layer) * self.scale
        self.recent = (self.recent + [(critic.item(), weight.item())])[-50:]
        return weight * fooled

    def summary(self) -> dict:
        critic, weight = np.mean(self.recent, axis=0) if self.recent else (float("nan"), float("nan"))
        return {"discriminator_loss_last_50": float(critic), "adversarial_weight_last_50": float(weight)}


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                    last_layer: torch.Tensor) -> torch.Tensor:
    """||grad of the reconstruction loss|| / ||grad of the adversarial loss|| at `last_layer`, clamped, no gradient."""
    reconstruction = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (reconstruction.norm() / (adversarial.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def _summary(history: list, started: float, n_images: int, stage: str, **extra) -> dict:
    seconds = sum(row["seconds"] for row in history)
    steps = history[-1]["step"] if history else 0
    return {"stage": stage, "steps": steps, "n_images": n_images, "train_seconds": seconds,
            "wall_seconds_this_session": time.perf_counter() - started,
            "final_loss": history[-1]["loss"] if history else float("nan"), **extra}


def fold_vae(fold_dir: Path, fold_data: FoldData) -> LatentCodec:
    """The fold's VAE as a LatentCodec, after checking that it was made for this fold (or is external)."""
    stage_dir = Path(fold_dir) / "vae"
    record = read_provenance(stage_dir, fold_data, "vae")
    require_finished(stage_dir, "train-vae")
    return LatentCodec(load_vae(Path(record["path"]) if record.get("source") == "pretrained" else stage_dir))


@torch.no_grad()
def encode_latents(codec: LatentCodec, samples: list, views, image_size: int, device: torch.device, *,
                   batch_size: int = 64, show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of every sample in every view, (V*N, C, h, w) each, view-major."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"unknown views {unknown}; known: {', '.join(VIEWS)}")
    codec = codec.to(device).eval()
    images = torch.from_numpy(load_images(samples, image_size, progress=show_progress))
    means, stds = [], []
    with tqdm(total=len(views) * len(images), desc="encoding latents", unit="patch", disable=not show_progress) as bar:
        for view in views:
            for start in range(0, len(images), batch_size):
                batch = VIEWS[view](to_model_range(images[start:start + batch_size])).to(device)
                mean, std = codec.encode(batch)
                means.append(mean.float().cpu().contiguous())
                stds.append(std.float().cpu().contiguous())
                bar.update(len(batch))
    return torch.cat(means), torch.cat(stds)


def _vae_fingerprint(folder: Path) -> str:
    """sha256 of a VAE folder's config and weight files: a retrained VAE never reuses stale latents."""
    return sha256_of(*sorted(p for p in Path(folder).iterdir()
                             if p.name == "config.json" or p.suffix in (".safetensors", ".bin")))


def _cached_latents(codec, fold_dir: Path, samples: list, config: SynthConfig, device, show_progress):
    """encode_latents, kept in `<fold_dir>/latents.safetensors` so the two DiT stages encode once."""
    path = Path(fold_dir) / "latents.safetensors"
    key = json.dumps({"vae": _vae_fingerprint(Path(codec.vae.config._name_or_path)), "scale": codec.scale,
                      "views": config.views, "size": config.image_size})
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        ids = json.loads(metadata["ids"])
        if metadata["key"] == key and set(s.sample_id for s in samples) <= set(ids):
            stored = load_file(str(path))
            position = {sample_id: i for i, sample_id in enumerate(ids)}
            n = len(ids)
            rows = torch.tensor([v * n + position[s.sample_id] for v in range(len(config.views)) for s in samples])
            return stored["mean"][rows], stored["std"][rows]
    mean, std = encode_latents(codec, samples, config.views, config.image_size, device, show_progress=show_progress)
    save_file({"mean": mean, "std": std}, str(path),
              metadata={"key": key, "ids": json.dumps([s.sample_id for s in samples])})
    return mean, std


def load_dit(stage_dir: Path, prefer: str = "ema", device: torch.device = torch.device("cpu")):
    """(ConditionalDiT in eval mode, model_args) from a finished DiT stage; EMA weights when there are some."""
    stage_dir = Path(stage_dir)
    args_path = stage_dir / "model_args.json"
    weights = stage_dir / ("ema.safetensors" if prefer == "ema" else "model.safetensors")
    if not weights.is_file():
        weights = stage_dir / "model.safetensors"
    if not args_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{stage_dir}: no finished DiT checkpoint (model_args.json and model.safetensors)")
    args = json.loads(args_path.read_text())
    network = create_dit(**args)
    network.load_state_dict(load_file(str(weights)), strict=True)
    return network.to(device).eval(), args


def _draw_weights(labels: torch.Tensor, balanced: bool) -> torch.Tensor | None:
    """Per-latent draw weights that give every class the same share of a batch, or None (uniform draws)."""
    if not balanced:
        return None
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


def train_dit(config: SynthConfig, fold_dir: Path, fold_data: FoldData, stage: str, device: torch.device, *,
              show_progress: bool = True) -> dict:
    """Pre-train (class-agnostic, on fold_data.pretrain) or fine-tune (class-conditional) fold k's DiT."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    fold_dir = Path(fold_dir)
    stage_dir = fold_dir / stage
    done = _finished(stage_dir)
    if done is not None:
        return done
    codec = fold_vae(fold_dir, fold_data)
    if stage == "finetune":
        read_provenance(fold_dir / "pretrain", fold_data, "pretrain")
        require_finished(fold_dir / "pretrain", "pretrain")
    samples = fold_data.pretrain if stage == "pretrain" else fold_data.finetune
    _begin_stage(config, stage_dir, fold_data, samples, stage)
    mean, std = _cached_latents(codec, fold_dir, samples, config, device, show_progress)
    channels, side = codec.latent_shape(config.image_size)
    args = dit_args(config.dit.variant, channels, side)
    torch.manual_seed(config.seed)
    network = create_dit(**args)
    faster = []
    if stage == "finetune":
        network.load_state_dict(load_dit(fold_dir / "pretrain")[0].state_dict())
        network.start_classes_from_null()
        faster = [table.weight for table in network.label_tables()]
    network = network.to(device)
    labels = (torch.full((len(samples),), network.null_class) if stage == "pretrain"
              else torch.tensor([s.label for s in samples])).repeat(len(config.views))
    diffusion = create_diffusion(
        num_train_timesteps=config.diffusion.num_train_timesteps, beta_schedule=config.diffusion.beta_schedule,
        prediction_type=config.diffusion.prediction_type, sampler=config.diffusion.sampler,
        class_dropout=config.dit.class_dropout if stage == "finetune" else 0.0)
    train = getattr(config, stage)
    optimisation = _Optimisation(network, train, faster=faster, faster_scale=config.dit.label_lr_scale)

    weights = _draw_weights(labels, balanced=stage == "finetune" and config.dit.balanced_batches)

    def next_loss(step: int) -> torch.Tensor:
        generator = step_generator(config.seed, stage, step)
        index = (torch.randint(0, len(mean), (train.batch_size,), generator=generator) if weights is None
                 else torch.multinomial(weights, train.batch_size, replacement=True, generator=generator))
        latents = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        return diffusion.training_loss(network, latents.to(device), labels[index].to(device), generator)

    started = time.perf_counter()
    (stage_dir / "model_args.json").write_text(json.dumps(args, indent=2) + "\n")
    history = run_steps(optimisation, next_loss, stage_dir, config_text(config), autocast=_autocast(config, device),
                        show_progress=show_progress, batch_size=train.batch_size)
    save_file({k: v.contiguous().cpu() for k, v in network.state_dict().items()}, str(stage_dir / "model.safetensors"),
              metadata={"model_args": json.dumps(args)})
    save_file({k: v.contiguous().cpu() for k, v in optimisation.averaged().state_dict().items()},
              str(stage_dir / "ema.safetensors"), metadata={"model_args": json.dumps(args)})
    return _finish_stage(stage_dir, _summary(history, started, len(samples), stage, views=len(config.views),
                                             parameters=sum(p.numel() for p in network.parameters())))
