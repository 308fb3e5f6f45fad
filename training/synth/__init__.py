"""Synthetic atypical mitotic figures: one class-conditional latent diffusion transformer per fold.

The seed paper (Benito-Del-Valle, Galdran et al., arXiv 2509.02612) balanced its training folds with
atypical figures from a DiT pre-trained on all mitotic figures and fine-tuned class-conditionally.
This package builds that generator on diffusers (AutoencoderKL + DiTTransformer2DModel + its
schedulers), one per cross-validation fold so that no generator sees the slides its fold is
evaluated on, and measures what it makes. Modules, one concern each:

- config.py: dataclasses of a generator config (YAMLs in configs/)
- networks.py: nn.Modules only (conditional DiT with guidance, VAE construction/loading, latent codec)
- diffusion.py: `create_diffusion`, the training schedule, loss and samplers
- data.py: which real images each stage of fold k may use, and the provenance checks
- trainer.py: VAE and DiT training loops (EMA, checkpoints, resume)
- run.py: the run folder; sample.py: images + manifest; quality.py: figures and galleries
- pipeline.py: a fold end to end; cli.py: `python -m training synth <step>`
"""
