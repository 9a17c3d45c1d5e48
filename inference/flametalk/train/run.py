"""Entry point of a training run (one process, or one of N under torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import FlameTalkError
from ..io.checkpoint import read_state_dict, resolve_checkpoint
from .config import TrainConfig
from .data import Clip, ValidationReport, WindowDataset, WindowSpec, load_split, motion_stats
from .dist import DistContext, init_distributed, shutdown
from .loop import Trainer, TrainObjective, TrainResult


def load_clips(cfg: TrainConfig) -> tuple[list[Clip], list[Clip], ValidationReport]:
    d = cfg.data
    train, report = load_split(d.root, d.train_split, d.split_file, d.length_tolerance)
    val: list[Clip] = []
    if d.val_split and report.splits.get(d.val_split):
        val, _ = load_split(d.root, d.val_split, d.split_file, d.length_tolerance, report=report)
    return train, val, report


def build(cfg: TrainConfig) -> tuple[TrainObjective, WindowDataset, WindowDataset | None, ValidationReport]:
    train, val, report = load_clips(cfg)
    if not train:
        raise FlameTalkError(f"split '{cfg.data.train_split}' has no valid clips "
                             f"(run `python -m flametalk dataset validate {cfg.data.root}`)")
    seed = cfg.run.seed
    objective: TrainObjective
    if cfg.stage == 1:
        from .stage1 import Stage1Objective, new_vae

        mcfg = cfg.model_config()
        vae = new_vae(mcfg, *motion_stats(train), seed)
        if cfg.init_from:  # fine-tuning an existing autoencoder (its normalisation statistics included)
            weights, _ = resolve_checkpoint(cfg.init_from)
            state = {k[len("basic_vae."):]: v for k, v in read_state_dict(weights).items()
                     if k.startswith("basic_vae.")}
            vae.load_state_dict(state)
        objective = Stage1Objective(vae, cfg)
        spec = WindowSpec(window=mcfg.window_frames, stage=1)
    else:
        from .stage2 import Stage2Objective, build_model

        model = build_model(cfg)
        objective = Stage2Objective(model, cfg)
        m = model.cfg
        spec = WindowSpec(window=m.window_frames, stage=2, style_frames=cfg.stage2.style_frames,
                          null_style_prob=cfg.stage2.null_style_prob, tokens=m.tokens_per_window,
                          code_dim=m.code_dim if m.quantizer == "bsq" else 1, codebook_size=m.codebook_size)
    train_set = WindowDataset(train, spec, seed, cfg.data.crops_per_clip)
    val_set = WindowDataset(val, spec, seed + 1, cfg.data.crops_per_clip) if val else None
    return objective, train_set, val_set, report


def run_training(cfg: TrainConfig, resume: bool = True, stop_at: int | None = None,
                 ctx: DistContext | None = None) -> TrainResult:
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.run.device)
    try:
        objective, train_set, val_set, report = build(cfg)
        if ctx.is_main:
            run_dir = Path(cfg.run.run_dir).expanduser()
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            if report.bad:
                (run_dir / "skipped_clips.json").write_text(json.dumps(report.bad, indent=1))
        trainer = Trainer(cfg, objective.to(ctx.device), train_set, val_set, ctx)
        return trainer.fit(resume=resume, stop_at=stop_at)
    finally:
        if own_ctx:
            shutdown(ctx)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
