"""Window-by-window, scale-by-scale generation with argmax decoding.

Exact mode caches what the release recomputes: the context keys/values of every block are computed once per
window, the keys/values of coarser scales are kept instead of re-running all earlier tokens at each scale, the
AdaLN modulation (a function of audio only) is computed once per window, and the audio encoder runs on all windows
in batches before decoding starts (windows are independent for it). The block-causal mask makes coarser tokens
independent of finer ones, so this is the same computation; `recompute=True` runs the release's order instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..flame.contract import MOTION_FPS, SAMPLE_RATE
from ..model.artalk import ARTalkModel
from ..model.audio_encoder import encode_audio_windows
from .condcache import ConditionCache, audio_key

ProgressFn = Callable[[int, int], None]
WindowFn = Callable[[int, torch.Tensor], None]  # (window index, its motion (B, frames, D) fp32, trimmed at the end)


def frames_for_samples(num_samples: int) -> int:
    """Motion frames for a clip: the release's ceil(samples / 16000 * 25), float arithmetic included."""
    return math.ceil(num_samples / SAMPLE_RATE * float(MOTION_FPS))


@dataclass
class WindowState:
    """What the next window needs from the previous ones."""

    prev_bits: torch.Tensor  # (B, L, C) bits of the last generated window, re-encoded on its own
    context_BSE: torch.Tensor  # (B, Lp, E) context tokens (without position embeddings)


GPU_AUDIO_BATCH = 8  # windows per audio-encoder call on CUDA / MPS


def default_audio_batch(device: torch.device) -> int:
    """Windows per audio-encoder call. On CPU batching measured no faster and raises peak memory; on a GPU one
    window's encoder is ~400 small kernel launches, so batching divides that overhead (a 60-s clip is 15 windows)."""
    return 1 if device.type == "cpu" else GPU_AUDIO_BATCH


