"""Sample synthetic patches of one class from a fold's generator, with a manifest the training reads.

The manifest has the columns `image,label,slide,synthetic` that training.data.read_manifest takes,
plus `generator,guidance,steps,sampler,seed` (kept as domain entries): every row is marked
synthetic, its slide is `synthetic:<generator name>:fold<k>`, so training.splits.fold_indices puts
it in training only. Image i of a call starts from the noise of seed `seed + i` alone, so with the
deterministic samplers (dpm, ddim) any image can be made again by itself, and an interrupted call
redraws only the batches with missing images.

"Balance" sets go to `<run>/fold_<k>/manifest.csv`, exactly where training.crossval.synthetic_for_fold
looks (the experiment's `synthetic.dir` is the generator run folder): ratio x (n_normal - n_atypical)
of fold k's training part, all atypical.
"""

import csv
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from inference.contract import PATCH_SIZE
from training.data import CLASSES
from training.synth.data import read_provenance, to_uint8
from training.synth.diffusion import Diffusion, create_diffusion
from training.synth.networks import ConditionalDiT, LatentCodec
from training.synth.run import GeneratorRun
from training.synth.trainer import fold_vae, load_dit, require_finished

MANIFEST_COLUMNS = ("image", "label", "slide", "synthetic", "generator", "guidance", "steps", "sampler", "seed")
SAMPLE_FILE = "sample.json"


@dataclass(frozen=True)
class SampleOptions:
    """How images are drawn: guidance scale, denoising steps, sampler kind, first seed, batch size."""

    guidance: float
    steps: int
    sampler: str
    seed: int = 0
    batch_size: int = 64


def default_options(run: GeneratorRun, **overrides) -> SampleOptions:
    """The config's sampling settings, with the given (non-None) overrides."""
    config = run.config
    values = {"guidance": config.diffusion.guidance, "steps": config.diffusion.steps,
              "sampler": config.diffusion.sampler, "seed": config.sample.seed, "batch_size": config.sample.batch_size}
    values.update({key: value for key, value in overrides.items() if value is not None})
    if values["steps"] < 1 or values["batch_size"] < 1:
        raise ValueError("steps and batch size must be at least 1")
    return SampleOptions(**values)


def class_index(name) -> int:
    """The label index of a class name (normal/atypical), or a clear error."""
    if name in CLASSES:
        return CLASSES.index(name)
    raise ValueError(f"unknown class {name!r}; known: {', '.join(CLASSES)}")


@dataclass
class Generator:
    """A fold's trained generator: DiT (EMA weights), its VAE, its noise process."""

    model: ConditionalDiT
    codec: LatentCodec
    diffusion: Diffusion
    name: str
    device: torch.device
    amp: bool = True

    @property
    def latent_shape(self) -> tuple:
        return (self.model.transformer.config.in_channels, self.model.transformer.config.sample_size,
                self.model.transformer.config.sample_size)

    @torch.no_grad()
    def generate(self, label: int, seeds: list, options: SampleOptions) -> np.ndarray:
        """uint8 (N, H, W, 3) patches of class `label`, image i from the noise of seeds[i]."""
        noise = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(seed)))
                             for seed in seeds]).to(self.device)  # (N, C, h, w)
        labels = torch.full((len(seeds),), label, dtype=torch.long, device=self.device)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp and self.device.type == "cuda"
                    else nullcontext())
        with autocast:
            latents = self.diffusion.sample(self.model, noise, labels, steps=options.steps, guidance=options.guidance,
                                            sampler=options.sampler, generator=torch.Generator().manual_seed(int(seeds[0])))
        return to_uint8(self.codec.decode(latents.float()))


def load_generator(run: GeneratorRun, fold, device: torch.device) -> Generator:
    """Fold `fold`'s fine-tuned generator, after checking it was made for this fold of this split."""
    fold_dir = run.fold_dir(fold)
    fold_data = run.fold_data(fold)
    read_provenance(fold_dir / "finetune", fold_data, "finetune")
    require_finished(fold_dir / "finetune", "finetune")
    model, _ = load_dit(fold_dir / "finetune", prefer="ema", device=device)
    codec = fold_vae(fold_dir, fold_data).to(device).eval()
    config = run.config.diffusion
    diffusion = create_diffusion(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                 prediction_type=config.prediction_type, sampler=config.sampler)
    return Generator(model=model, codec=codec, diffusion=diffusion, name=f"{run.config.name}:fold{fold_data.fold}",
                     device=device, amp=run.config.amp)


