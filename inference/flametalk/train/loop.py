"""The trainer both stages share: AdamW + warm-up/linear decay, EMA, gradient clipping, autocast, checkpoints with
full resume state, CSV (+ TensorBoard when installed) logs and a progress bar.

Determinism: a sample's crop and noise come from (seed, epoch, item) (data.WindowDataset), the batch order from
(seed, epoch) (dist.shard_batches) and torch's RNG (dropout) is re-seeded from (seed, step, rank) before each
step. So a resumed run continues the same loss curve without storing RNG streams, and N processes see the same
global batches as one.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import FlameTalkError
from .config import TrainConfig
from .data import WindowDataset, collate
from .dist import DistContext, all_reduce_mean, shard_batches, unwrap, wrap

CKPT_FORMAT = "flametalk-train-v1"
NO_DECAY = ("pos_embed", "null_style_cond", "lvl_embed.weight", "quantizer.embedding.weight", "scale_mul_1H11",
            "PE.pe")


class TrainObjective(nn.Module):
    """A stage's model + losses. forward(batch) -> metrics (tensors) with the total under 'loss'."""

    metric_names: tuple[str, ...] = ("loss",)

    def set_train_mode(self) -> None:
        self.train()

    def after_step(self, step: int, ctx: DistContext) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def ckpt_state(self) -> dict[str, torch.Tensor]:
        """What a resume needs of the weights (frozen parts are rebuilt from their sources instead)."""
        return self.state_dict()

    def load_ckpt_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def export(self, folder: Path, ema: dict[str, torch.Tensor] | None) -> Path:
        raise NotImplementedError


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # global-mean metrics of every step run
    step: int = 0
    run_dir: Path = Path()
    export_dir: Path | None = None
    val: dict[str, float] = field(default_factory=dict)


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    return max(min_ratio, 1.0 - (1.0 - min_ratio) * (step - warmup) / span)


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class Trainer:
    def __init__(self, cfg: TrainConfig, objective: TrainObjective, train_set: WindowDataset,
                 val_set: WindowDataset | None, ctx: DistContext):
        self.cfg, self.ctx, self.objective = cfg, ctx, objective
        self.train_set, self.val_set = train_set, val_set
        o = cfg.optim
        if o.batch_size % ctx.world_size:
            raise FlameTalkError(f"optim.batch_size {o.batch_size} does not divide over {ctx.world_size} processes")
        self.per_rank = o.batch_size // ctx.world_size
        self.batches_per_epoch = len(train_set) // o.batch_size
        if self.batches_per_epoch < 1:
            raise FlameTalkError(f"{len(train_set)} training windows are fewer than one batch of {o.batch_size}; "
                                 "lower optim.batch_size or raise data.crops_per_clip")
        self.run_dir = Path(cfg.run.run_dir).expanduser()
        self.ckpt_path = self.run_dir / "ckpt" / "last.pt"
        self.named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
        decay = [p for n, p in self.named if p.ndim >= 2 and not n.endswith(NO_DECAY)]
        no_decay = [p for n, p in self.named if not (p.ndim >= 2 and not n.endswith(NO_DECAY))]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, o.max_steps, o.min_lr_ratio))
        self.ema = {n: p.detach().float().clone() for n, p in self.named} if o.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(ctx.device.type) if o.precision == "fp16" else None
        self.autocast = autocast_for(o.precision, ctx.device)
        self.model = wrap(objective, ctx)
        self.step = 0
        self.columns = ["step", "epoch", "lr", "grad_norm", "time_s", *objective.metric_names,
                        *[f"val_{m}" for m in objective.metric_names]]
        self.tb: Any = None

    # ---- state ----
    def state(self) -> dict[str, Any]:
        return {
            "format": CKPT_FORMAT, "stage": self.cfg.stage, "step": self.step, "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.objective.ckpt_state().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": {k: v.cpu() for k, v in self.ema.items()} if self.ema is not None else None,
            "extra": self.objective.extra_state(),
        }

    def resume(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        try:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise FlameTalkError(f"cannot read {self.ckpt_path} to resume ({err}); move it away to start over") from err
        if state.get("format") != CKPT_FORMAT or state.get("stage") != self.cfg.stage:
            raise FlameTalkError(f"{self.ckpt_path} is not a stage-{self.cfg.stage} training checkpoint")
        self.objective.load_ckpt_state(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema = {k: v.to(self.ctx.device) for k, v in state["ema"].items()}
        self.objective.load_extra_state(state["extra"])
        self.step = int(state["step"])
        return True

    def save(self) -> None:
        if self.ctx.is_main:
            atomic_save(self.state(), self.ckpt_path)

    def export(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        return self.objective.export(self.run_dir / "export", self.ema)

    # ---- logging ----
    def _open_logs(self, resumed: bool) -> None:
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "log.csv"
        rows = []
        if resumed and path.is_file():  # drop rows logged after the checkpoint (a crash between saves)
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in self.columns} for r in rows)
        if self.cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)
            except ImportError:
                self.tb = None

    def _log(self, row: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self.run_dir / "log.csv", "a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerow({k: row.get(k, "") for k in self.columns})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])

    # ---- steps ----
    def _batches(self, start_step: int):
        """(epoch, batch) from `start_step` on, forever; the position in an epoch is a function of the step."""
        epoch, offset = divmod(start_step, self.batches_per_epoch)
        while True:
            keys = [[(epoch, i) for i in b] for b in shard_batches(
                len(self.train_set), self.per_rank, epoch, self.cfg.run.seed, self.ctx)][: self.batches_per_epoch]
            loader = DataLoader(self.train_set, batch_sampler=keys[offset:], collate_fn=collate,
                                num_workers=self.cfg.data.num_workers)
            for batch in loader:
                yield epoch, batch
            epoch, offset = epoch + 1, 0

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}

    def _train_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], float]:
        o = self.cfg.optim
        torch.manual_seed((self.cfg.run.seed * 1_000_003 + self.step) * 1024 + self.ctx.rank)
        self.objective.set_train_mode()
        with self.autocast():
            out = self.model(self._to_device(batch))
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FlameTalkError(f"loss became {loss.item()} at step {self.step}; lower optim.lr or use fp32")
        self.opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        params = [p for _, p in self.named]
        if o.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().float().norm() for p in params if p.grad is not None])))
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self._update_ema()
        self.step += 1
        metrics = {k: float(v.detach()) for k, v in out.items()}
        metrics.update(self.objective.after_step(self.step, self.ctx))
        return metrics, grad_norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up of the decay: early weights are forgotten quickly, so short runs export useful EMA weights.
        decay = min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
        for n, p in self.named:
            self.ema[n].lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        module = unwrap(self.model)
        module.eval()
        per = max(1, min(self.per_rank, len(self.val_set) // self.ctx.world_size))
        batches = shard_batches(len(self.val_set), per, 0, self.cfg.run.seed, self.ctx)[: self.cfg.run.val_batches]
        sums: dict[str, float] = {}
        for idx in batches:
            with self.autocast():
                out = module(self._to_device(collate([self.val_set[(0, i)] for i in idx])))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) / max(1, len(batches))
        module.train()
        return {f"val_{k}": v for k, v in all_reduce_mean(sums, self.ctx, self.ctx.device).items()}

    def fit(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train to optim.max_steps (or `stop_at`, to simulate an interruption); returns the metric history."""
        resumed = self.resume() if resume else False
        self._open_logs(resumed)
        run, o = self.cfg.run, self.cfg.optim
        end = min(o.max_steps, stop_at) if stop_at is not None else o.max_steps
        result = TrainResult(step=self.step, run_dir=self.run_dir)
        bar = None
        if self.ctx.is_main and run.progress:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, desc=f"stage {self.cfg.stage}", unit="step", leave=False)
        t0 = time.perf_counter()
        batches = self._batches(self.step)
        while self.step < end:
            epoch, batch = next(batches)
            metrics, grad_norm = self._train_step(batch)
            metrics = all_reduce_mean(metrics, self.ctx, self.ctx.device)
            row: dict[str, Any] = {"step": self.step, "epoch": epoch, "lr": self.sched.get_last_lr()[0],
                                   "grad_norm": grad_norm, "time_s": time.perf_counter() - t0, **metrics}
            result.history.append(row)
            if (run.eval_every and self.step % run.eval_every == 0) or self.step == o.max_steps:
                result.val = self.validate()
                row.update(result.val)
            if self.step % max(1, run.log_every) == 0 or self.step == end:
                self._log(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if run.ckpt_every and self.step % run.ckpt_every == 0 and self.step != end:
                self.save()
                self.export()  # a usable release-layout folder during long runs too
        if bar is not None:
            bar.close()
        self.save()
        result.export_dir = self.export()
        result.step = self.step
        if self.tb is not None:
            self.tb.close()
        return result
