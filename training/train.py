"""Train one cross-validation fold into a self-describing result folder.

A fold folder (nnU-Net's habit) holds everything export and evaluation need and nothing they must
look up elsewhere: `config.yaml` (resolved), `model_args.json` (plain data to rebuild the network),
`model.safetensors` (the EMA weights, which DiT's `find_model` also prefers), `metrics.csv` (one
row per epoch, also written to TensorBoard under `tensorboard/`), `oof_predictions.csv` (the
validation fold, scored with the deployed test-time views) and `summary.json`.

By default the schedule is fixed (cosine to the last epoch), so the validation fold never chooses
the weights and its predictions are honestly out-of-fold. With early stopping the best epoch on
the validation fold is kept instead, and the summary says so: those metrics are then optimistic.

`resume.pt` is written after every epoch and removed when the fold is done: a fold killed midway
continues from its last finished epoch. Under `torchrun` (WORLD_SIZE > 1) each process trains on
its share of every epoch's batches through DistributedDataParallel; rank 0 evaluates and writes.
"""

import copy
import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from scipy.special import expit
from torch import nn
from tqdm import tqdm

from training.augment import augment_batch, mix_pairs
from training.checkpoints import clear_resume, load_resume, save_resume, write_metrics_csv
from training.config import ExperimentConfig, config_from_dict, recipe_differences, save_config
from training.data import Sample, labels_of, targets_of
from training.ensemble import Preprocess, view_scores
from training.metrics import binary_metrics
from training.lora import apply_lora, load_trained_state, lora_args, trainable_names, trained_state
from training.models import create_classifier, model_args
from training.splits import fold_fingerprint, fold_indices, split_fingerprint
from training.stain import stain_args
from training.torch_compat import import_timm

OOF_COLUMNS = ("sample_id", "slide", "label", "fold", "score", "probability")


def set_threads(threads: int) -> int:
    """Use `threads` CPU threads (0: every core this process may use); return the number."""
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def select_device(name: str) -> torch.device:
    """"auto": the process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Distributed:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join torchrun's process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(torch.distributed.get_rank(), world)


@torch.no_grad()
def predict_scores(network, preprocess, patches: torch.Tensor, views, device=torch.device("cpu"),
                   batch_size: int = 128) -> np.ndarray:
    """Score uint8 NHWC patches with `network` over `views`; returns (N,) logit differences."""
    network.eval()
    preprocess = preprocess.to(device)
    scores = []
    for start in range(0, len(patches), batch_size):
        images = preprocess(patches[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        scores.append(view_scores(network, images, views).float().cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def _per_sample(weight, labels, sample_weight, like) -> torch.Tensor:
    """Each sample's loss weight: its class weight (1 without) times its own weight (1 without)."""
    weights = weight[labels] if weight is not None else torch.ones_like(like)
    return weights * sample_weight if sample_weight is not None else weights


def focal_loss(logits, labels, weight=None, gamma: float = 2.0, label_smoothing: float = 0.0,
               sample_weight=None) -> torch.Tensor:
    """Focal loss on softmax logits (Lin et al., ICCV 2017), class- (and sample-) weighted like cross-entropy."""
    per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    p_true = torch.exp(-F.cross_entropy(logits, labels, reduction="none"))
    weights = _per_sample(weight, labels, sample_weight, per_sample)
    return ((1 - p_true) ** gamma * per_sample * weights).sum() / weights.sum()


