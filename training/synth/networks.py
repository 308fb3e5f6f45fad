"""The generator's networks: a class-conditional DiT over the latents of an AutoencoderKL.

Only nn.Modules live here (facebookresearch/DiT `models.py`); the noise schedule, the loss and
the sampler are behind `diffusion.create_diffusion`. Both networks are diffusers' own
(`DiTTransformer2DModel`, Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023;
`AutoencoderKL`, Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
CVPR 2022); this module adds what DiT's reference code has and diffusers' class does not:
DiT's weight initialisation (adaLN-Zero), one label drop per sample instead of one per block, and
classifier-free guidance as a model method. DiT variants are a name -> size registry (timm's habit).
"""

from pathlib import Path

import torch
from torch import nn

from training.torch_compat import ensure_torchvision

# Sizes from the DiT paper (Table 1), plus a tiny one for CPU runs and a test-only one (timm's "test_*").
DIT_VARIANTS = {
    "DiT-test/2": {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2},
    "DiT-T/2": {"depth": 4, "hidden_size": 256, "num_heads": 4, "patch_size": 2},
    "DiT-S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2},
    "DiT-B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2},
    "DiT-L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2},
}


def import_diffusers():
    ensure_torchvision()  # torchvision is a CUDA build beside a CPU torch here; see torch_compat
    import diffusers

    return diffusers


def dit_args(variant: str, latent_channels: int, latent_size: int, num_classes: int = 2) -> dict:
    """The plain data a DiT checkpoint stores (model_args.json) to rebuild its network."""
    if variant not in DIT_VARIANTS:
        raise KeyError(f"unknown DiT variant {variant!r}; known: {', '.join(DIT_VARIANTS)}")
    return {"variant": variant, **DIT_VARIANTS[variant], "latent_channels": latent_channels,
            "latent_size": latent_size, "num_classes": num_classes}


class ConditionalDiT(nn.Module):
    """A class-conditional DiT on VAE latents; label `num_classes` is the null class of guidance.

    Args:
        depth: number of transformer blocks.
        hidden_size: token width (num_heads x head width).
        num_heads: attention heads.
        patch_size: latent pixels per token side.
        latent_channels: channels of the VAE latent.
        latent_size: side of the (square) latent.
        num_classes: real classes (normal, atypical); the embedding table has one more, the null class.
        variant: the registry name this size came from (kept for the record only).
    """

    def __init__(self, *, depth: int, hidden_size: int, num_heads: int, patch_size: int, latent_channels: int,
                 latent_size: int, num_classes: int = 2, variant: str | None = None):
        super().__init__()
        diffusers = import_diffusers()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        if latent_size % patch_size:
            raise ValueError(f"latent size {latent_size} is not a multiple of patch size {patch_size}")
        self.num_classes = num_classes
        self.transformer = diffusers.DiTTransformer2DModel(
            num_attention_heads=num_heads, attention_head_dim=hidden_size // num_heads, in_channels=latent_channels,
            out_channels=latent_channels, num_layers=depth, sample_size=latent_size, patch_size=patch_size,
            num_embeds_ada_norm=num_classes)
        from diffusers.models.embeddings import LabelEmbedding

        for module in self.modules():
            if isinstance(module, LabelEmbedding):
                # diffusers drops labels at random inside every block, each block on its own; the
                # trainer drops each sample's label once instead (diffusion.py), from a seeded generator.
                module.dropout_prob = 0.0
        self._initialize()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def label_tables(self) -> list:
        """The class-embedding tables (one per block in diffusers' DiT), rows 0..num_classes-1 and null."""
        from diffusers.models.embeddings import LabelEmbedding

        return [module.embedding_table for module in self.modules() if isinstance(module, LabelEmbedding)]

    @torch.no_grad()
    def start_classes_from_null(self) -> None:
        """Set every class row to the null row: the conditional branch starts as the unconditional one.

        After class-agnostic pre-training only the null row has been trained; the class rows still
        hold their N(0, 0.02) start, noise that guidance would amplify.
        """
        for table in self.label_tables():
            table.weight[:self.num_classes] = table.weight[self.null_class]

    def _initialize(self) -> None:
        """DiT's `initialize_weights`: Xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output."""
        from diffusers.models.embeddings import LabelEmbedding, TimestepEmbedding
        from diffusers.models.normalization import AdaLayerNormZero

        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        projection = self.transformer.pos_embed.proj
        nn.init.xavier_uniform_(projection.weight.view(projection.weight.shape[0], -1))
        nn.init.zeros_(projection.bias)
        for module in self.modules():
            if isinstance(module, LabelEmbedding):
                nn.init.normal_(module.embedding_table.weight, std=0.02)
            elif isinstance(module, TimestepEmbedding):
                nn.init.normal_(module.linear_1.weight, std=0.02)
                nn.init.normal_(module.linear_2.weight, std=0.02)
            elif isinstance(module, AdaLayerNormZero):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        for layer in (self.transformer.proj_out_1, self.transformer.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted noise (or v) for noisy latents (N, C, H, W) at timesteps (N,) with labels (N,)."""
        return self.transformer(latents, timestep=timesteps, class_labels=labels).sample  # (N, C, H, W)

    def forward_with_cfg(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
                         guidance: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022): uncond + guidance x (cond - uncond)."""
        if guidance == 1.0:
            return self(latents, timesteps, labels)
        null = torch.full_like(labels, self.null_class)
        both = self(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)  # (N, C, H, W) each
        return unconditional + guidance * (conditional - unconditional)


def create_dit(**model_args) -> ConditionalDiT:
    """A ConditionalDiT from the plain data of `dit_args` (as stored in model_args.json)."""
    return ConditionalDiT(**model_args)


def create_vae(*, block_out_channels, layers_per_block: int, latent_channels: int, norm_num_groups: int,
               image_size: int) -> nn.Module:
    """A fresh diffusers AutoencoderKL that downsamples by 2^(len(block_out_channels) - 1)."""
    diffusers = import_diffusers()
    blocks = len(block_out_channels)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
        sample_size=image_size, scaling_factor=1.0)