def balance_count(run: GeneratorRun, fold, ratio: float) -> int:
    """ratio x (n_normal - n_atypical) of fold `fold`'s training part (what synthetic_for_fold takes)."""
    labels = np.bincount([s.label for s in run.fold_data(fold).finetune], minlength=2)
    return int(round(ratio * max(int(labels[0]) - int(labels[1]), 0)))


def _check_previous(dest: Path, record: dict) -> None:
    path = dest / SAMPLE_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        asked = {k: previous.get(k) for k in record}
        if asked != record:
            raise ValueError(f"{path}: images here were drawn with other settings ({asked}); "
                             f"delete {dest / 'images'} and {path} to draw them again, or choose another destination")


def to_patch_size(patch: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """A generated (s, s, 3) image as a (size, size, 3) patch, its figure in the centre as in real patches.

    A generator of the centre s < size pixels (the part the classifiers crop) gets the rest mirrored
    from its own edge, so the classifier's shifts and zooms meet tissue-like pixels, never a black
    band that only synthetic patches would have.
    """
    margin = size - patch.shape[0]
    if margin <= 0:
        return patch
    return np.pad(patch, ((margin // 2, margin - margin // 2), (margin // 2, margin - margin // 2), (0, 0)),
                  mode="reflect")


def write_samples(run: GeneratorRun, fold, *, label: int, n: int, dest: Path, options: SampleOptions,
                  device: torch.device, show_progress: bool = True) -> Path:
    """Draw n images of class `label` into `<dest>/images/` and write `<dest>/manifest.csv`; returns its path."""
    fold_data = run.fold_data(fold)
    fold = fold_data.fold
    read_provenance(run.fold_dir(fold) / "finetune", fold_data, "finetune")  # images of an older version are not reused
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    generator_name = f"{run.config.name}:fold{fold}"
    record = {"generator": generator_name, "fold": fold, "label": CLASSES[label], "n": n, **asdict(options)}
    record.pop("batch_size")
    _check_previous(dest, record)
    (dest / SAMPLE_FILE).write_text(json.dumps({**record, "complete": False}, indent=2) + "\n")
    names = [f"images/{CLASSES[label]}_{index:06d}.png" for index in range(n)]
    generator, generated, seconds = None, 0, 0.0
    for start in tqdm(range(0, n, options.batch_size), desc=f"sampling {CLASSES[label]} (fold {fold})", unit="batch",
                      disable=not show_progress, dynamic_ncols=True):
        batch = range(start, min(start + options.batch_size, n))
        if all((dest / names[i]).is_file() for i in batch):
            continue  # drawn before an interruption
        generator = generator or load_generator(run, fold, device)
        started = time.perf_counter()
        patches = generator.generate(label, [options.seed + i for i in batch], options)
        seconds += time.perf_counter() - started
        generated += len(batch)
        for i, patch in zip(batch, patches):
            Image.fromarray(to_patch_size(patch)).save(dest / names[i])
    _write_manifest(dest / "manifest.csv", names, label, fold, generator_name, options)
    summary = {**record, "complete": True, "n_generated_this_call": generated,
               "images_per_second": generated / seconds if seconds else None, "device": str(device)}
    (dest / SAMPLE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return dest / "manifest.csv"


def _write_manifest(path: Path, names: list, label: int, fold: int, generator_name: str, options: SampleOptions) -> None:
    scratch = path.with_suffix(".csv.tmp")
    with scratch.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for index, name in enumerate(names):
            writer.writerow([name, CLASSES[label], f"synthetic:{generator_name}", "true", generator_name,
                             options.guidance, options.steps, options.sampler, options.seed + index])
    scratch.replace(path)


def sample_balance(run: GeneratorRun, fold, *, ratio: float | None, options: SampleOptions, device: torch.device,
                   show_progress: bool = True) -> Path:
    """Fold `fold`'s balance set: ratio x its training class gap of atypical images, at `<run>/fold_<k>/manifest.csv`."""
    ratio = run.config.sample.ratio if ratio is None else ratio
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    n = balance_count(run, fold, ratio)
    return write_samples(run, fold, label=CLASSES.index("atypical"), n=n, dest=run.fold_dir(fold), options=options,
                         device=device, show_progress=show_progress)