def soft_label_loss(logits, targets, labels, weight=None, label_smoothing: float = 0.0,
                    sample_weight=None, gamma: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy of P(atypical) = sigmoid(logit(atypical) - logit(normal)) against a target share.

    `weight` (per class) and `label_smoothing` act as in F.cross_entropy, normalised by the weights
    of the majority `labels`, so that for targets 0 and 1 this is exactly the cross-entropy of the
    two logits; `sample_weight` multiplies each sample's term and its share of the normaliser.
    `gamma` > 0 makes it the binary focal loss: each class's term is scaled by (1 - P(that class))^gamma,
    which for targets 0 and 1 (no smoothing) is exactly `focal_loss` of the two logits.
    """
    scores = logits[:, 1] - logits[:, 0]  # (N,)
    atypical = targets * (1 - label_smoothing) + label_smoothing / 2
    weight = weight if weight is not None else torch.ones(2, device=logits.device)
    log_p, log_q = F.logsigmoid(scores), F.logsigmoid(-scores)  # log P(atypical), log P(normal)
    focus_atypical, focus_normal = (torch.exp(log_q) ** gamma, torch.exp(log_p) ** gamma) if gamma else (1.0, 1.0)
    per_sample = -(weight[0] * (1 - atypical) * focus_normal * log_q + weight[1] * atypical * focus_atypical * log_p)
    own = sample_weight if sample_weight is not None else torch.ones_like(per_sample)
    return (per_sample * own).sum() / (weight[labels] * own).sum()


def domain_weights(samples: list, train_index, key: str, rule: str) -> np.ndarray | None:
    """Per-sample loss weights by domain: the inverse frequency of each sample's `key` value in the training part.

    Normalised to mean 1 over the training part; None for rule "none". Samples without the key form
    one domain of their own ("unknown").
    """
    if rule == "none":
        return None
    if rule != "balanced":
        raise ValueError(f"optim.domain_weighting must be 'balanced' or 'none', got {rule!r}")
    values = [str(sample.domain.get(key, "unknown")) for sample in samples]
    counts = {}
    for i in train_index:
        counts[values[i]] = counts.get(values[i], 0) + 1
    if len(counts) < 2:
        print(f"domain weighting: every training sample has {key} = {next(iter(counts), 'none')!r}; weights are all 1")
    weights = np.array([len(train_index) / (len(counts) * counts.get(v, len(train_index))) for v in values], np.float32)
    return weights / weights[train_index].mean()


def _class_weights(labels: np.ndarray, rule: str) -> torch.Tensor | None:
    if rule == "none":
        return None
    if rule != "balanced":
        raise ValueError(f"class_weighting must be 'balanced' or 'none', got {rule!r}")
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


class _Trainer:
    """The optimisation state of one fold: network, EMA copy, optimiser, schedule, loss."""

    def __init__(self, config: ExperimentConfig, train_labels: np.ndarray, steps_per_epoch: int,
                 device: torch.device, distributed: Distributed, stain: dict | None = None):
        timm = import_timm()
        optim = config.optim
        self.config, self.device = config, device
        self.args = model_args(config.backbone, crop=config.input_crop, backbone_kwargs=config.backbone_kwargs)
        self.args.update(stain or {})  # model_args "stain": training.stain.stain_args
        self.network = create_classifier(**self.args, pretrained=config.pretrained, weights=config.weights)
        if optim.grad_checkpointing:
            self.network.set_grad_checkpointing(True)
        self.trained_names = None  # every parameter trains and is saved
        if config.lora.enabled:
            self.args.update(lora_args(config.lora, config.weights))
            self.network = apply_lora(self.network, config.lora)
            self.trained_names = trainable_names(self.network)
        self.network = self.network.to(device, memory_format=torch.channels_last)
        self.trained = self.network  # what the training step calls: DDP's wrapper under torchrun
        if distributed.world > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            self.trained = nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
        self.preprocess = Preprocess.from_args(self.args).to(device)
        self.optimizer = timm.optim.create_optimizer_v2(
            self.network, "adamw", lr=optim.lr, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay)
        self.scheduler = timm.scheduler.CosineLRScheduler(
            self.optimizer, t_initial=optim.epochs * steps_per_epoch, warmup_t=optim.warmup_epochs * steps_per_epoch,
            warmup_lr_init=optim.lr / 100, lr_min=optim.lr / 1000, t_in_epochs=False)
        self.ema = timm.utils.ModelEmaV3(self.network, decay=optim.ema_decay, use_warmup=True) if optim.ema_decay else None
        weight = _class_weights(train_labels, optim.class_weighting)
        self.class_weight = weight.to(device) if weight is not None else None
        self.autocast = optim.amp and device.type == "cuda"
        self.step = 0

    @property
    def evaluated(self) -> nn.Module:
        """The network to evaluate and save: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def saved_state(self, network: nn.Module) -> dict:
        """What a checkpoint of `network` stores: every tensor, or with LoRA only what trains."""
        if self.trained_names is None:
            return {k: v.contiguous().cpu() for k, v in network.state_dict().items()}
        return trained_state(self.trained_names, network)

    def load(self, network: nn.Module, state: dict) -> None:
        """Load a `saved_state` into `network`."""
        if self.trained_names is None:
            network.load_state_dict(state)
        else:
            load_trained_state(network, state)

    def loss(self, logits, labels, targets, sample_weight=None) -> torch.Tensor:
        """The configured loss of a batch: `labels` the majority classes, `targets` the P(atypical) to learn,
        `sample_weight` each sample's own weight (domain weighting) or None."""
        optim, logits = self.config.optim, logits.float()
        if optim.loss not in ("ce", "focal"):
            raise ValueError(f"optim.loss must be 'ce' or 'focal', got {optim.loss!r}")
        if self.config.labels == "soft":
            gamma = optim.focal_gamma if optim.loss == "focal" else 0.0
            return soft_label_loss(logits, targets, labels, self.class_weight, optim.label_smoothing,
                                   sample_weight, gamma)
        if optim.loss == "focal":
            return focal_loss(logits, labels, self.class_weight, optim.focal_gamma, optim.label_smoothing, sample_weight)
        if sample_weight is None:
            return F.cross_entropy(logits, labels, weight=self.class_weight, label_smoothing=optim.label_smoothing)
        per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=optim.label_smoothing)
        weights = _per_sample(self.class_weight, labels, sample_weight, per_sample)
        return (per_sample * weights).sum() / weights.sum()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                   sample_weight: torch.Tensor | None = None, mix: tuple | None = None) -> float:
        """One optimiser step; `mix` = (partner index, lam) when the images are mixed pairs (augment.mix_pairs)."""
        self.trained.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.trained(images.contiguous(memory_format=torch.channels_last))
        loss = self.loss(logits, labels, targets, sample_weight)
        if mix is not None:
            partner, lam = mix
            loss = lam * loss + (1 - lam) * self.loss(logits, labels[partner], targets[partner],
                                                      sample_weight[partner] if sample_weight is not None else None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.network, step=self.step)
        return loss.item()

    def state(self) -> dict:
        """Everything a resumed fold needs to continue exactly (tensors and plain data only)."""
        return {"step": self.step, "network": self.saved_state(self.network), "optimizer": self.optimizer.state_dict(),
                "ema": self.saved_state(self.ema.module) if self.ema is not None else None}

    def restore(self, state: dict) -> None:
        self.step = state["step"]
        self.load(self.network, state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.load(self.ema.module, state["ema"])
        self.scheduler.step_update(self.step)


def _epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """The training indices of one epoch: a permutation, or class-balanced draws with replacement."""
    if sampler == "uniform":
        return torch.randperm(len(labels), generator=generator)
    if sampler != "balanced":
        raise ValueError(f"optim.sampler must be 'uniform' or 'balanced', got {sampler!r}")
    counts = torch.bincount(labels, minlength=2).clamp(min=1).float()
    return torch.multinomial(1.0 / counts[labels], len(labels), replacement=True, generator=generator)


def shard_batches(order: torch.Tensor, batch_size: int, distributed: Distributed) -> list[torch.Tensor]:
    """This process's full batches of `order`; every process gets as many (DDP syncs each step)."""
    batches = [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
    batches = batches[:len(batches) - len(batches) % distributed.world]
    return batches[distributed.rank::distributed.world]


def _epoch(trainer, patches, labels, targets, weights, generator, progress, distributed, order_seed: int) -> float:
    """One pass over the training patches; returns this process's mean loss.

    The order comes from `order_seed` alone, so every torchrun process shards the same order;
    augmentations draw from this process's own `generator`.
    """
    config = trainer.config
    batch_size = config.optim.batch_size
    order = _epoch_order(labels, config.optim.sampler, torch.Generator().manual_seed(order_seed))
    losses = []
    for index in shard_batches(order, batch_size, distributed):
        images = patches[index].to(trainer.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        images = trainer.preprocess.unit(augment_batch(images, config.augment, generator))  # (B, 3, crop, crop)
        mix = None
        if config.augment.mixup > 0 or config.augment.cutmix > 0:
            images, partner, lam = mix_pairs(images, config.augment.mixup, config.augment.cutmix, generator)
            mix = (partner, lam)
        losses.append(trainer.train_step(images, labels[index].to(trainer.device), targets[index].to(trainer.device),
                                         weights[index].to(trainer.device) if weights is not None else None, mix))
        progress.update(distributed.world)
        progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    return float(np.mean(losses))


class _FoldLog:
    """Per-epoch rows to metrics.csv and, when asked, TensorBoard."""

    def __init__(self, out_dir: Path, tensorboard: bool, history: list):
        self.path, self.history = out_dir / "metrics.csv", history
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def add(self, row: dict) -> None:
        self.history.append(row)
        write_metrics_csv(self.path, self.history)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_rows(path: Path, columns, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


@dataclass
class _FoldData:
    """A fold's tensors: every patch (shared, not copied), the training part, and the fold's seed."""

    patches: torch.Tensor
    labels: torch.Tensor  # majority classes: sampling, class weights, metrics
    targets: torch.Tensor  # P(atypical) to learn: the majority label, or the experts' share
    train_index: np.ndarray
    val_index: np.ndarray
    seed: int
    weights: torch.Tensor | None = None  # each sample's own loss weight (domain weighting), or None

    @property
    def train_patches(self):
        return self.patches[self.train_index]

    @property
    def train_labels(self):
        return self.labels[self.train_index]

    @property
    def train_targets(self):
        return self.targets[self.train_index]

    @property
    def train_weights(self):
        return self.weights[self.train_index] if self.weights is not None else None


def _validate(trainer, data: _FoldData, row: dict) -> float:
    """Validation ROC AUC of the evaluated weights, added to `row`; NaN without a validation part."""
    if not len(data.val_index):
        return float("nan")
    scores = predict_scores(trainer.evaluated, trainer.preprocess, data.patches[data.val_index],
                            trainer.config.tta_views, trainer.device)
    metrics = binary_metrics(data.labels[data.val_index].numpy(), expit(scores.astype(np.float64)), 0.5)
    row.update(val_roc_auc=metrics["roc_auc"], val_balanced_accuracy_at_0_5=metrics["balanced_accuracy"])
    return metrics["roc_auc"]


def _run_epochs(trainer, data, generator, out_dir, resume: dict, distributed, show_progress,
                split_sha256: str) -> tuple[dict, list]:
    """The epoch loop with per-epoch logging, resume points and optional early stopping; (best, history)."""
    optim = trainer.config.optim
    history, best = resume.get("history", []), resume.get("best", {"auc": -1.0, "epoch": 0, "state": None})
    log = _FoldLog(out_dir, optim.tensorboard and distributed.main, history) if distributed.main else None
    steps = len(data.train_index) // optim.batch_size
    start_epoch = len(history)
    with tqdm(total=optim.epochs * steps, initial=start_epoch * steps, desc=f"{out_dir.name}", unit="step",
              disable=not (show_progress and distributed.main), dynamic_ncols=True) as progress:
        for epoch in range(start_epoch, optim.epochs):
            started = time.perf_counter()
            loss = _epoch(trainer, data.train_patches, data.train_labels, data.train_targets, data.train_weights,
                          generator, progress, distributed, order_seed=data.seed * 100_003 + epoch)
            row = {"epoch": epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"], "train_loss": loss}
            if distributed.main:
                auc = _validate(trainer, data, row)
                progress.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{auc:.3f}")
                row["seconds"] = time.perf_counter() - started
                log.add(row)
                if optim.early_stopping_patience and auc > best["auc"]:
                    best = {"auc": auc, "epoch": epoch + 1, "state": copy.deepcopy(trainer.saved_state(trainer.evaluated))}
                _save_resume(out_dir, trainer, generator, history, best, split_sha256)
            if optim.early_stopping_patience and _should_stop(best, epoch + 1, optim.early_stopping_patience, distributed):
                break
    if log is not None:
        log.close()
    if best["state"] is not None:
        trainer.load(trainer.evaluated, best["state"])
    return best, history


def _should_stop(best, epoch, patience, distributed) -> bool:
    """Early stopping, decided on rank 0 and shared with every process."""
    stop = torch.tensor([float(epoch - best["epoch"] >= patience)])
    if distributed.world > 1:
        torch.distributed.broadcast(stop, src=0)
    return bool(stop.item())


def _save_resume(out_dir, trainer, generator, history, best, split_sha256: str) -> None:
    save_resume(out_dir, {**trainer.state(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                          "history": history, "best": best, "config": yaml.safe_dump(asdict(trainer.config)),
                          "split_sha256": split_sha256})


def _load_resume(out_dir: Path, trainer, generator, config, split_sha256: str) -> dict:
    """The saved state of an interrupted run of this fold, restored into trainer and generator; {} if none."""
    state = load_resume(out_dir, device=trainer.device, checks={
        # compared as resolved configs: a field added later with a default that keeps the old behaviour fits;
        # where the run executes (data path, threads, device) may change
        "config": (lambda text: not recipe_differences(config_from_dict(yaml.safe_load(text)), config),
                   "left by a run with another config; delete it to start this fold afresh"),
        "split_sha256": (split_sha256, "left by a run on another split; resuming would train on other slides. "
                                       "Resume with the split it began with, or delete it to start this fold afresh"),
    })
    if not state:
        return {}
    trainer.restore(state)
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    print(f"{out_dir.name}: resuming after epoch {len(state['history'])}")
    return state


def train_fold(config: ExperimentConfig, samples: list[Sample], images: np.ndarray, split: dict,
               fold: int | str, out_dir: Path, *, show_progress: bool = True) -> dict:
    """Train `fold` ("all": every real sample, no validation) and fill `out_dir`; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(config.optim.threads)
    device = select_device(config.optim.device)
    distributed = init_distributed(device)
    torch.manual_seed(config.optim.seed)
    fold_seed = config.optim.seed * 1000 + (999 if fold == "all" else int(fold))
    generator = torch.Generator().manual_seed(fold_seed * 1000 + distributed.rank)  # augmentation, per process
    train_index, val_index = fold_indices(split, samples, fold)
    weights = domain_weights(samples, train_index, config.optim.domain_key, config.optim.domain_weighting)
    data = _FoldData(torch.from_numpy(images), torch.from_numpy(labels_of(samples)),
                     torch.from_numpy(targets_of(samples, config.labels)),
                     train_index, val_index, fold_seed, torch.from_numpy(weights) if weights is not None else None)
    steps_per_epoch = len(train_index) // config.optim.batch_size
    if steps_per_epoch < distributed.world:
        raise ValueError(f"fold {fold}: {len(train_index)} training samples, fewer than one batch per process")
    trainer = _Trainer(config, data.train_labels.numpy(), steps_per_epoch, device, distributed,
                       stain=stain_args(config.stain_norm, data.patches, train_index))
    if distributed.main:
        save_config(config, out_dir / "config.yaml")
        (out_dir / "model_args.json").write_text(json.dumps(trainer.args, indent=2) + "\n")
    split_sha256 = split_fingerprint(split)
    resume = _load_resume(out_dir, trainer, generator, config, split_sha256)
    best, history = _run_epochs(trainer, data, generator, out_dir, resume, distributed, show_progress, split_sha256)
    if not distributed.main:
        return {}
    save_file(trainer.saved_state(trainer.evaluated), str(out_dir / "model.safetensors"),
              metadata={"model_args": json.dumps(trainer.args)})
    summary = _summary(config, fold, data, device, distributed, history, best)
    summary["fold_sha256"] = fold_fingerprint(split, fold) if fold != "all" else None
    summary["split_sha256"] = split_sha256
    summary["n_train_synthetic"] = int(sum(samples[i].synthetic for i in train_index))
    if len(val_index):
        summary.update(_write_oof(trainer, samples, data, fold, out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    clear_resume(out_dir)
    return summary


def _summary(config, fold, data, device, distributed, history, best) -> dict:
    seconds = sum(row["seconds"] for row in history)  # training and per-epoch validation, across resumes
    images = len(history) * (len(data.train_index) // config.optim.batch_size) * config.optim.batch_size
    return {"fold": fold, "backbone": config.backbone, "n_train": int(len(data.train_index)),
            "n_val": int(len(data.val_index)), "epochs": config.optim.epochs, "epochs_run": len(history),
            "device": str(device), "processes": distributed.world, "train_seconds": seconds,
            "train_images_per_second": images / max(seconds, 1e-9),
            "selected_on_validation": bool(config.optim.early_stopping_patience),
            **({"best_epoch": best["epoch"]} if config.optim.early_stopping_patience else {})}


def _write_oof(trainer, samples, data: _FoldData, fold, out_dir) -> dict:
    """Score the validation fold with the final weights; write oof_predictions.csv; return metrics."""
    val_index = data.val_index
    scores = predict_scores(trainer.evaluated, trainer.preprocess, data.patches[val_index],
                            trainer.config.tta_views, trainer.device)
    probabilities = expit(scores.astype(np.float64))
    rows = [(samples[i].sample_id, samples[i].slide, samples[i].label, fold, float(s), float(p))
            for i, s, p in zip(val_index, scores, probabilities)]
    _write_rows(out_dir / "oof_predictions.csv", OOF_COLUMNS, rows)
    labels = labels_of([samples[i] for i in val_index])
    return {"val_metrics_at_0_5": binary_metrics(labels, probabilities, 0.5)}


def read_oof(path: Path) -> list[dict]:
    """Read an oof_predictions.csv written by train_fold."""
    with Path(path).open(newline="") as handle:
        return [{**row, "label": int(row["label"]), "score": float(row["score"])} for row in csv.DictReader(handle)]
