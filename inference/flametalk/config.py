"""One config dataclass for the whole ARTalk model, read from / written to the release's config.json layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FlameTalkError

# wav2vec2 XLS-R 300M, the release's audio encoder: built offline from these numbers, never fetched from a hub.
XLSR_300M_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "mask_time_prob": 0.075,
}

RELEASE_EMBED_DIM = 768  # not in the release's config.json: fixed in its code


@dataclass(frozen=True)
class ARTalkConfig:
    # autoregressive generator
    embed_dim: int = RELEASE_EMBED_DIM
    ar_depth: int = 12
    ar_heads: int = 12
    prev_ratio: int = 1  # how many previous windows' tokens each window attends to
    mlp_ratio: float = 4.0
    audio_encoder: str = "wav2vec"  # "wav2vec" (release) or "hubert" (paper)
    audio_encoder_config: dict[str, Any] = field(default_factory=lambda: dict(XLSR_300M_CONFIG))
    # temporal multi-scale motion autoencoder
    motion_dim: int = 106
    code_dim: int = 32  # bits per token (binary spherical quantiser); vector width for the VQ codebook
    quantizer: str = "bsq"  # "bsq" (release: binary spherical) or "vq" (paper: codebook of codebook_size vectors)
    codebook_size: int = 256  # VQ only: the paper's 256 x 64 codebook
    vae_depth: int = 8
    vae_heads: int = 8
    vae_hidden: int = 512
    patch_nums: tuple[int, ...] = (1, 5, 25, 50, 100)  # tokens per scale; the last is the window length in frames
    # style encoder (fixed in the release)
    style_dim: int = 128
    style_depth: int = 4
    style_heads: int = 4
    style_ff: int = 512
    style_max_len: int = 600

    @property
    def window_frames(self) -> int:
        return self.patch_nums[-1]

    @property
    def tokens_per_window(self) -> int:
        return sum(self.patch_nums)

    @property
    def logits_dim(self) -> int:
        """Outputs per token of the AR head: 2 logits per bit (BSQ) or one per codebook entry (VQ)."""
        return 2 * self.code_dim if self.quantizer == "bsq" else self.codebook_size

    @property
    def audio_dim(self) -> int:
        return int(self.audio_encoder_config["hidden_size"])

    # ---- release config.json <-> dataclass ----
    @classmethod
    def from_release_dict(cls, cfg: dict[str, Any]) -> ARTalkConfig:
        try:
            ar, vae = cfg["AR_CONFIG"], cfg["VAE_CONFIG"]
            audio_cfg = cfg.get("AUDIO_ENCODER_CONFIG")
            out = cls(
                embed_dim=int(ar.get("EMBED_DIM", RELEASE_EMBED_DIM)),
                ar_depth=int(ar["T_DEPTH"]),
                ar_heads=int(ar["T_NUM_HEADS"]),
                prev_ratio=int(ar.get("PREV_RATIO", 1)),
                audio_encoder=str(ar.get("AUDIO_ENCODER", "wav2vec")),
                audio_encoder_config=dict(audio_cfg) if audio_cfg else dict(XLSR_300M_CONFIG),
                motion_dim=int(vae.get("MOTION_DIM", 106)),
                code_dim=int(vae["V_CODE_DIM"]),
                quantizer=str(vae.get("QUANTIZER", "bsq")),
                codebook_size=int(vae.get("V_CODEBOOK_SIZE", 256)),
                vae_depth=int(vae["T_DEPTH"]),
                vae_heads=int(vae["T_NUM_HEADS"]),
                vae_hidden=int(vae["T_HIDDEN_DIM"]),
                patch_nums=tuple(int(p) for p in vae["V_PATCH_NUMS"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FlameTalkError(
                f"config.json is not an ARTalk config ({type(err).__name__}: {err}); "
                "expected AR_CONFIG and VAE_CONFIG as in the release's config.json"
            ) from err
        out.validate()
        return out

    def to_release_dict(self) -> dict[str, Any]:
        out = {
            "AR_CONFIG": {
                "T_DEPTH": self.ar_depth,
                "T_NUM_HEADS": self.ar_heads,
                "PREV_RATIO": self.prev_ratio,
                "AUDIO_ENCODER": self.audio_encoder,
                "EMBED_DIM": self.embed_dim,
            },
            "VAE_CONFIG": {
                "MOTION_DIM": self.motion_dim,
                "V_CODE_DIM": self.code_dim,
                "T_DEPTH": self.vae_depth,
                "T_NUM_HEADS": self.vae_heads,
                "T_HIDDEN_DIM": self.vae_hidden,
                "V_PATCH_NUMS": list(self.patch_nums),
            },
            "AUDIO_ENCODER_CONFIG": dict(self.audio_encoder_config),
        }
        if self.quantizer != "bsq":  # release files stay byte-for-byte in the release layout
            out["VAE_CONFIG"].update({"QUANTIZER": self.quantizer, "V_CODEBOOK_SIZE": self.codebook_size})
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> ARTalkConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise FlameTalkError(f"checkpoint config not found: {path}; put the release's config.json there") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FlameTalkError(f"cannot read {path} as JSON ({err}); re-download config.json") from err
        if not isinstance(data, dict):
            raise FlameTalkError(f"{path} does not hold a JSON object; re-download config.json")
        return cls.from_release_dict(data)

    def replace(self, **changes: Any) -> ARTalkConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        problems = []
        if self.embed_dim % self.ar_heads:
            problems.append(f"EMBED_DIM {self.embed_dim} is not divisible by T_NUM_HEADS {self.ar_heads}")
        if self.vae_hidden % self.vae_heads:
            problems.append(f"T_HIDDEN_DIM {self.vae_hidden} is not divisible by the VAE's T_NUM_HEADS")
        if list(self.patch_nums) != sorted(set(self.patch_nums)) or self.patch_nums[0] < 1:
            problems.append(f"V_PATCH_NUMS {list(self.patch_nums)} must be strictly increasing and positive")
        if self.prev_ratio < 1:
            problems.append("PREV_RATIO must be >= 1")
        if self.audio_encoder not in ("wav2vec", "hubert"):
            problems.append(f"AUDIO_ENCODER {self.audio_encoder!r} is not supported (wav2vec, hubert)")
        if self.quantizer not in ("bsq", "vq"):
            problems.append(f"QUANTIZER {self.quantizer!r} is not supported (bsq, vq)")
        if self.quantizer == "vq" and self.codebook_size < 2:
            problems.append("V_CODEBOOK_SIZE must be >= 2")
        if problems:
            raise FlameTalkError("invalid model config: " + "; ".join(problems))
