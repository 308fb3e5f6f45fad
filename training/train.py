"""Train one cross-validation fold into a self-describing result folder.

A fold folder (nnU-Net's habit) holds everything export and evaluation need and nothing they must
look up elsewhere: `config.yaml` (resolved), `model_args.json` (plain data to rebuild the network),
`model.safetensors` (the EMA weights, which DiT's `find_model` also prefers), `metrics.csv` (one
row per epoch), `oof_predictions.csv` (the validation fold, scored with the deployed test-time
views) and `summary.json`. The schedule is fixed (cosine to the last epoch, no early stopping), so
the validation fold never chooses the weights and its predictions are honestly out-of-fold.
"""

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from training.augment import augment_batch
from training.config import ExperimentConfig, save_config
from training.data import Sample, labels_of
from training.ensemble import Preprocess, view_scores
from training.metrics import binary_metrics
from training.models import create_classifier, model_args
from training.splits import fold_indices
from training.torch_compat import import_timm

OOF_COLUMNS = ("sample_id", "slide", "label", "fold", "score", "probability")


def set_threads(threads: int) -> int:
    """Use `threads` CPU threads (0: every core this process may use); return the number."""
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


@torch.no_grad()
def predict_scores(network, preprocess, patches: torch.Tensor, views, batch_size: int = 128) -> np.ndarray:
    """Score uint8 NHWC patches with `network` over `views`; returns (N,) logit differences."""
    network.eval()
    scores = [
        view_scores(network, preprocess(patches[start:start + batch_size]).contiguous(memory_format=torch.channels_last), views)
        for start in range(0, len(patches), batch_size)
    ]
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def _class_weights(labels: np.ndarray, rule: str) -> torch.Tensor | None:
    if rule == "none":
        return None
    if rule != "balanced":
        raise ValueError(f"class_weighting must be 'balanced' or 'none', got {rule!r}")
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


