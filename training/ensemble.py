"""The deployed computation as one nn.Module: uint8 patches in, P(atypical) out.

Per member: its own centre crop and normalisation, every test-time view, score =
logit(atypical) - logit(normal). Scores are averaged over views and members, divided by a
temperature and shifted by a bias fitted at export (training.calibration; 1 and 0 = none), then a
sigmoid (the seed paper's
rule, and nnU-Net's habit of averaging logits rather than probabilities). Training
scores its validation fold with `view_scores`, so out-of-fold numbers and the exported graph
compute the same thing.
"""

import torch
from torch import nn

from training.stain import LabPatches, stain_module

VIEWS = {
    "identity": lambda x: x,
    "vflip": lambda x: torch.flip(x, dims=[2]),
    "hflip": lambda x: torch.flip(x, dims=[3]),
    "rot90": lambda x: torch.rot90(x, 1, dims=[2, 3]),
    "rot180": lambda x: torch.rot90(x, 2, dims=[2, 3]),
    "rot270": lambda x: torch.rot90(x, 3, dims=[2, 3]),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: torch.rot90(x, 2, dims=[2, 3]).transpose(2, 3),
}
PAPER_VIEWS = ("identity", "vflip")
DIHEDRAL_VIEWS = tuple(VIEWS)


def view_scores(network: nn.Module, images: torch.Tensor, views=PAPER_VIEWS) -> torch.Tensor:
    """Mean over `views` of logit(atypical) - logit(normal); images (N, 3, H, W) preprocessed."""
    batch = torch.cat([VIEWS[view](images) for view in views])  # (V*N, 3, H, W)
    logits = network(batch)  # (V*N, 2)
    scores = (logits[:, 1] - logits[:, 0]).reshape(len(views), images.shape[0])  # (V, N)
    return scores.mean(dim=0)  # (N,)


class Preprocess(nn.Module):
    """A member's input preparation: stain normalisation (optional), centre crop, mean/std normalisation.

    Args:
        mean: per-channel mean (RGB, on pixels scaled to [0, 1]).
        std: per-channel standard deviation.
        crop: side of the centre crop in pixels; None keeps the whole patch. The figure sits in
            the centre of every patch, so a crop spends the network on it rather than on stroma.
        stain: a per-patch stain normaliser (training.stain.ReinhardNorm), its statistics taken
            over the whole patch before the crop; None: none.
    """

    def __init__(self, mean, std, crop: int | None = None, stain: nn.Module | None = None):
        super().__init__()
        mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std)
        self.register_buffer("shift", mean / std)
        self.crop = crop
        self.stain = stain

    @classmethod
    def from_args(cls, model_args: dict) -> "Preprocess":
        """The preprocessing recorded in a checkpoint's model_args."""
        return cls(model_args["mean"], model_args["std"], model_args.get("crop"), stain_module(model_args.get("stain")))

    def _centre(self, images: torch.Tensor, height_axis: int) -> torch.Tensor:
        if self.crop is None:
            return images
        top = (images.shape[height_axis] - self.crop) // 2
        left = (images.shape[height_axis + 1] - self.crop) // 2
        return images.narrow(height_axis, top, self.crop).narrow(height_axis + 1, left, self.crop)

    def forward(self, patches: torch.Tensor, lab: LabPatches | None = None) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, crop, crop); `lab`: the patches' LabPatches, if known."""
        if self.stain is not None:  # the whole patch's colour statistics, then the crop
            return self._stained(LabPatches.of_bytes(patches) if lab is None else lab)
        pixels = self._centre(patches, 1).permute(0, 3, 1, 2).float()  # (N, 3, h, w) in [0, 255]
        return pixels * (self.scale / 255.0) - self.shift

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) images in [0, 1] (training batches) -> normalised (N, 3, crop, crop)."""
        if self.stain is not None:
            return self._stained(LabPatches.of_unit(images))
        return self._centre(images, 2) * self.scale - self.shift

    def _stained(self, lab: LabPatches) -> torch.Tensor:
        return self.stain(lab, lambda x: self._centre(x, 2)) * self.scale - self.shift


class EnsembleClassifier(nn.Module):
    """Members (each with its own preprocessing) x views, averaged as scores, calibrated (T, b), a sigmoid.

    Args:
        networks: the trained classifiers (two logits: normal, atypical).
        preprocessors: one Preprocess per network.
        views: names of test-time views from VIEWS.
        temperature: the mean score is divided by it before the sigmoid (training.calibration);
            1 leaves the probabilities as the members give them.
        bias: added to the scaled score before the sigmoid (0: none).
    """

    def __init__(self, networks, preprocessors, views=PAPER_VIEWS, temperature: float = 1.0, bias: float = 0.0):
        super().__init__()
        if len(networks) != len(preprocessors) or not networks:
            raise ValueError("need one preprocessor per network, and at least one network")
        unknown = [view for view in views if view not in VIEWS]
        if unknown:
            raise ValueError(f"unknown views {unknown}; known: {', '.join(VIEWS)}")
        self.networks = nn.ModuleList(networks)
        self.preprocessors = nn.ModuleList(preprocessors)
        self.views = tuple(views)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature, self.bias = float(temperature), float(bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        lab = None  # members with stain normalisation share one Lab conversion and its statistics
        if any(preprocess.stain is not None for preprocess in self.preprocessors):
            lab = LabPatches.of_bytes(patches)
        scores = [
            view_scores(network, preprocess(patches, lab), self.views)  # (N,)
            for network, preprocess in zip(self.networks, self.preprocessors)
        ]
        return torch.sigmoid(torch.stack(scores).mean(dim=0) / self.temperature + self.bias)  # (N,)
