"""Histopathology augmentations applied to whole batches in torch (no per-image Python loop).

Mitotic figures have no orientation, so the eight dihedral views are free; stain varies between
labs and scanners, so colour is jittered in HED space (Tellez et al., "Quantifying the effects of
data augmentation and stain color normalization", MedIA 2019) and in brightness/contrast/
saturation and hue; small scale/shift and black edge bands imitate the centre-padded crops
of figures near a region's edge that the official test stacks contain.

Mixup and CutMix (`mix_pairs`) act on the network's input (after the centre crop, so a pasted box's
area is its share of what the network sees) and are scored as lam * loss(own labels) + (1 - lam) *
loss(partner's labels): that stays right with class-weighted, focal and soft-label losses, which are
not linear in a mixed target. timm's Mixup mixes one-hot targets and draws from NumPy's global
random state; here every draw comes from the fold's generator, so a resumed fold repeats it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.special import betaincinv

_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)
# Ruifrok & Johnston's H&E-DAB stain vectors (as in scikit-image's rgb_from_hed).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclass
class AugmentConfig:
    """Strengths and probabilities of each augmentation; 0 switches one off."""

    dihedral: bool = True
    scale: float = 0.1  # zoom factor drawn from [1 - scale, 1 + scale]
    shift: float = 0.05  # translation as a fraction of the patch size
    hed: float = 0.05  # HED stain jitter: multiply by 1 +- hed, add +- hed
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02  # hue rotation, as a fraction of a full turn: +- hue * 360 degrees
    blur_p: float = 0.1
    border_p: float = 0.1  # chance of a black band at one edge
    border_max: float = 0.35  # widest band, as a fraction of the patch size
    mixup: float = 0.0  # alpha of Beta(alpha, alpha): blend image pairs (Zhang et al., ICLR 2018); 0: off
    cutmix: float = 0.0  # alpha of Beta(alpha, alpha): paste a box of another image (Yun et al., ICCV 2019); 0: off


def _uniform(n, low, high, generator, device):
    """n draws from U(low, high), made by the (CPU) generator and moved to `device`."""
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def _chance(n, probability, generator, device):
    """n booleans, each True with `probability`, drawn on the CPU generator."""
    return (torch.rand(n, generator=generator) < probability).to(device)


def dihedral(images, generator):
    """Each image in one of the 8 flips/rotations, drawn independently."""
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator).to(images.device)
    out = images.clone()
    for k in range(8):
        chosen = choice == k
        if chosen.any():
            view = torch.rot90(images[chosen], k % 4, dims=(2, 3))
            out[chosen] = view.transpose(2, 3) if k >= 4 else view
    return out


def scale_shift(images, scale, shift, generator):
    """Zoom and translate each image; the area uncovered is filled by reflection."""
    n = images.shape[0]
    zoom = _uniform(n, 1 - scale, 1 + scale, generator, images.device)
    offset = _uniform(2 * n, -2 * shift, 2 * shift, generator, images.device).view(n, 2)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def hed_jitter(images, strength, generator):
    """Scale and shift the haematoxylin, eosin and DAB optical densities of each image."""
    n = images.shape[0]
    alpha = _uniform(3 * n, 1 - strength, 1 + strength, generator, images.device).view(n, 1, 1, 3)
    beta = _uniform(3 * n, -strength, strength, generator, images.device).view(n, 1, 1, 3)
    density = -torch.log(images.clamp(min=1e-3)).permute(0, 2, 3, 1)  # (N, H, W, 3)
    stains = density @ _HED_FROM_RGB.to(images.device)
    density = (stains * alpha + beta) @ _RGB_FROM_HED.to(images.device)
    return torch.exp(-density).permute(0, 3, 1, 2).clamp(0, 1)


def colour_jitter(images, brightness, contrast, saturation, generator):
    """Brightness, contrast and saturation factors drawn per image."""
    n, device = images.shape[0], images.device
    images = images * _uniform(n, 1 - brightness, 1 + brightness, generator, device).view(n, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * _uniform(n, 1 - contrast, 1 + contrast, generator, device).view(n, 1, 1, 1)
    grey = (images * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    images = grey + (images - grey) * _uniform(n, 1 - saturation, 1 + saturation, generator, device).view(n, 1, 1, 1)
    return images.clamp(0, 1)


def hue_rotation(images, strength, generator):
    """Rotate each image's hue by an angle drawn from +- strength turns (a rotation of YIQ's chroma plane)."""
    n = images.shape[0]
    angle = _uniform(n, -strength, strength, generator, images.device) * 2 * torch.pi
    rotation = torch.zeros(n, 3, 3, device=images.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1] = rotation[:, 2, 2] = torch.cos(angle)
    rotation[:, 1, 2], rotation[:, 2, 1] = -torch.sin(angle), torch.sin(angle)
    to_yiq, to_rgb = _YIQ_FROM_RGB.to(images.device), _RGB_FROM_YIQ.to(images.device)
    transform = to_rgb @ rotation @ to_yiq  # (N, 3, 3), RGB -> RGB
    return torch.einsum("nij,njhw->nihw", transform, images).clamp(0, 1)


def blur(images, probability, generator):
    """Gaussian blur (sigma 0.5 to 1.2, one per batch) on a random subset of images."""
    chosen = _chance(images.shape[0], probability, generator, images.device)
    if not chosen.any():
        return images
    sigma = float(_uniform(1, 0.5, 1.2, generator, images.device))
    taps = torch.arange(-2, 3, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
    blurred = F.conv2d(F.pad(images[chosen], (2, 2, 0, 0), mode="reflect"), kernel, groups=3)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), kernel.transpose(2, 3), groups=3)
    out = images.clone()
    out[chosen] = blurred
    return out


def black_border(images, probability, max_fraction, generator):
    """A black band along one random edge of a random subset of images."""
    n, _, height, width = images.shape
    chosen = _chance(n, probability, generator, "cpu")
    out = images.clone()
    for index in torch.nonzero(chosen).flatten().tolist():
        edge = int(torch.randint(0, 4, (1,), generator=generator))
        band = int(torch.randint(4, max(5, int(max_fraction * height)), (1,), generator=generator))
        if edge == 0:
            out[index, :, :band] = 0
        elif edge == 1:
            out[index, :, height - band:] = 0
        elif edge == 2:
            out[index, :, :, :band] = 0
        else:
            out[index, :, :, width - band:] = 0
    return out


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment (N, 3, H, W) float images in [0, 1]; returns a new tensor of the same shape."""
    if config.dihedral:
        images = dihedral(images, generator)
    if config.scale or config.shift:
        images = scale_shift(images, config.scale, config.shift, generator)
    if config.hed:
        images = hed_jitter(images, config.hed, generator)
    if config.brightness or config.contrast or config.saturation:
        images = colour_jitter(images, config.brightness, config.contrast, config.saturation, generator)
    if config.hue:
        images = hue_rotation(images, config.hue, generator)
    if config.blur_p:
        images = blur(images, config.blur_p, generator)
    if config.border_p:
        images = black_border(images, config.border_p, config.border_max, generator)
    return images


def mix_pairs(images: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator):
    """Mix each image with a partner from the same batch; returns (mixed, partner index, lam).

    One draw per batch: lam ~ Beta(alpha, alpha) is the share of each image's own content (for
    CutMix, corrected to the box actually pasted). With both alphas set, half the batches use each.
    """
    n, _, height, width = images.shape
    partner = torch.randperm(n, generator=generator).to(images.device)
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(1, generator=generator)) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(betaincinv(alpha, alpha, float(torch.rand(1, generator=generator))))
    if not use_cutmix:
        return lam * images + (1 - lam) * images[partner], partner, lam
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    centre_y, centre_x = (int(torch.randint(0, size, (1,), generator=generator)) for size in (height, width))
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h - cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w - cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
    return mixed, partner, 1 - (bottom - top) * (right - left) / (height * width)