class _Trainer:
    """The optimisation state of one fold: network, EMA copy, optimiser, schedule, loss."""

    def __init__(self, config: ExperimentConfig, train_labels: np.ndarray, steps_per_epoch: int):
        timm = import_timm()
        optim = config.optim
        self.args = model_args(config.backbone, crop=config.input_crop)
        self.network = create_classifier(**self.args).to(memory_format=torch.channels_last)
        self.preprocess = Preprocess.from_args(self.args)
        self.optimizer = timm.optim.create_optimizer_v2(
            self.network, "adamw", lr=optim.lr, weight_decay=optim.weight_decay)
        self.scheduler = timm.scheduler.CosineLRScheduler(
            self.optimizer, t_initial=optim.epochs * steps_per_epoch, warmup_t=optim.warmup_epochs * steps_per_epoch,
            warmup_lr_init=optim.lr / 100, lr_min=optim.lr / 1000, t_in_epochs=False)
        self.ema = timm.utils.ModelEmaV3(self.network, decay=optim.ema_decay, use_warmup=True) if optim.ema_decay else None
        self.loss = nn.CrossEntropyLoss(
            weight=_class_weights(train_labels, optim.class_weighting), label_smoothing=optim.label_smoothing)
        self.step = 0

    @property
    def evaluated(self) -> nn.Module:
        """The network to evaluate and save: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.network.train()
        logits = self.network(images.contiguous(memory_format=torch.channels_last))
        loss = self.loss(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.network, step=self.step)
        return loss.item()


def _epoch(trainer, config, patches, labels, generator, progress) -> float:
    """One pass over the training patches in a random order; returns the mean loss."""
    batch_size = config.optim.batch_size
    order = torch.randperm(len(patches), generator=generator)
    losses = []
    for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches only (BatchNorm)
        index = order[start:start + batch_size]
        images = patches[index].permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
        images = augment_batch(images, config.augment, generator)
        losses.append(trainer.train_step(trainer.preprocess.unit(images), labels[index]))
        progress.update(1)
        progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    return float(np.mean(losses))


def _write_rows(path: Path, columns, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def train_fold(config: ExperimentConfig, samples: list[Sample], images: np.ndarray, split: dict,
               fold: int | str, out_dir: Path, *, show_progress: bool = True) -> dict:
    """Train `fold` ("all": every real sample, no validation) and fill `out_dir`; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(config.optim.threads)
    torch.manual_seed(config.optim.seed)
    generator = torch.Generator().manual_seed(config.optim.seed * 1000 + (0 if fold == "all" else int(fold)))
    train_index, val_index = fold_indices(split, samples, fold)
    labels = torch.from_numpy(labels_of(samples))
    patches = torch.from_numpy(images)  # (N, H, W, 3) uint8, shared, not copied
    train_patches, train_labels = patches[train_index], labels[train_index]
    steps_per_epoch = len(train_index) // config.optim.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"fold {fold}: {len(train_index)} training samples, fewer than one batch")
    trainer = _Trainer(config, train_labels.numpy(), steps_per_epoch)
    save_config(config, out_dir / "config.yaml")
    (out_dir / "model_args.json").write_text(json.dumps(trainer.args, indent=2) + "\n")

    history, started = [], time.perf_counter()
    with tqdm(total=config.optim.epochs * steps_per_epoch, desc=f"fold {fold}", unit="step",
              disable=not show_progress, dynamic_ncols=True) as progress:
        for epoch in range(config.optim.epochs):
            epoch_start = time.perf_counter()
            loss = _epoch(trainer, config, train_patches, train_labels, generator, progress)
            row = {"epoch": epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"], "train_loss": loss}
            if len(val_index):
                val_scores = predict_scores(trainer.evaluated, trainer.preprocess, patches[val_index], config.tta_views)
                val_metrics = binary_metrics(labels[val_index].numpy(), 1 / (1 + np.exp(-val_scores)), 0.5)
                row.update(val_roc_auc=val_metrics["roc_auc"], val_balanced_accuracy_at_0_5=val_metrics["balanced_accuracy"])
                progress.set_postfix(loss=f"{loss:.3f}", val_auc=f"{val_metrics['roc_auc']:.3f}")
            row["seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            _write_rows(out_dir / "metrics.csv", list(history[0]), [list(r.values()) for r in history])

    save_file({k: v.contiguous() for k, v in trainer.evaluated.state_dict().items()},
              str(out_dir / "model.safetensors"), metadata={"model_args": json.dumps(trainer.args)})
    summary = {"fold": fold, "backbone": config.backbone, "n_train": int(len(train_index)),
               "n_val": int(len(val_index)), "epochs": config.optim.epochs,
               "train_seconds": time.perf_counter() - started,
               "train_images_per_second": config.optim.epochs * steps_per_epoch * config.optim.batch_size / (time.perf_counter() - started)}
    if len(val_index):
        summary.update(_write_oof(trainer, config, samples, patches, val_index, fold, out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_oof(trainer, config, samples, patches, val_index, fold, out_dir) -> dict:
    """Score the validation fold with the final weights; write oof_predictions.csv; return metrics."""
    scores = predict_scores(trainer.evaluated, trainer.preprocess, patches[val_index], config.tta_views)
    probabilities = 1 / (1 + np.exp(-scores.astype(np.float64)))
    rows = [(samples[i].sample_id, samples[i].slide, samples[i].label, fold, float(s), float(p))
            for i, s, p in zip(val_index, scores, probabilities)]
    _write_rows(out_dir / "oof_predictions.csv", OOF_COLUMNS, rows)
    labels = labels_of([samples[i] for i in val_index])
    return {"val_metrics_at_0_5": binary_metrics(labels, probabilities, 0.5)}


def read_oof(path: Path) -> list[dict]:
    """Read an oof_predictions.csv written by train_fold."""
    with Path(path).open(newline="") as handle:
        return [{**row, "label": int(row["label"]), "score": float(row["score"])} for row in csv.DictReader(handle)]
