"""Tiny configs and cached artefacts (synthetic dataset, stage-1 exports) shared by the training tests.

Artefacts are built once per pytest process (functools.cache) under one temporary folder, so the test modules can
share a trained autoencoder without depending on each other's order.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Audio encoders small enough for CPU tests: the conv stack still downsamples 320x (50 features per second).
FAST_CONV = {"conv_dim": [16, 16, 16], "conv_kernel": [10, 4, 8], "conv_stride": [5, 4, 16]}
TINY_WAV2VEC = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "do_stable_layer_norm": True,
                "feat_extract_norm": "layer", "mask_time_prob": 0.0, **FAST_CONV}
TINY_HUBERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "mask_time_prob": 0.0,
               **FAST_CONV}
PATCH_NUMS = [1, 5, 25]  # window = 25 frames (1 s)


@functools.cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="flametalk_train_tests_"))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def dataset() -> Path:
    from flametalk.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(workdir() / "data", n_clips=6, seconds=3.0, seed=0)


def stage1_dict(run_dir: Path, quantizer: str = "bsq", steps: int = 400, **sections: Any) -> dict[str, Any]:
    vae: dict[str, Any] = {"V_CODE_DIM": 64, "T_DEPTH": 1, "T_NUM_HEADS": 2, "T_HIDDEN_DIM": 64,
                           "V_PATCH_NUMS": PATCH_NUMS}
    if quantizer == "vq":
        vae.update({"QUANTIZER": "vq", "V_CODE_DIM": 16, "V_CODEBOOK_SIZE": 32})
    cfg: dict[str, Any] = {
        "stage": 1,
        "model": {"AR_CONFIG": {"T_DEPTH": 1, "T_NUM_HEADS": 2, "EMBED_DIM": 32}, "VAE_CONFIG": vae,
                  "AUDIO_ENCODER_CONFIG": TINY_WAV2VEC},
        "data": {"root": str(dataset()), "crops_per_clip": 8},
        "optim": {"batch_size": 8, "max_steps": steps, "lr": 5e-3, "warmup_steps": 20, "grad_clip": 0.0,
                  "betas": [0.9, 0.999], "ema_decay": 0.99},
        "loss": {"commit": 0.05},
        "quant": {"refresh_every": 10},
        "run": {"run_dir": str(run_dir), "device": "cpu", "log_every": 1, "progress": False, "ckpt_every": 0},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def stage2_dict(run_dir: Path, vae_export: Path, encoder: str = "wav2vec", steps: int = 60,
                **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "stage": 2,
        "model": {"AR_CONFIG": {"T_DEPTH": 1, "T_NUM_HEADS": 2, "EMBED_DIM": 32, "AUDIO_ENCODER": encoder},
                  "AUDIO_ENCODER_CONFIG": TINY_WAV2VEC if encoder == "wav2vec" else TINY_HUBERT},
        "data": {"root": str(dataset()), "crops_per_clip": 8},
        "optim": {"batch_size": 8, "max_steps": steps, "lr": 3e-3, "warmup_steps": 10, "betas": [0.9, 0.99],
                  "ema_decay": 0.99},
        "stage2": {"vae_checkpoint": str(vae_export), "allow_random_audio_encoder": True},
        "run": {"run_dir": str(run_dir), "device": "cpu", "log_every": 1, "progress": False, "ckpt_every": 0},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def train(cfg_dict: dict[str, Any], **kwargs: Any) -> Any:
    """Train in this process on one CPU thread (the tiny models gain nothing from more, and the CI machine is
    shared: two threads contending run several times slower)."""
    import torch
    from flametalk.train.config import config_from_dict
    from flametalk.train.run import run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_training(config_from_dict(cfg_dict), **kwargs)
    finally:
        torch.set_num_threads(threads)


@functools.cache
def stage1_bsq() -> Any:
    """The BSQ autoencoder trained for 400 steps (the >= 10x reconstruction test reads its history)."""
    return train(stage1_dict(workdir() / "s1_bsq"), resume=False)


@functools.cache
def stage1_vq() -> Any:
    return train(stage1_dict(workdir() / "s1_vq", quantizer="vq", steps=40), resume=False)


@functools.cache
def stage2_quick() -> Any:
    """A few stage-2 steps on the VQ autoencoder: a real export for tests that need any trained checkpoint."""
    return train(stage2_dict(workdir() / "s2_quick", stage1_vq().export_dir, steps=5), resume=False)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def read_log(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))
