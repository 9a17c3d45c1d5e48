"""Stage 2: the speech-conditioned multi-scale autoregressive model, trained with teacher forcing.

For a window pair (previous motion, this motion) the frozen autoencoder gives the codes of both windows. The AR
input is [style token, next-scale inputs of this window's codes] + positions (L tokens), the context is the
previous window's tokens (as generation builds them), and one uncached pass over all L tokens with the release's
block-causal bias predicts every scale at once; cross-entropy is over 2 logits per bit (BSQ) or over the codebook
(VQ). The frozen audio encoder conditions every token through AdaLN. Style: a random 2-s span of the same clip, or
the null style with probability null_style_prob (what generation uses without a style clip). Bit-flip
augmentation corrupts a random fraction of the coarser scales' input codes (never the targets), so the model
learns to continue from its own imperfect coarse predictions.

Export: `export/ARTalk_<wav2vec|hubert>.pt` (the full model, release key names) + config.json, loadable by
flametalk.io.checkpoint.load_checkpoint, `generate`, `bench` and the add-on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FlameTalkError
from ..io.checkpoint import read_state_dict, resolve_checkpoint
from ..model.artalk import ARTalkModel
from ..model.audio_encoder import encode_audio_windows
from ..model.config import ARTalkConfig
from ..model.random_init import sinusoid_table
from .config import TrainConfig
from .loop import TrainObjective
from .stage1 import init_weights, write_export

VAE_FIELDS = ("motion_dim", "code_dim", "quantizer", "codebook_size", "vae_depth", "vae_heads", "vae_hidden",
              "patch_nums")
FROZEN = ("model.basic_vae.", "model.audio_encoder.")


def read_vae_export(path: str) -> tuple[ARTalkConfig, dict[str, torch.Tensor]]:
    """Config and `basic_vae.*` weights of a stage-1 export (or of any full checkpoint, e.g. the release)."""
    weights, config = resolve_checkpoint(path)
    cfg = ARTalkConfig.from_json_file(config)
    state = {k[len("basic_vae."):]: v for k, v in read_state_dict(weights).items() if k.startswith("basic_vae.")}
    if not state:
        raise FlameTalkError(f"{weights} holds no autoencoder weights (basic_vae.*); pass a stage-1 export")
    return cfg, state


def build_model(cfg: TrainConfig) -> ARTalkModel:
    """The full model: fresh AR/style parts, the stage-1 autoencoder, the local pre-trained audio encoder."""
    vae_cfg, vae_state = read_vae_export(cfg.stage2.vae_checkpoint)
    mcfg = cfg.model_config().replace(**{f: getattr(vae_cfg, f) for f in VAE_FIELDS})
    audio_state = None
    if cfg.stage2.audio_encoder_weights:
        from .encoders import locate

        kwargs, audio_state = locate(mcfg.audio_encoder, cfg.stage2.audio_encoder_weights, mcfg.audio_encoder_config)
        mcfg = mcfg.replace(audio_encoder_config=kwargs)
    elif not cfg.stage2.allow_random_audio_encoder:
        raise FlameTalkError("stage2.audio_encoder_weights is not set: give a local wav2vec2/HuBERT folder or file")
    mcfg.validate()
    torch.manual_seed(cfg.run.seed)
    model = ARTalkModel(mcfg)
    for part in (model.vqfeat_embed, model.style_encoder, model.style_cond_embed, model.attn_blocks,
                 model.cond_logits_head, model.logits_head):
        init_weights(part)
    for p in (model.pos_embed, model.prev_pos_embed, model.lvl_embed.weight, model.null_style_cond):
        nn.init.trunc_normal_(p, std=0.02)
    with torch.no_grad():
        model.style_encoder.PE.pe.copy_(sinusoid_table(mcfg.style_dim, mcfg.style_max_len))
    model.basic_vae.load_state_dict(vae_state)
    with torch.no_grad():  # the style encoder reads motion normalised like the autoencoder
        model.style_encoder.motion_mean.copy_(model.basic_vae.motion_mean)
        model.style_encoder.motion_std.copy_(model.basic_vae.motion_std)
    if audio_state is not None:
        from .encoders import load_into

        load_into(model.audio_encoder, audio_state, cfg.stage2.audio_encoder_weights)
    else:
        warnings.warn("stage 2 runs on a randomly initialised audio encoder (tests only)", stacklevel=2)
    if cfg.init_from:  # fine-tuning: every AR/style weight of an existing full checkpoint
        weights, _ = resolve_checkpoint(cfg.init_from)
        init = {k: v for k, v in read_state_dict(weights).items()
                if not k.startswith(("basic_vae.", "audio_encoder."))}
        missing, unexpected = model.load_state_dict(init, strict=False)
        bad = [k for k in missing if not k.startswith(("basic_vae.", "audio_encoder."))] + list(unexpected)
        if bad:
            raise FlameTalkError(f"init_from {weights} does not match this model ({len(bad)} keys, e.g. {bad[:2]})")
    model.basic_vae.requires_grad_(False)
    model.audio_encoder.requires_grad_(False)
    return model


class Stage2Objective(TrainObjective):
    metric_names = ("loss", "ce", "acc", "ce_coarse", "ce_finest")

    def __init__(self, model: ARTalkModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.s2 = model, cfg.stage2
        K = len(model.cfg.patch_nums)
        self.register_buffer("coarse_L", (model.lvl_idx[0] < K - 1), persistent=False)

    def set_train_mode(self) -> None:
        self.model.train()
        self.model.basic_vae.eval()
        self.model.audio_encoder.eval()
        self.model.style_encoder.train(self.s2.style_dropout)

    def augment(self, codes: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Corrupt coarser scales' input codes: flip bits (BSQ) / draw random indices (VQ)."""
        rate = batch["flip_rate"].float() * self.s2.bitflip_max  # (B,)
        if self.model.cfg.quantizer == "bsq":
            flip = (batch["flip_u"] < rate[:, None, None]) & self.coarse_L[None, :, None]
            return codes ^ flip.to(codes.dtype)
        swap = (batch["flip_u"][..., 0] < rate[:, None]) & self.coarse_L[None]
        return torch.where(swap, batch["rand_codes"].to(codes.dtype), codes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.model
        vae, B = m.basic_vae, batch["this"].shape[0]
        with torch.no_grad(), torch.autocast(batch["this"].device.type, enabled=False):
            codes_prev, codes_this = vae.encode_pair(batch["prev"].float(), batch["this"].float())
        with torch.no_grad():
            feat = encode_audio_windows(m.audio_encoder, batch["audio"])
        cond = m.audio_condition(feat.float()).to(m.compute_dtype)
        # Style token: the style encoder runs on every sample (its parameters are used in every step, which DDP
        # requires); null-style samples then take the null token instead.
        emb = m.style_cond_embed(m.style_encoder(batch["style"].float()))[:, None]
        style = torch.where(batch["null_style"][:, None, None], m.null_style_cond.expand(B, -1, -1), emb)
        inputs = self.augment(codes_this, batch) if self.training else codes_this
        pos, ctx_pos = m.token_positions()
        x = m.window_tokens(style, vae.ar_inputs(inputs)) + pos
        ctx = m.window_tokens(style, vae.ar_inputs(codes_prev)).repeat(1, m.cfg.prev_ratio, 1) + ctx_pos
        for blk in m.attn_blocks:
            x = blk(x, ctx, blk.modulation(cond), m.attn_bias_for_masking)
        logits = m.logits_head(m.cond_logits_head(x, m.cond_logits_head.modulation(cond))).float()
        if m.cfg.quantizer == "bsq":
            logits = logits.view(B, logits.shape[1], m.cfg.code_dim, 2)
        ce_all = F.cross_entropy(logits.flatten(0, -2), codes_this.long().flatten(), reduction="none")
        ce_tok = ce_all.view(B, logits.shape[1], -1).mean(-1)  # (B, L)
        acc = (logits.argmax(-1) == codes_this).float().mean()
        finest = ~self.coarse_L
        return {"loss": ce_tok.mean(), "ce": ce_tok.mean().detach(), "acc": acc,
                "ce_coarse": ce_tok[:, self.coarse_L].mean().detach(), "ce_finest": ce_tok[:, finest].mean().detach()}

    def ckpt_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN)}

    def load_ckpt_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith(FROZEN)]:
            raise FlameTalkError("training checkpoint does not match the stage-2 model; was the config changed?")

    def export(self, folder: Path, ema: dict[str, torch.Tensor] | None) -> Path:
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        for name, value in (ema or {}).items():
            key = name[len("model."):]
            state[key] = value.detach().cpu().to(state[key].dtype).clone()
        write_export(folder, state, self.model.cfg, f"ARTalk_{self.model.cfg.audio_encoder}.pt")
        return folder
