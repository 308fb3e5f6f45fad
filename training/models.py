"""Backbones as a name -> spec registry over timm, and the classifier factory.

Follows timm's habit (`timm/models/_registry.py`): variants are tiny entries in one table, so a CLI
offers `choices=list(BACKBONES)`. A checkpoint stores only `model_args` (plain data) next to its
safetensors weights; `create_classifier(**model_args)` rebuilds the network.
"""

from dataclasses import asdict, dataclass, field

from torch import nn

from training.torch_compat import import_timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Args:
        timm_name: the timm architecture name.
        mean: per-channel mean of the input normalisation (RGB, on [0, 1] pixels).
        std: per-channel standard deviation of the input normalisation.
        timm_kwargs: extra keyword arguments for `timm.create_model`.
        note: one line for `--help` listings.
    """

    timm_name: str
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    timm_kwargs: dict = field(default_factory=dict)
    note: str = ""


BACKBONES = {
    "resnet10t_slim": BackboneSpec(
        "resnet10t", timm_kwargs={"channels": (32, 64, 128, 256)},
        note="1.3 M parameters, ResNet-10-T at half width; trains from scratch on 2 CPU cores (the shipped default)"),
    "convnext_atto": BackboneSpec(
        "convnext_atto", note="3.4 M parameters; a small ConvNeXt for CPU experiments"),
    "convnext_small": BackboneSpec(
        "convnext_small", timm_kwargs={"drop_path_rate": 0.2},
        note="50 M parameters; the seed paper's backbone (GPU)"),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`, with a clear error listing the known names."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def model_args(backbone: str, num_classes: int = 2, crop: int | None = None) -> dict:
    """The plain data a checkpoint stores to rebuild its network and its input preprocessing."""
    spec = backbone_spec(backbone)
    return {"backbone": backbone, "num_classes": num_classes, "mean": list(spec.mean), "std": list(spec.std),
            "crop": crop}


def create_classifier(backbone: str, num_classes: int = 2, **_preprocessing) -> nn.Module:
    """A randomly initialised timm classifier for `backbone` (preprocessing args are ignored here)."""
    spec = backbone_spec(backbone)
    timm = import_timm()
    return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **spec.timm_kwargs)


def describe(name: str) -> dict:
    """The registry entry as plain data (for results folders and model.json)."""
    return {"name": name, **asdict(backbone_spec(name))}
