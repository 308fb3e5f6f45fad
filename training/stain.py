"""Per-patch stain normalisation, the same torch code in training and inside the exported graph.

Reinhard et al.'s colour transfer ("Color Transfer between Images", IEEE CG&A 2001), as
histopathology uses it (e.g. Reinhard normalisation in Tellez et al., MedIA 2019): each patch's
CIELAB channels are moved to a target mean and standard deviation. The target is fitted on a fold's
training patches only (the mean of their per-patch statistics), and stored with the fold's model
arguments.

The sRGB <-> CIELAB maps are kornia's (rgb_to_lab / lab_to_rgb, D65: the same constants, the same
piecewise formulae), written out here for the graph ONNX Runtime runs on every stack: the 3x3
colour matrices as 1x1 convolutions (kornia's export makes them Einsum nodes, slower in ONNX
Runtime's CPU kernels), the cube root and the sRGB powers as exp(k * log(x)) (Pow with a fractional
exponent is slower there too), and one conversion and one set of statistics shared by
all members of an ensemble (docs/recipes.md). tests/test_stain.py holds them to kornia's maps.

Statistics are those of the whole patch (the figure and its context), taken before the centre crop:
a 64-px crop is mostly the figure itself, whose darkness says more about the class than the stain.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("none", "reinhard")
MIN_STD = 1e-2  # a uniform patch keeps its colour moved to the target mean, not divided by zero
FIT_BATCH = 512

# kornia.color's D65 constants (rgb.py, xyz.py, lab.py)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = torch.tensor([[3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
                            [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
                            [0.0556466391351772, -0.2040413383665112, 1.0573110696453443]])
_LAB_EPSILON, _LAB_EDGE = 0.008856, 0.2068966  # where t -> t^(1/3) meets the linear segment, and its image
# f(X/Xn), f(Y/Yn), f(Z/Zn) -> L, a, b and back, as 1x1 convolution weights (out, in, 1, 1) and biases
_F_TO_LAB = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
_F_TO_LAB_BIAS = torch.tensor([-16.0, 0.0, 0.0])
_LAB_TO_F = torch.tensor([[1 / 116.0, 1 / 500.0, 0.0], [1 / 116.0, 0.0, 0.0], [1 / 116.0, 0.0, -1 / 200.0]])
_LAB_TO_F_BIAS = torch.full((3,), 16.0 / 116.0)
_F_FLOOR = torch.tensor([-float("inf"), -float("inf"), 0.0]).view(1, 3, 1, 1)  # kornia clamps f(Z) at 0
_1x1 = (3, 3, 1, 1)
_XYZN_OF_LINEAR = (_RGB_TO_XYZ / _WHITE[:, None]).reshape(_1x1)  # linear RGB -> XYZ / white
_LINEAR_OF_XYZN = (_XYZ_TO_RGB * _WHITE[None, :]).reshape(_1x1)


def _power(x: torch.Tensor, exponent: float, floor: float) -> torch.Tensor:
    """max(x, floor) ** exponent as exp(exponent * log(.)): ONNX Runtime's Pow is slower."""
    return torch.exp(torch.log(x.clamp(min=floor)) * exponent)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> linear RGB (kornia's rgb_to_linear_rgb)."""
    curve = _power((rgb + 0.055) * (1 / 1.055), 2.4, (0.04045 + 0.055) / 1.055)
    return torch.where(rgb > 0.04045, curve, rgb * (1 / 12.92))


def linear_to_lab(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB (N, 3, H, W) -> CIELAB (N, 3, H, W), L in [0, 100] (kornia's rgb_to_lab after linearising)."""
    xyz = F.conv2d(linear, _XYZN_OF_LINEAR)
    f = torch.where(xyz > _LAB_EPSILON, _power(xyz, 1 / 3.0, _LAB_EPSILON), 7.787 * xyz + 4.0 / 29.0)
    return F.conv2d(f, _F_TO_LAB.reshape(_1x1), _F_TO_LAB_BIAS)


def lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (N, 3, H, W) -> sRGB clipped to [0, 1] (kornia's lab_to_rgb with clip=True)."""
    f = torch.maximum(F.conv2d(lab, _LAB_TO_F.reshape(_1x1), _LAB_TO_F_BIAS), _F_FLOOR)
    xyz = torch.where(f > _LAB_EDGE, f * f * f, f * (1 / 7.787) - (4.0 / 29.0) / 7.787)
    linear = F.conv2d(xyz, _LINEAR_OF_XYZN)
    rgb = torch.where(linear > 0.0031308, 1.055 * _power(linear, 1 / 2.4, 0.0031308) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


class LabPatches(NamedTuple):
    """Patches in CIELAB with each one's channel statistics over the whole patch, shared by all members."""

    lab: torch.Tensor  # (N, 3, H, W)
    mean: torch.Tensor  # (N, 3, 1, 1)
    std: torch.Tensor  # (N, 3, 1, 1)

    @classmethod
    def of_lab(cls, lab: torch.Tensor) -> "LabPatches":
        return cls(lab, lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True))

    @classmethod
    def of_bytes(cls, patches: torch.Tensor) -> "LabPatches":
        """uint8 (N, H, W, 3) patches."""
        return cls.of_unit(patches.permute(0, 3, 1, 2).float() * (1 / 255.0))

    @classmethod
    def of_unit(cls, images: torch.Tensor) -> "LabPatches":
        """Float RGB (N, 3, H, W) in [0, 1]: training batches after augmentation."""
        return cls.of_lab(linear_to_lab(srgb_to_linear(images)))


class ReinhardNorm(nn.Module):
    """LabPatches -> RGB (N, 3, h, w) in [0, 1] with each image's Lab mean/std set to the target's."""

    def __init__(self, target_mean, target_std):
        super().__init__()
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, patches: LabPatches, crop=None) -> torch.Tensor:
        """RGB of `crop(patches.lab)` with each image's Lab mean/std (of the whole image) moved to the target.

        `crop` (a function on (N, C, H, W)) is applied in Lab, before the conversion back, so only
        the pixels the network sees are converted (the maps are per pixel: cropping after is the same).
        """
        lab = crop(patches.lab) if crop is not None else patches.lab
        scale = self.target_std / patches.std.clamp(min=MIN_STD)  # (N, 3, 1, 1)
        offset = self.target_mean - patches.mean * scale  # (N, 3, 1, 1): one multiply-add per pixel
        return lab_to_srgb(lab * scale + offset)


def fit_reinhard_target(patches: torch.Tensor, index) -> dict:
    """The target of uint8 (N, H, W, 3) patches[index]: the mean of their per-patch Lab means and stds."""
    index = torch.as_tensor(index, dtype=torch.long)
    if not len(index):
        raise ValueError("cannot fit a stain target on no patches")
    means, stds = [], []
    for start in range(0, len(index), FIT_BATCH):
        lab = LabPatches.of_bytes(patches[index[start:start + FIT_BATCH]])
        means.append(lab.mean.flatten(1))
        stds.append(lab.std.flatten(1))
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
