"""Foundation-model backbones with LoRA: sizes, an estimate of training memory, CPU inference time.

For each registry entry (training/models.py FOUNDATION_MODELS) at its input size:
- parameters and LoRA-trainable parameters (rank 8 on attn.qkv, the dinov3_vith16plus_lora
  config), counted on the network itself (built on PyTorch's meta device: nothing allocated);
- an ESTIMATE of training memory per GPU, not a measurement (no GPU here): float32 weights, plus
  AdamW state and gradients of what trains, plus bfloat16 activations by Korthikanti et al.'s
  count for a transformer layer, 34*s*h + 5*a*s^2 bytes per sample (s tokens, h width, a heads;
  "Reducing Activation Recomputation in Large Transformer Models", MLSys 2023); with gradient
  checkpointing about 2*s*h bytes per layer and sample are kept, plus one layer's full set;
- with --time, a MEASURED CPU forward of one member over one 16-page stack in both views (32
  images, float32, random weights: speed does not depend on the values), in PyTorch eager.
The largest batch that fits is the estimate's; check it on the GPU with a short run.
"""

import argparse
import time

from benchmarks import quiet
from benchmarks.common import report

GIB = 2**30
BATCH = 64


def _layout(network, input_size: int) -> dict:
    blocks = network.blocks
    attention = blocks[0].attn
    width = network.embed_dim
    heads = getattr(attention, "num_heads", width // 64)
    patch = network.patch_embed.patch_size[0]
    prefix = getattr(network, "num_prefix_tokens", 1)
    return {"layers": len(blocks), "width": width, "heads": heads, "tokens": (input_size // patch) ** 2 + prefix}


def estimate_gib(parameters: int, trainable: int, layout: dict, batch: int, checkpointing: bool) -> float:
    """Training memory per GPU (GiB) by the module docstring's count."""
    s, h, a, layers = layout["tokens"], layout["width"], layout["heads"], layout["layers"]
    weights = 4 * parameters + 16 * trainable  # fp32 weights; grads + two AdamW moments + master copy of what trains
    full_layer = 34 * s * h + 5 * a * s * s
    per_sample = (2 * s * h * layers + full_layer) if checkpointing else full_layer * layers
    return (weights + batch * per_sample) / GIB


def _largest_batch(parameters, trainable, layout, budget_gib, checkpointing) -> int:
    batch = 1
    while estimate_gib(parameters, trainable, layout, batch * 2, checkpointing) < budget_gib * 0.85:
        batch *= 2  # 15 % kept for the CUDA context, allocator slack and the optimiser's temporaries
    return batch if estimate_gib(parameters, trainable, layout, batch, checkpointing) < budget_gib * 0.85 else 0


def forward_seconds(name: str, input_size: int, repeats: int = 2) -> float:
    """Median seconds of one member's forward over 32 images on the CPU (random weights)."""
    import torch

    from training.models import create_classifier

    network = create_classifier(name).eval()
    images = torch.rand(32, 3, input_size, input_size)
    times = []
    with torch.inference_mode():
        network(images[:2])
        for _ in range(repeats):
            started = time.perf_counter()
            network(images)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", nargs="*", default=[], metavar="NAME",
                        help="also time a CPU forward of these entries (e.g. dinov3_vits16 uni)")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    from training.config import load_config
    from training.lora import apply_lora, count
    from training.models import FOUNDATION_MODELS, create_classifier

    lora = load_config("dinov3_vith16plus_lora").lora
    state = quiet.from_arguments(args)
    rows = []
    for name, spec in FOUNDATION_MODELS.items():
        with torch.device("meta"):
            network = create_classifier(name)
            layout = _layout(network, spec.input_size)
            counts = count(apply_lora(network, lora))
        total, trainable = counts["total"], counts["trainable"]
        fits = [_largest_batch(total, trainable, layout, budget, checkpointing)
                for budget, checkpointing in ((16, False), (16, True), (24, False), (24, True))]
        seconds = forward_seconds(name, spec.input_size) if name in args.time else None
        rows.append([name, f"{total / 1e6:.0f} M", f"{trainable / 1e6:.2f} M", f"{spec.input_size} px, {layout['tokens']}",
                     f"{estimate_gib(total, trainable, layout, BATCH, False):.1f}",
                     f"{estimate_gib(total, trainable, layout, BATCH, True):.1f}",
                     " / ".join(str(b) for b in fits),
                     f"{seconds:.1f} s (x5 folds: {5 * seconds:.0f} s)" if seconds is not None else "not timed"])
    report("foundation_models", "Foundation-model backbones with LoRA: sizes, ESTIMATED training memory, CPU inference",
           ["backbone", "parameters", "trainable (LoRA r8 qkv + head)", "input, tokens",
            f"est. GiB at batch {BATCH}", f"est. GiB at batch {BATCH}, checkpointing",
            "est. largest batch: 16 GB / 16 GB ckpt / 24 GB / 24 GB ckpt",
            "measured CPU forward, 1 member, 16 pages x 2 views"],
           rows, state=state, packages=("torch", "timm", "peft"),
           notes=["Memory columns are estimates from parameter counts and the activation formula in the script's "
                  "docstring (bfloat16 autocast), not measurements: no GPU was available. 0 = does not fit even "
                  "at batch 1 by the estimate. CPU times are measured in PyTorch eager, float32, on this machine."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
