"""Per-patch stain normalisation, the same torch code in training and inside the exported graph.

Reinhard et al.'s colour transfer ("Color Transfer between Images", IEEE CG&A 2001), as
histopathology uses it (e.g. Reinhard normalisation in Tellez et al., MedIA 2019): each patch's
CIELAB channels are moved to a target mean and standard deviation. The colour conversions are
kornia's (rgb_to_lab / lab_to_rgb, D65), chosen over a hand-written one: they are differentiable
torch ops that export to ONNX, so the graph normalises exactly as training did and process.py needs
nothing more. The target is fitted on a fold's training patches only (the mean of their per-patch
statistics), and stored with the fold's model arguments.

Statistics are those of the whole patch (the figure and its context), taken before the centre crop:
a 64-px crop is mostly the figure itself, whose darkness says more about the class than the stain.
"""

import numpy as np
import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import nn

METHODS = ("none", "reinhard")
MIN_STD = 1e-2  # a uniform patch keeps its colour moved to the target mean, not divided by zero
FIT_BATCH = 512


def unit_rgb(patches: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) patches -> float RGB (N, 3, H, W) in [0, 1], what the colour maps take."""
    return patches.permute(0, 3, 1, 2).float() / 255.0


def _lab_statistics(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std of (N, 3, H, W), each (N, 3, 1, 1)."""
    return lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True)


class ReinhardNorm(nn.Module):
    """Lab images (N, 3, H, W) -> RGB in [0, 1] with each image's Lab mean/std set to the target's."""

    def __init__(self, target_mean, target_std):
        super().__init__()
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, lab: torch.Tensor, crop=None) -> torch.Tensor:
        """RGB of `crop(lab)` with each image's Lab mean/std (taken over the whole image) moved to the target.

        `lab` is rgb_to_lab of the images (the members of one ensemble share it); `crop` (a function
        on (N, C, H, W)) is applied in Lab, before the conversion back, so only the pixels the network
        sees are converted (the maps are per pixel: the result is the same as cropping after).
        """
        mean, std = _lab_statistics(lab)
        lab = crop(lab) if crop is not None else lab
        moved = (lab - mean) / std.clamp(min=MIN_STD) * self.target_std + self.target_mean
        return lab_to_rgb(moved, clip=True)


def fit_reinhard_target(patches: torch.Tensor, index) -> dict:
    """The target of uint8 (N, H, W, 3) patches[index]: the mean of their per-patch Lab means and stds."""
    index = torch.as_tensor(index, dtype=torch.long)
    if not len(index):
        raise ValueError("cannot fit a stain target on no patches")
    means, stds = [], []
    for start in range(0, len(index), FIT_BATCH):
        mean, std = _lab_statistics(rgb_to_lab(unit_rgb(patches[index[start:start + FIT_BATCH]])))
        means.append(mean.flatten(1))
        stds.append(std.flatten(1))
    return {"method": "reinhard",
            "target_mean": [float(v) for v in torch.cat(means).mean(dim=0)],
            "target_std": [float(v) for v in torch.cat(stds).mean(dim=0)]}


def stain_args(method: str, patches: torch.Tensor, train_index) -> dict:
    """What model_args records for `method` ("none": nothing), fitted on the training patches only."""
    if method not in METHODS:
        raise ValueError(f"stain_norm must be one of {', '.join(METHODS)}, got {method!r}")
    return {} if method == "none" else {"stain": fit_reinhard_target(patches, train_index)}


def stain_module(args: dict | None) -> nn.Module | None:
    """The normaliser a model_args "stain" entry describes, or None."""
    if not args:
        return None
    if args.get("method") != "reinhard":
        raise ValueError(f"unknown stain normalisation {args.get('method')!r}; known: reinhard")
    target_mean, target_std = np.asarray(args["target_mean"]), np.asarray(args["target_std"])
    if target_mean.shape != (3,) or target_std.shape != (3,) or not (target_std > 0).all():
        raise ValueError(f"a Reinhard target needs 3 means and 3 positive stds, got {args}")
    return ReinhardNorm(target_mean.tolist(), target_std.tolist())
