"""Training images/s for each config of training/configs/, on this machine's CPU.

Times the training loop's own step (training/train.py `_epoch`: uint8 patches -> float, the config's
augmentations, the member's preprocessing, forward, loss, backward, AdamW, EMA) on real AMi-Br
patches, after warm-up steps, with every core. Networks start from random weights (the speed does
not depend on them, and pretrained ones cannot be downloaded here). Configs meant for a GPU run
a few steps at a small batch and are labelled as what they are: CPU, not the GPU they are for.
"""

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks import quiet
from benchmarks.common import amibr_patches, report
from training.augment import augment_batch
from training.config import CONFIG_DIR, load_config
from training.train import Distributed, _Trainer, set_threads

CPU_BACKBONES = ("resnet10t_slim",)  # what the configs meant for a CPU train; the others want a GPU


def images_per_second(config, patches: torch.Tensor, labels: torch.Tensor, *, steps: int, warmup: int) -> float:
    """Training images/s of `config`'s step on the CPU, timed over `steps` after `warmup` steps."""
    batch_size = config.optim.batch_size
    trainer = _Trainer(config, labels.numpy(), steps_per_epoch=steps + warmup, device=torch.device("cpu"),
                       distributed=Distributed())
    generator = torch.Generator().manual_seed(0)
    began = None
    for step in range(warmup + steps):
        if step == warmup:
            began = time.perf_counter()
        index = torch.randint(len(patches), (batch_size,), generator=generator)
        images = patches[index].permute(0, 3, 1, 2).float() / 255.0
        images = augment_batch(images, config.augment, generator)  # (B, 3, H, W) in [0, 1]
        trainer.train_step(trainer.preprocess.unit(images), labels[index], labels[index].float())
    return steps * batch_size / (time.perf_counter() - began)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-steps", type=int, default=30, help="timed steps of the CPU configs")
    parser.add_argument("--gpu-config-steps", type=int, default=5, help="timed steps of the GPU configs")
    parser.add_argument("--gpu-config-batch", type=int, default=8, help="batch size of the GPU configs here")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    threads = set_threads(0)
    patches = amibr_patches(512)
    labels = torch.from_numpy(np.arange(len(patches)) % 5 == 0).long()  # ~the data's 1:4 ratio; the speed ignores them
    state = quiet.from_arguments(args)
    rows = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        config = load_config(str(path))
        config.pretrained, config.weights, config.optim.tensorboard = False, None, False
        on_cpu = config.backbone in CPU_BACKBONES
        if not on_cpu:
            config.optim.batch_size = args.gpu_config_batch
        steps, warmup = (args.cpu_steps, 5) if on_cpu else (args.gpu_config_steps, 2)
        speed = images_per_second(config, torch.from_numpy(patches), labels, steps=steps, warmup=warmup)
        rows.append([path.stem, config.backbone, config.input_crop or 128, config.optim.batch_size, steps,
                     f"{speed:.1f}", "CPU, as meant" if on_cpu else "CPU, not the GPU this config is for"])
    report("training_speed", f"Training images/s per config, CPU, {threads} threads",
           ["config", "backbone", "input px", "batch", "timed steps", "images/s", "device"], rows, state=state,
           packages=("torch", "timm"),
           notes=["One step: augmentation + preprocessing + forward + loss + backward + AdamW + EMA, as in the "
                  "training loop; validation and data loading are not included. A 5-fold cpu_small run is 30 "
                  "epochs of ~2,250 training patches per fold."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