class PatchDiscriminator(nn.Module):
    """A PatchGAN (Isola et al., pix2pix, CVPR 2017; the one latent diffusion's autoencoder trains
    against): one real/fake logit per overlapping patch of the image, so it judges local texture,
    which an L1 loss alone blurs. Trained from scratch: no downloaded weights.

    Args:
        channels: filters of the first convolution, doubled per further layer (up to 8x).
        layers: stride-2 convolutions; each patch logit sees 9 x 2^layers - 2 pixels (34 at 2, pix2pix's
            70 at 3).
    """

    def __init__(self, channels: int = 64, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a patch discriminator needs at least one layer, got {layers}")
        blocks = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, layers + 1):
            wider = channels * min(2 ** index, 8)
            blocks += [nn.Conv2d(width, wider, 4, stride=2 if index < layers else 1, padding=1, bias=False),
                       nn.BatchNorm2d(wider), nn.LeakyReLU(0.2)]
            width = wider
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*blocks)
        for module in self.modules():  # pix2pix's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch logits (N, 1, h, w) of images (N, 3, H, W) in [-1, 1]."""
        return self.layers(images)


def load_vae(folder: Path) -> nn.Module:
    """An AutoencoderKL saved with `save_pretrained` (a trained fold VAE, or a local SD VAE copy)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no AutoencoderKL here (expected config.json and "
                                f"diffusion_pytorch_model.safetensors, diffusers' save_pretrained layout)")
    vae = import_diffusers().AutoencoderKL.from_pretrained(str(folder), low_cpu_mem_usage=False)
    return vae.eval()


class LatentCodec(nn.Module):
    """Images in [-1, 1] <-> latents scaled to about unit variance, by the VAE's scaling/shift factors.

    Args:
        vae: a diffusers AutoencoderKL; its config's `scaling_factor` (and `shift_factor`, if any)
            map its latents to the space the DiT works in.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int]:
        """(channels, side) of the latent of an image_size x image_size image."""
        if image_size % self.downsampling:
            raise ValueError(f"image size {image_size} is not a multiple of the VAE's downsampling {self.downsampling}")
        return int(self.vae.config.latent_channels), image_size // self.downsampling

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation, scaled; images (N, 3, H, W) in [-1, 1]."""
        posterior = self.vae.encode(images).latent_dist
        return (posterior.mean - self.shift) * self.scale, posterior.std * self.scale  # (N, C, h, w) each

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] from scaled latents (N, C, h, w)."""
        return self.vae.decode(latents / self.scale + self.shift).sample.clamp(-1, 1)
