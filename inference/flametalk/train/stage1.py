"""Stage 1: the temporal multi-scale motion autoencoder (the release's `basic_vae`).

A sample is two consecutive windows [previous, current] (the previous one is the zero motion for a clip's first
window, exactly as generation starts). Both are encoded together with the block-causal mask, quantised per window
and decoded together, as in generation. Losses (weights in LossConfig): motion L1, velocity L1 and smoothness in
normalised units; lip-vertex and all-vertex L2 through FLAME (millimetres); the quantiser's losses.

Export: `export/ARTalk_vae.pt` (flat state_dict, `basic_vae.*` release key names) + `config.json`: the input of
stage 2 (`stage2.vae_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.config import ARTalkConfig
from ..model.vae import MotionAutoencoder
from .config import QuantConfig, TrainConfig
from .dist import DistContext
from .loop import TrainObjective
from .quantizers import BSQTraining, TrainQuantizer
from .vq import VQTraining

VAE_EXPORT_NAME = "ARTalk_vae.pt"
MM = 1000.0  # vertex losses in millimetres


def init_weights(module: nn.Module) -> None:
    """Fresh weights of layers built outside torch's defaults: unit layer norms, zero biases. Linear layers keep
    torch's default (fan-in scaled) init: a fixed std of 0.02 trains the small models of fine-tuning and tests
    several times slower."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def new_vae(cfg: ARTalkConfig, mean: np.ndarray, std: np.ndarray, seed: int) -> MotionAutoencoder:
    torch.manual_seed(seed)
    vae = MotionAutoencoder(cfg)
    init_weights(vae)
    nn.init.trunc_normal_(vae.enc_pos_embed, std=0.02)
    nn.init.trunc_normal_(vae.dec_pos_embed, std=0.02)
    if vae.quantizer is not None:
        k = vae.quantizer.size
        nn.init.uniform_(vae.quantizer.embedding.weight, -1.0 / k, 1.0 / k)
    vae.motion_mean.copy_(torch.from_numpy(mean))
    vae.motion_std.copy_(torch.from_numpy(std))
    return vae



def make_train_quantizer(vae: torch.nn.Module, cfg: QuantConfig, seed: int) -> TrainQuantizer:
    mcfg = vae.cfg
    if mcfg.quantizer == "bsq":
        return BSQTraining(mcfg.patch_nums, mcfg.code_dim, cfg)
    return VQTraining(vae.quantizer, mcfg.patch_nums, cfg, seed)


