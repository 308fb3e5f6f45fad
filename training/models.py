"""Backbones as a name -> spec registry over timm, the classifier factory, and pretrained-weight loading.

Follows timm's habit (`timm/models/_registry.py`): variants are tiny entries in one table, so a CLI
offers `choices=list(BACKBONES)`. A checkpoint stores only `model_args` (plain data) next to its
safetensors weights; `create_classifier(**model_args)` rebuilds the network.

Pretrained weights come from timm's hub names when online, or from a local file or folder
(`weights=`): timm's own checkpoint format, a Hugging Face hub snapshot folder, Lunit's released
`dino_vit_small_patch8_ep200.torch` (a plain timm VisionTransformer state dict at 224 px; Kang et al.,
"Benchmarking Self-Supervised Learning on Diverse Pathology Datasets", CVPR 2023) or a DINO training
checkpoint (`teacher` / `backbone.` prefixes). The architecture's own timm `checkpoint_filter_fn`
adapts it (e.g. resizes ViT position embeddings to 128 px), and loading fails unless every key of
the checkpoint has a place and every place but the new classifier head is filled.
"""

import importlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from training.torch_compat import import_timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The normalisation Lunit's ViT-S models were pre-trained with (TCGA patches).
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".torch", ".ckpt")


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be found, fetched or mapped onto the network."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Args:
        timm_name: the timm architecture name.
        mean: per-channel mean of the input normalisation (RGB, on [0, 1] pixels).
        std: per-channel standard deviation of the input normalisation.
        timm_kwargs: extra keyword arguments for `timm.create_model`.
        hub_weights: the timm (or `hf-hub:`) name of its pretrained weights, None if it has none.
        note: one line for `--help` listings.
        input_size: the side the network sees when the config sets no `input_crop` (a multiple of
            the ViT patch size: 126 = 9 x 14); None: the whole 128 px patch.
        source: where the architecture, normalisation and tokens were read (model card, paper).
    """

    timm_name: str
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    timm_kwargs: dict = field(default_factory=dict)
    hub_weights: str | None = None
    note: str = ""
    input_size: int | None = None
    source: str = ""


BACKBONES = {
    "resnet10t_slim": BackboneSpec(
        "resnet10t", timm_kwargs={"channels": (32, 64, 128, 256)},
        note="1.3 M parameters, ResNet-10-T at half width; trains from scratch on 2 CPU cores (the shipped default)"),
    "resnet18d_slim": BackboneSpec(
        "resnet18d", timm_kwargs={"channels": (32, 64, 128, 256)},
        note="2.8 M parameters, ResNet-18-D at half width: two basic blocks per stage where resnet10t_slim has one"),
    "convnext_atto": BackboneSpec(
        "convnext_atto", note="3.4 M parameters; a small ConvNeXt for CPU experiments"),
    "convnext_small": BackboneSpec(
        "convnext_small", timm_kwargs={"drop_path_rate": 0.2}, hub_weights="convnext_small.fb_in1k",
        note="50 M parameters, ImageNet-1k weights; the seed paper's backbone (GPU)"),
    "lunit_vits8": BackboneSpec(
        "vit_small_patch8_224", mean=LUNIT_MEAN, std=LUNIT_STD, timm_kwargs={"img_size": 128},
        hub_weights="hf-hub:1aurent/vit_small_patch8_224.lunit_dino",
        note="22 M parameters, Lunit's DINO weights from 19 M TCGA patches, 128 px input (GPU)"),
}

# Foundation models whose weights a user may hold (none can be fetched or shipped here): each needs
# `weights:` pointing at a local copy; they are meant for LoRA (config `lora:`). Architectures and
# normalisation as their model cards give them to timm; position embeddings are resized from the
# card's 224 px to our input by timm's checkpoint_filter_fn at load. Layer classes are dotted names
# (resolved when the network is built) so that the registry stays plain data for model.json.
_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}


def _foundation(timm_name: str, input_size: int, note: str, source: str, timm_kwargs: dict | None = None,
                **normalisation) -> BackboneSpec:
    """A foundation-model entry: timm builds it at `input_size` (position embeddings resized at load)."""
    return BackboneSpec(timm_name, timm_kwargs={"img_size": input_size, **(timm_kwargs or {})},
                        input_size=input_size, note=note, source=source, **normalisation)


FOUNDATION_MODELS = {
    "uni": _foundation(
        "vit_large_patch16_224", 128, "UNI ViT-L/16, 303 M parameters, 100 M pathology patches (local weights, GPU)",
        "MahmoodLab/UNI model card; Chen et al., Nature Medicine 2024", {"init_values": 1e-5}),
    "uni2_h": _foundation(
        "vit_giant_patch14_224", 126, "UNI2-h ViT-H/14 with 8 register tokens, 681 M parameters (local weights, GPU)",
        "MahmoodLab/UNI2-h model card", {"patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                                         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
                                         "reg_tokens": 8, **_SWIGLU}),
    "virchow2": _foundation(
        "vit_huge_patch14_224", 126,
        "Virchow2 ViT-H/14 with 4 register tokens, 632 M parameters; class-token head (local weights, GPU)",
        "paige-ai/Virchow2 model card; Zimmermann et al., arXiv 2408.00738",
        {"init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, **_SWIGLU}),
    "h_optimus_0": _foundation(
        "vit_giant_patch14_reg4_dinov2", 126,
        "H-optimus-0 ViT-g/14 with 4 register tokens, 1.1 B parameters (local weights, GPU)",
        "bioptimus/H-optimus-0 model card", {"init_values": 1e-5},
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517)),
    "dinov2_vits14": _foundation(
        "vit_small_patch14_dinov2", 126, "DINOv2 ViT-S/14, 22 M parameters, natural images (local weights)",
        "timm vit_small_patch14_dinov2.lvd142m; Oquab et al., TMLR 2024"),
    "dinov2_vitl14_reg": _foundation(
        "vit_large_patch14_reg4_dinov2", 126,
        "DINOv2 ViT-L/14 with 4 register tokens, 304 M parameters (local weights, GPU)",
        "timm vit_large_patch14_reg4_dinov2.lvd142m; Darcet et al., ICLR 2024"),
    "dinov3_vits16": _foundation(
        "vit_small_patch16_dinov3", 128,
        "DINOv3 ViT-S/16 with RoPE and 4 register tokens, 22 M parameters (local weights)",
        "timm vit_small_patch16_dinov3.lvd1689m; Simeoni et al., arXiv 2508.10104"),
    "dinov3_vith16plus": _foundation(
        "vit_huge_plus_patch16_dinov3", 128,
        "DINOv3 ViT-H+/16, 840 M parameters: the MIDOG 2025 Track 2 winner's backbone (local weights, GPU)",
        "timm vit_huge_plus_patch16_dinov3.lvd1689m; arXiv 2508.10104, 2508.21041"),
}
BACKBONES.update(FOUNDATION_MODELS)
TIMM_PREFIX = "timm:"  # `timm:<architecture>`: any timm model, with the config's backbone_kwargs


def backbone_spec(name: str, backbone_kwargs: dict | None = None) -> BackboneSpec:
    """The registry entry for `name` (or `timm:<architecture>`), with `backbone_kwargs` over its timm kwargs."""
    if name.startswith(TIMM_PREFIX):
        timm = import_timm()
        architecture = name.removeprefix(TIMM_PREFIX)
        if architecture not in timm.list_models():
            raise KeyError(f"unknown timm architecture {architecture!r} (backbone {name!r})")
        config = timm.models.get_pretrained_cfg(architecture)  # its default weights' normalisation
        spec = BackboneSpec(architecture, mean=tuple(getattr(config, "mean", IMAGENET_MEAN)),
                            std=tuple(getattr(config, "std", IMAGENET_STD)), note="any timm architecture")
    elif name in BACKBONES:
        spec = BACKBONES[name]
    else:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}, or {TIMM_PREFIX}<timm architecture>")
    return replace(spec, timm_kwargs={**spec.timm_kwargs, **(backbone_kwargs or {})}) if backbone_kwargs else spec


def model_args(backbone: str, num_classes: int = 2, crop: int | None = None, backbone_kwargs: dict | None = None) -> dict:
    """The plain data a checkpoint stores to rebuild its network and its input preprocessing."""
    spec = backbone_spec(backbone, backbone_kwargs)
    args = {"backbone": backbone, "num_classes": num_classes, "mean": list(spec.mean), "std": list(spec.std),
            "crop": crop if crop is not None else spec.input_size}
    return {**args, "backbone_kwargs": dict(backbone_kwargs)} if backbone_kwargs else args


def _timm_kwargs(spec: BackboneSpec) -> dict:
    """The spec's timm kwargs with dotted layer names (e.g. "torch.nn.SiLU") made classes."""
    def resolve(value):
        if isinstance(value, str) and value.startswith(("timm.layers.", "torch.nn.")):
            module, _, attribute = value.rpartition(".")
            return getattr(importlib.import_module(module), attribute)
        return value

    return {key: resolve(value) for key, value in spec.timm_kwargs.items()}


