"""LoRA fine-tuning of a pretrained ViT through peft: only the adapters and the head train.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022; the MIDOG 2025 Track 2
winner (arXiv 2508.21041) and AMi-Br's best numbers (arXiv 2506.21444) adapted pathology and
natural-image foundation models this way. peft wraps the timm network (its "custom models" route:
`target_modules` name the Linear layers to adapt, `modules_to_save` the new head); optionally the
last blocks train in full as well. A fold folder then stores only what trained (adapters, head,
unfrozen blocks) beside a pointer to the base weights and their sha256; `rebuild` loads the base,
checks its digest, applies the adapters and merges them, so export sees a plain timm ViT.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from inference.model import sha256_of
from training.torch_compat import ensure_torchvision


@dataclass
class LoraConfig:
    """LoRA settings; rank 0 switches LoRA off (the whole network trains).

    `target_modules` are module-name suffixes in the timm network (ViT and Eva blocks name their
    attention layers `attn.qkv` and `attn.proj`, their MLP `mlp.fc1`/`mlp.fc2`).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list = field(default_factory=lambda: ["attn.qkv", "attn.proj"])
    unfreeze_last_blocks: int = 0  # these last transformer blocks (and the final norm) train in full too

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class LoraError(RuntimeError):
    """A LoRA setting, checkpoint or base-weight file that does not fit."""


def _import_peft():
    ensure_torchvision()  # peft imports transformers, which imports torchvision
    import peft

    return peft


def apply_lora(network: nn.Module, lora: LoraConfig) -> nn.Module:
    """`network` (a timm classifier) wrapped by peft: adapters on the target modules, head and last blocks trainable."""
    if lora.rank < 0 or lora.unfreeze_last_blocks < 0:
        raise LoraError(f"lora.rank and lora.unfreeze_last_blocks must be >= 0, got {lora.rank}, {lora.unfreeze_last_blocks}")
    peft = _import_peft()
    head = network.pretrained_cfg.get("classifier") or "head"
    names = [name for name, _ in network.named_modules()]
    unmatched = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise LoraError(f"lora.target_modules {unmatched} match no layer of {type(network).__name__} "
                        f"(its attention layers are e.g. {[n for n in names if n.endswith('attn.qkv')][:1]})")
    blocks = getattr(network, "blocks", None)
    if lora.unfreeze_last_blocks > (len(blocks) if blocks is not None else 0):
        raise LoraError(f"lora.unfreeze_last_blocks {lora.unfreeze_last_blocks}: the network has "
                        f"{len(blocks) if blocks is not None else 0} blocks")
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), modules_to_save=[head])
    wrapped = peft.get_peft_model(network, config)
    if lora.unfreeze_last_blocks:
        first = len(blocks) - lora.unfreeze_last_blocks
        for name, parameter in wrapped.named_parameters():
            inner = name.removeprefix("base_model.model.")
            in_last = inner.startswith("blocks.") and int(inner.split(".")[1]) >= first
            if in_last or inner.startswith(("norm.", "fc_norm.")):
                parameter.requires_grad_(True)
    return wrapped


def trainable_names(network: nn.Module) -> list:
    """Names of the parameters that train."""
    return [name for name, parameter in network.named_parameters() if parameter.requires_grad]


def trained_state(names: list, network: nn.Module) -> dict:
    """The tensors `names` of `network`'s state (e.g. the EMA copy's), detached, contiguous, on the CPU."""
    state = network.state_dict()
    return {name: state[name].detach().contiguous().cpu() for name in names}


def load_trained_state(network: nn.Module, state: dict) -> None:
    """Load only-what-trained into a LoRA-wrapped `network`; every stored tensor must find its place."""
    result = network.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise LoraError(f"{len(result.unexpected_keys)} stored tensors fit no place (e.g. {result.unexpected_keys[:3]}); "
                        "another LoRA setting or architecture?")
    missing = set(trainable_names(network)) - set(state)
    if missing:
        raise LoraError(f"{len(missing)} trained tensors missing from the checkpoint (e.g. {sorted(missing)[:3]})")


def base_weights_record(path: str | Path) -> dict:
    """Where the base weights are and their sha256 (what a LoRA checkpoint points at)."""
    from training.models import weight_file

    file = weight_file(Path(path)).resolve()
    return {"path": str(file), "sha256": sha256_of(file)}


def check_base_weights(record: dict, override: str | Path | None = None) -> Path:
    """The base weight file of a LoRA checkpoint (or `override`), refused unless its sha256 matches."""
    from training.models import weight_file

    path = weight_file(Path(override or record["path"]))
    digest = sha256_of(path)
    if digest != record["sha256"]:
        raise LoraError(f"{path}: sha256 {digest[:12]}..., but the adapters were trained on base weights "
                        f"{record['sha256'][:12]}... ({record['path']}); LoRA adapters only fit their own base")
    return path


def rebuild(args: dict, state: dict, base_weights: str | Path | None = None) -> nn.Module:
    """A fold's plain timm network from its model_args (with `lora`, `base_weights`) and trained tensors.

    The adapters are merged into the base weights, so the result has no LoRA layers left.
    """
    from training.models import create_classifier

    base = check_base_weights(args["base_weights"], base_weights)
    network = create_classifier(**{k: v for k, v in args.items() if k not in ("lora", "base_weights")}, weights=base)
    wrapped = apply_lora(network, LoraConfig(**args["lora"]))
    load_trained_state(wrapped, state)
    return wrapped.merge_and_unload()


def lora_args(lora: LoraConfig, weights: str | Path | None) -> dict:
    """The model_args entries of a LoRA fold: its settings and its base weights' record."""
    if not weights:
        raise LoraError("lora.rank > 0 needs the base weights as a local file: set `weights:` in the config")
    return {"lora": asdict(lora), "base_weights": base_weights_record(weights)}


def count(network: nn.Module) -> dict:
    """Trainable and total parameter counts."""
    return {"trainable": sum(p.numel() for p in network.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in network.parameters())}

