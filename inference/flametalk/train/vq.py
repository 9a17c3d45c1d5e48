"""Training forward of the paper's VQ variant: multi-scale residual VQ over one codebook (256 x 64 in the paper).

Per scale k: r_k = area-resized residual, e_k = nearest codebook vectors (the inference search, so codes match);
losses ||sg(r_k) - e_k||^2 (codebook) and ||r_k - sg(e_k)||^2 (commitment); straight-through feature
sg(e_k) + (r_k - sg(r_k)) whose value is e_k exactly. Codes unused for `refresh_every` steps are re-seeded from
recent encoder outputs (dead-code refresh), consistently on every process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..model.codebook import CodebookQuantizer
from ..model.quantizer import area_resize
from .config import QuantConfig
from .quantizers import QuantOut, upsample

MAX_KEPT_VECTORS = 4096  # encoder outputs remembered for re-seeding dead codes


class VQTraining:
    def __init__(self, quantizer: CodebookQuantizer, patch_nums: tuple[int, ...], cfg: QuantConfig, seed: int):
        self.q, self.patch_nums, self.cfg, self.seed = quantizer, patch_nums, cfg, seed
        self.counts = torch.zeros(quantizer.size, dtype=torch.float64)
        self.recent: torch.Tensor | None = None  # (N, C) residual vectors of the last batch
        self.refreshed = 0  # dead codes re-seeded at the last refresh (logged)

    def __call__(self, f_BTC: torch.Tensor) -> QuantOut:
        with torch.autocast(f_BTC.device.type, enabled=False):
            return self._forward(f_BTC.float())

    def _forward(self, f_BTC: torch.Tensor) -> QuantOut:
        _, T, C = f_BTC.shape
        residual, f_hat = f_BTC, torch.zeros_like(f_BTC)
        codes, commit, codebook, kept = [], f_BTC.new_zeros(()), f_BTC.new_zeros(()), []
        for pn in self.patch_nums:
            r = area_resize(residual, pn).contiguous() if pn != T else residual
            idx = self.q.nearest(r.detach())
            e = self.q.lookup(idx)
            codebook = codebook + (e - r.detach()).pow(2).sum(-1).mean()
            commit = commit + (r - e.detach()).pow(2).sum(-1).mean()
            quant = e.detach() + (r - r.detach())  # value e (adds an exact zero); gradient to the encoder
            codes.append(idx)
            if torch.is_grad_enabled():
                self.counts = self.counts.to(idx.device)
                self.counts += torch.bincount(idx.reshape(-1), minlength=self.q.size).to(self.counts.dtype)
                kept.append(r.detach().reshape(-1, C))
            up = upsample(quant, T)
            residual = residual - up
            f_hat = f_hat + up
        if kept:
            self.recent = torch.cat(kept)[-MAX_KEPT_VECTORS:]
        K = len(self.patch_nums)
        return QuantOut(f_hat, torch.cat(codes, dim=1), {"commit": commit / K, "codebook": codebook / K})

    @torch.no_grad()
    def after_step(self, step: int, ctx: Any) -> dict[str, float]:
        """Every `refresh_every` steps: codes used fewer than `dead_code_threshold` times since the last refresh
        get a recent encoder output (+ a little noise). Counts are summed over processes; rank 0 picks the new
        vectors and broadcasts the codebook, so every process keeps the same weights."""
        every = self.cfg.refresh_every
        if not every or step % every or self.recent is None:
            return {"dead_codes": float(self.refreshed)}
        weight = self.q.embedding.weight
        counts = self.counts.to(weight.device)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        dead = (counts < self.cfg.dead_code_threshold).nonzero().flatten()
        self.refreshed = int(dead.numel())
        if self.refreshed and (not distributed or dist.get_rank() == 0):
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + step)
            src = self.recent.to(weight.device)
            pick = torch.randint(0, src.shape[0], (self.refreshed,), generator=gen).to(weight.device)
            noise = torch.randn(self.refreshed, src.shape[1], generator=gen).to(weight.device)
            scale = src.std().clamp_min(1e-6) * self.cfg.refresh_noise
            weight.data[dead] = (src[pick] + noise * scale).to(weight.dtype)
        if self.refreshed and distributed:
            dist.broadcast(weight.data, src=0)
        self.counts = torch.zeros_like(self.counts)
        return {"dead_codes": float(self.refreshed)}

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts.cpu(), "refreshed": self.refreshed}

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts = state["counts"].to(torch.float64)
        self.refreshed = int(state.get("refreshed", 0))