def create_classifier(backbone: str, num_classes: int = 2, *, pretrained: bool = False,
                      weights: str | Path | None = None, backbone_kwargs: dict | None = None,
                      **_preprocessing) -> nn.Module:
    """A timm classifier for `backbone`: random, from its hub weights (`pretrained`), or from `weights`.

    Preprocessing entries of model_args (mean, std, crop) are accepted and ignored here.
    """
    spec = backbone_spec(backbone, backbone_kwargs)
    timm = import_timm()
    kwargs = _timm_kwargs(spec)
    if weights:
        network = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **kwargs)
        load_pretrained(network, Path(weights))
        return network
    if pretrained:
        if not spec.hub_weights:
            if spec.source:  # a foundation model: its licence keeps its weights off timm's hub names
                raise WeightsError(f"backbone {backbone!r} loads its weights from a local copy only ({spec.source}): "
                                   "set weights: PATH in the config")
            raise WeightsError(f"backbone {backbone!r} has no pretrained weights; train it from scratch")
        try:
            return timm.create_model(spec.hub_weights, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as error:  # hub downloads raise many kinds (OSError, HTTP, hub-specific)
            raise WeightsError(f"cannot fetch the pretrained weights {spec.hub_weights} ({type(error).__name__}: "
                               f"{error}); download them where there is internet and pass --weights PATH") from None
    return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **kwargs)


