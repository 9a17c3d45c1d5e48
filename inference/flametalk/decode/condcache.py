"""Audio conditions of recent clips, so another take of the same line skips the audio encoder.

An animator re-generates a line with another style, or a pipeline runs the same dialogue with several styles: the
audio encoder (most of a generation's time on a CPU: BENCHMARKS.md) then computes the same per-window conditions
again. They depend only on the audio samples and the loaded weights, so the warm worker keeps them for its current
model (a new model gets a new cache) and a repeated clip reuses them: the same tensors, so the motion is the same
bits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

DEFAULT_BUDGET_BYTES = 128 * 2**20  # ~11 min of audio in exact mode (181 x 1024 fp32 = 0.74 MB per 4-s window)


def audio_key(audio_BN: torch.Tensor) -> str:
    """Identity of a clip: its shape and a digest of its float32 samples (a 60-s clip hashes in a few ms)."""
    samples = audio_BN.detach().to("cpu", torch.float32).contiguous().numpy()
    return f"{tuple(samples.shape)}:{hashlib.blake2b(samples.tobytes(), digest_size=20).hexdigest()}"


class ConditionCache:
    """Least-recently-used clips' per-window conditions, within a byte budget. Not thread-safe: one job at a
    time uses it (the worker runs jobs one after another)."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._clips: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self.bytes_used = 0  # sum of the kept clips' sizes
        self.last_hit = False  # whether the latest lookup found its clip (the worker reports it)

    @staticmethod
    def _size(conds: tuple[torch.Tensor, ...]) -> int:
        return sum(c.numel() * c.element_size() for c in conds)

    def __len__(self) -> int:
        return len(self._clips)

    def get(self, key: str) -> tuple[torch.Tensor, ...] | None:
        conds = self._clips.get(key)
        self.last_hit = conds is not None
        if conds is not None:
            self._clips.move_to_end(key)
        return conds

    def put(self, key: str, conds: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> None:
        """Keep a finished clip's conditions; the oldest clips go first when the budget is exceeded. A clip larger
        than the whole budget is not kept (it would evict everything and still not fit)."""
        conds = tuple(conds)
        size = self._size(conds)
        if size > self.budget_bytes:
            return
        old = self._clips.pop(key, None)
        if old is not None:
            self.bytes_used -= self._size(old)
        self._clips[key] = conds
        self.bytes_used += size
        while self.bytes_used > self.budget_bytes:
            self.bytes_used -= self._size(self._clips.popitem(last=False)[1])