class Generator:
    def __init__(self, model: ARTalkModel, audio_batch: int | None = None):
        self.model = model
        self.cfg = model.cfg
        self.audio_batch = default_audio_batch(model.pos_embed.device) if audio_batch is None else audio_batch

    # ---- audio ----
    @property
    def window_samples(self) -> int:
        """16 kHz samples per window (64,000 for 100 frames), the release's int(T / 25 * 16000)."""
        return int(self.cfg.window_frames / float(MOTION_FPS) * SAMPLE_RATE)

    def split_windows(self, audio_BN: torch.Tensor) -> torch.Tensor:
        """Zero-pad to whole windows -> (W, B, samples_per_window)."""
        B, N = audio_BN.shape
        frames = frames_for_samples(N)
        T = self.cfg.window_frames
        padded_frames = math.ceil(frames / T) * T
        padded = int(padded_frames / float(MOTION_FPS) * SAMPLE_RATE)
        per_window = self.window_samples
        audio_BN = torch.cat([audio_BN, audio_BN.new_zeros(B, padded - N)], dim=-1)
        return audio_BN.view(B, -1, per_window).transpose(0, 1)

    def audio_conditions(self, windows_WBN: torch.Tensor) -> Iterator[torch.Tensor]:
        """Per-window conditions (B, L, D), encoding `audio_batch` windows per encoder call, lazily (an hour of
        audio would not fit in memory as conditions)."""
        W, B, N = windows_WBN.shape
        per_call = max(1, self.audio_batch // B)
        for w0 in range(0, W, per_call):
            chunk = windows_WBN[w0 : w0 + per_call]
            feat_XND = encode_audio_windows(self.model.audio_encoder, chunk.reshape(-1, N))
            cond_XLD = self.model.audio_condition(feat_XND)
            yield from cond_XLD.view(chunk.shape[0], B, *cond_XLD.shape[1:]).unbind(0)

    # ---- windows ----
    def initial_state(self, style_B1E: torch.Tensor) -> WindowState:
        prev_bits = self.zero_motion_codes(style_B1E.shape[0], style_B1E.device)
        tokens = self.model.window_tokens(style_B1E, self.model.basic_vae.ar_inputs(prev_bits))
        return WindowState(prev_bits, tokens.repeat(1, self.cfg.prev_ratio, 1))

    def zero_motion_codes(self, batch: int, device: torch.device) -> torch.Tensor:
        """Codes of the first window's "previous motion", the quantised zero motion: a constant of the weights, so
        an inference-prepared model (whose weights never change again) keeps it instead of recomputing it per clip."""
        m = self.model
        codes = getattr(m, "_zero_motion_codes", None)
        if codes is None or codes.device != device:
            zeros = torch.zeros(1, self.cfg.window_frames, self.cfg.motion_dim, device=device)
            codes = m.basic_vae.encode_single(zeros)
            if getattr(m, "_prepared_for_inference", False):
                m._zero_motion_codes = codes
        return codes.expand(batch, *codes.shape[1:])

    def next_state(self, state: WindowState, motion_BTD: torch.Tensor, style_B1E: torch.Tensor) -> WindowState:
        prev_bits = self.model.basic_vae.encode_single(motion_BTD)
        tokens = self.model.window_tokens(style_B1E, self.model.basic_vae.ar_inputs(prev_bits))
        L = tokens.shape[1]
        return WindowState(prev_bits, torch.cat([state.context_BSE[:, L:], tokens], dim=1))

    def window_bits(self, cond_BLD: torch.Tensor, state: WindowState, style_B1E: torch.Tensor,
                    recompute: bool = False) -> torch.Tensor:
        m = self.model
        pos_1LE, ctx_pos_1SE = m.token_positions()
        ctx_BSE = state.context_BSE + ctx_pos_1SE
        mods = [blk.modulation(cond_BLD) for blk in m.attn_blocks]
        head_mod = m.cond_logits_head.modulation(cond_BLD)
        if recompute:
            return self._bits_recompute(ctx_BSE, style_B1E, pos_1LE, mods, head_mod)
        return self._bits_cached(ctx_BSE, style_B1E, pos_1LE, mods, head_mod)

    def _bits_cached(self, ctx_BSE, style_B1E, pos_1LE, mods, head_mod) -> torch.Tensor:
        m, pn_list = self.model, self.cfg.patch_nums
        B, Lp = style_B1E.shape[0], ctx_BSE.shape[1]
        # Key/value buffers per block: [context | scales so far], filled in place (no re-concatenation per scale).
        kv = []
        for blk in m.attn_blocks:
            k_ctx, v_ctx = blk.attn.keys_values(ctx_BSE)
            H, c = k_ctx.shape[1], k_ctx.shape[3]
            k_buf = k_ctx.new_empty(B, H, Lp + self.cfg.tokens_per_window, c)
            v_buf = v_ctx.new_empty(B, H, Lp + self.cfg.tokens_per_window, c)
            k_buf[:, :, :Lp], v_buf[:, :, :Lp] = k_ctx, v_ctx
            kv.append((k_buf, v_buf))
        acc = m.basic_vae.next_scale_input(B, style_B1E.device)
        x_BPE = style_B1E + pos_1LE[:, :1]
        all_bits, start = [], 0
        for k, pn in enumerate(pn_list):
            sl, end = slice(start, start + pn), Lp + start + pn
            for b, blk in enumerate(m.attn_blocks):
                mod = mods[b][:, sl]
                h = blk.modulated_input(x_BPE, mod)
                k_buf, v_buf = kv[b]
                k_buf[:, :, Lp + start : end], v_buf[:, :, Lp + start : end] = blk.attn.keys_values(h)
                out = blk.attn.attend(blk.attn.queries(h), k_buf[:, :, :end], v_buf[:, :, :end])
                x_BPE = blk.finish(x_BPE, out, mod)
            bits = m.codes_from_logits(m.logits_head(m.cond_logits_head(x_BPE, head_mod[:, sl])))
            all_bits.append(bits)
            if k + 1 < len(pn_list):
                nxt = slice(start + pn, start + pn + pn_list[k + 1])
                x_BPE = m.vqfeat_embed(acc.push(k, bits).to(m.compute_dtype)) + pos_1LE[:, nxt]
            start += pn
        return torch.cat(all_bits, dim=1)

    def _bits_recompute(self, ctx_BSE, style_B1E, pos_1LE, mods, head_mod) -> torch.Tensor:
        """The release's order: at every scale, re-run all tokens of the window so far."""
        m, pn_list = self.model, self.cfg.patch_nums
        tokens = style_B1E
        Lp = ctx_BSE.shape[1]
        for k in range(len(pn_list)):
            n = sum(pn_list[: k + 1])
            bias = m.attn_bias_for_masking[:, :, :n, : n + Lp]
            x = tokens + pos_1LE[:, :n]
            for b, blk in enumerate(m.attn_blocks):
                x = blk(x, ctx_BSE, mods[b][:, :n], bias)
            bits = m.codes_from_logits(m.logits_head(m.cond_logits_head(x, head_mod[:, :n])))
            if k + 1 < len(pn_list):
                tokens = m.window_tokens(style_B1E, m.basic_vae.ar_inputs(bits, upto=k))
        return bits

    # ---- whole clip ----
    def run(self, audio_BN: torch.Tensor, style_BLD: torch.Tensor | None = None,
            progress: ProgressFn | None = None, recompute: bool = False,
            cache: ConditionCache | None = None, on_window: WindowFn | None = None) -> torch.Tensor:
        """Audio (B, N) float32 16 kHz -> raw motion (B, frames, motion_dim).

        With a `cache` (only for this model's weights), a clip seen before reuses its audio conditions and a new
        one leaves them there once the whole clip is done. `on_window(w, motion)` gets each window's motion as soon
        as it is decoded (the last one cut to the clip's length), before `progress(w + 1, total)`."""
        B, N = audio_BN.shape
        audio_BN = audio_BN.float()
        style_B1E = self.model.style_condition(style_BLD, batch=B)
        windows = self.split_windows(audio_BN)
        total = windows.shape[0]
        if progress:
            progress(0, total)
        key = audio_key(audio_BN) if cache is not None else None
        cached = cache.get(key) if cache is not None else None
        conds = iter(cached) if cached is not None else self.audio_conditions(windows)
        keep = cache is not None and cached is None
        kept: list[torch.Tensor] = []
        kept_bytes = 0
        loop = WindowLoop(self, style_B1E, recompute=recompute)
        motions = []
        for w, cond_BLD in enumerate(conds):
            if keep:  # an hour-long clip would outgrow any budget: stop holding its conditions once it does
                kept.append(cond_BLD)
                kept_bytes += cond_BLD.numel() * cond_BLD.element_size()
                keep = kept_bytes <= cache.budget_bytes
                if not keep:
                    kept.clear()
            motions.append(loop.step(cond_BLD))
            if on_window:
                on_window(w, motions[-1][:, : frames_for_samples(N) - w * self.cfg.window_frames].float())
            if progress:
                progress(w + 1, total)
        if keep:
            cache.put(key, kept)
        return torch.cat(motions, dim=1)[:, : frames_for_samples(N)].float()


class WindowLoop:
    """The window-to-window state of one clip, shared by one-shot generation (Generator.run) and streaming
    (decode/streaming.py): each window's audio condition in, that window's motion (B, T, D) fp32 out.

    The state for window k + 1 (the previous window's bits re-encoded, the context tokens shifted) is computed
    when window k + 1 arrives, not after window k: a clip's last window costs no state nobody reads, and a stream
    does not need to know which window is its last."""

    def __init__(self, gen: Generator, style_B1E: torch.Tensor, recompute: bool = False):
        self.gen, self.style_B1E, self.recompute = gen, style_B1E, recompute
        self.state = gen.initial_state(style_B1E)
        self.windows = 0  # windows decoded so far
        self._last_motion: torch.Tensor | None = None

    def step(self, cond_BLD: torch.Tensor) -> torch.Tensor:
        gen = self.gen
        if self._last_motion is not None:
            self.state = gen.next_state(self.state, self._last_motion, self.style_B1E)
        bits = gen.window_bits(cond_BLD, self.state, self.style_B1E, recompute=self.recompute)
        _, motion = gen.model.basic_vae.decode_pair(self.state.prev_bits, bits)  # fp32 in every mode
        self._last_motion = motion
        self.windows += 1
        return motion
