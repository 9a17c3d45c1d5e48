"""Training and evaluation of ARTalk models (never imported by the Blender add-on).

- data.py: dataset folder format, validator, split file, window sampling
- config.py: TrainConfig (JSON/TOML files, dataclass-backed)
- stage1.py / stage2.py: the two stages of the paper (motion autoencoder; speech-conditioned multi-scale AR model)
- quantizers.py / vq.py: training forwards of the release's BSQ and the paper's VQ codebook (vq builds on quantizers)
- loop.py: the shared trainer (AdamW, linear decay, EMA, clipping, autocast, checkpoints, CSV/TensorBoard logs)
- dist.py: torchrun / DistributedDataParallel plumbing; run.py: one training run; encoders.py: local audio weights
- flame_torch.py: differentiable FLAME for vertex losses; metrics.py / evaluate.py: LVE, FDD, MOD
- commands.py: the `train`, `evaluate` and `dataset validate` subcommands (a tiny test dataset: flametalk.testing)
- configs/: example configs (release architecture, the paper's VQ/HuBERT variant, fine-tuning the release)
See docs/training.md.
"""