class VertexLoss(nn.Module):
    """Squared vertex errors (mm^2) through FLAME: all vertices and the lip region."""

    def __init__(self, flame_path: str, masks_path: str, want_all: bool):
        super().__init__()
        from ..flame import load_flame
        from .flame_torch import FlameTorch
        from .metrics import load_masks

        model = load_flame(flame_path)
        lips = load_masks(masks_path)["lips"] if masks_path else None
        if want_all or lips is None:
            self.flame = FlameTorch(model)
            lip_idx = lips if lips is not None else np.zeros(0, np.int64)
        else:  # only the lip loss is wanted: skin the lip vertices alone
            self.flame = FlameTorch(model, vertex_ids=lips)
            lip_idx = np.arange(len(lips))
        self.register_buffer("lip_idx", torch.as_tensor(lip_idx, dtype=torch.long))

    def forward(self, pred_ND: torch.Tensor, true_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(pred_ND.device.type, enabled=False):
            err = (self.flame.forward_motion(pred_ND.float()) - self.flame.forward_motion(true_ND.float())) * MM
            d2 = err.pow(2).sum(-1)  # (N, V')
            lip = d2[:, self.lip_idx].mean() if self.lip_idx.numel() else d2.new_zeros(())
            return d2.mean(), lip


class Stage1Objective(TrainObjective):
    metric_names = ("loss", "motion_l1", "velocity", "smooth", "lip_vertex", "vertex", "commit", "codebook",
                    "entropy", "recon_l1", "dead_codes")

    def __init__(self, vae: MotionAutoencoder, cfg: TrainConfig):
        super().__init__()
        self.vae, self.loss_cfg, self.model_cfg = vae, cfg.loss, vae.cfg
        self.quant = make_train_quantizer(vae, cfg.quant, cfg.run.seed)
        w = cfg.loss
        self.vertex_loss = None
        if w.lip_vertex or w.vertex:
            if not cfg.flame.flame_path or (w.lip_vertex and not cfg.flame.masks_path):
                raise ValueError("vertex losses need flame.flame_path (and flame.masks_path for lip_vertex)")
            self.vertex_loss = VertexLoss(cfg.flame.flame_path, cfg.flame.masks_path, bool(w.vertex))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vae, T, w = self.vae, self.model_cfg.window_frames, self.loss_cfg
        motion = torch.cat([batch["prev"], batch["this"]], dim=1).float()
        target = vae.normalize(motion)
        enc = vae.encoder(target + vae.enc_pos_embed, vae.attn_mask)
        q_prev, q_this = self.quant(enc[:, :T]), self.quant(enc[:, T:])
        pred = vae.decoder(torch.cat([q_prev.features, q_this.features], dim=1) + vae.dec_pos_embed, vae.attn_mask)
        pred = pred.float()
        out: dict[str, torch.Tensor] = {
            "motion_l1": (pred - target).abs().mean(),
            "velocity": (pred.diff(dim=1) - target.diff(dim=1)).abs().mean(),
            "smooth": pred.diff(n=2, dim=1).pow(2).mean(),
        }
        for key in ("commit", "codebook", "entropy"):
            if key in q_prev.losses:
                out[key] = (q_prev.losses[key] + q_this.losses[key]) / 2
        if self.vertex_loss is not None:
            pred_data = pred * vae.motion_std + vae.motion_mean
            out["vertex"], out["lip_vertex"] = self.vertex_loss(pred_data.flatten(0, 1), motion.flatten(0, 1))
        out["loss"] = sum(getattr(w, k) * v for k, v in out.items())
        out["recon_l1"] = ((pred - target).detach() * vae.motion_std).abs().mean()  # data units, monitoring
        return out

    def after_step(self, step: int, ctx: DistContext) -> dict[str, float]:
        return self.quant.after_step(step, ctx)

    def extra_state(self) -> dict[str, Any]:
        return {"quant": self.quant.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.quant.load_state(state.get("quant", {}))

    def ckpt_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("vae.")}

    def load_ckpt_state(self, state: dict[str, torch.Tensor]) -> None:
        self.vae.load_state_dict({k[len("vae."):]: v for k, v in state.items()})

    def export(self, folder: Path, ema: dict[str, torch.Tensor] | None) -> Path:
        state = {k: v.detach().cpu().clone() for k, v in self.vae.state_dict().items()}
        for name, value in (ema or {}).items():
            if name.startswith("vae."):
                state[name[len("vae."):]] = value.detach().cpu().to(state[name[len("vae."):]].dtype).clone()
        write_export(folder, {f"basic_vae.{k}": v for k, v in state.items()}, self.model_cfg, VAE_EXPORT_NAME)
        return folder


def write_export(folder: Path, state: dict[str, torch.Tensor], cfg: ARTalkConfig, name: str) -> None:
    """The release layout: one flat state_dict + config.json (written last: a folder with a config is complete)."""
    from .loop import atomic_save

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pt"):
        if old.name != name:
            old.unlink()  # load_checkpoint wants exactly one weights file
    atomic_save(state, folder / name)
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg.to_release_dict(), indent=1))
    tmp.replace(folder / "config.json")


@torch.no_grad()
def reconstruction_error(vae: MotionAutoencoder, prev_BTD: torch.Tensor, this_BTD: torch.Tensor) -> float:
    """Mean absolute error (data units) of the inference path encode_pair -> decode_pair on the current window."""
    vae.eval()
    bits_prev, bits_this = vae.encode_pair(prev_BTD, this_BTD)
    _, decoded = vae.decode_pair(bits_prev, bits_this)
    return float((decoded - this_BTD).abs().mean())