def weight_file(path: Path) -> Path:
    """The checkpoint file a path names: itself, or the one weight file inside a folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise WeightsError(f"{path}: no such weight file or folder")
    for name in WEIGHT_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) != 1:
        raise WeightsError(f"{path}: expected one weight file ({', '.join(WEIGHT_FILE_NAMES)} or one *"
                           f"{'/*'.join(WEIGHT_SUFFIXES)}), found {[p.name for p in candidates]}")
    return candidates[0]


def read_state_dict(path: Path) -> dict:
    """A backbone state dict from a checkpoint in any of the supported layouts (module docstring)."""
    timm = import_timm()
    try:
        state = timm.models.load_state_dict(str(weight_file(path)), use_ema=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise WeightsError(f"{path}: cannot read weights ({error})") from None
    if isinstance(state.get("teacher"), dict):  # a DINO training checkpoint: the teacher is the model
        state = state["teacher"]
    for prefix in ("module.", "backbone.", "encoder."):
        if state and all(key.startswith(prefix) or key.startswith("head.") for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def load_pretrained(network: nn.Module, path: Path) -> dict:
    """Load `path` into `network`; raise unless every key maps. Returns what was loaded and what is new."""
    state = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(network).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, network)
        except (KeyError, RuntimeError, ValueError) as error:
            raise WeightsError(f"{path}: does not fit {type(network).__name__} ({type(error).__name__}: {error})") from None
    head = network.pretrained_cfg.get("classifier") or "head"
    own = network.state_dict()
    # The classifier is new (2 classes): drop the checkpoint's head, and DINO's projection head.
    state = {k: v for k, v in state.items()
             if not (k.startswith(head) and (k not in own or own[k].shape != v.shape))}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise WeightsError(f"{path}: shapes differ for {mismatched[:5]} (another architecture?)")
    result = network.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise WeightsError(f"{path}: does not fit {type(network).__name__}: {len(missing)} weights missing "
                           f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})")
    return {"loaded": len(state), "new": list(result.missing_keys)}

