"""One config dataclass for the whole ARTalk model, read from / written to the release's config.json layout."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FlameTalkError
from ..flame.contract import MOTION_DIM

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

# Sane ranges of config.json's numbers (the release's values are well inside): a damaged or hostile file is refused
# with the key's name before a model is built, instead of running for minutes (T_DEPTH 1e6) or failing deep inside.
RANGES: dict[str, tuple[int, int]] = {
    "AR_CONFIG.EMBED_DIM": (1, 8192),
    "AR_CONFIG.T_DEPTH": (1, 64),
    "AR_CONFIG.T_NUM_HEADS": (1, 128),
    "AR_CONFIG.PREV_RATIO": (1, 64),
    "VAE_CONFIG.MOTION_DIM": (1, 4096),
    "VAE_CONFIG.V_CODE_DIM": (1, 1024),
    "VAE_CONFIG.V_CODEBOOK_SIZE": (2, 65536),
    "VAE_CONFIG.T_DEPTH": (1, 64),
    "VAE_CONFIG.T_NUM_HEADS": (1, 128),
    "VAE_CONFIG.T_HIDDEN_DIM": (1, 8192),
    "VAE_CONFIG.V_PATCH_NUMS": (1, 1000),  # each entry; the last is the window length in frames
    "AUDIO_ENCODER_CONFIG.hidden_size": (1, 8192),
    "AUDIO_ENCODER_CONFIG.num_hidden_layers": (1, 128),
    "AUDIO_ENCODER_CONFIG.num_attention_heads": (1, 128),
    "AUDIO_ENCODER_CONFIG.intermediate_size": (1, 65536),
    "AUDIO_ENCODER_CONFIG.num_conv_pos_embeddings": (1, 1024),
    "AUDIO_ENCODER_CONFIG.num_conv_pos_embedding_groups": (1, 1024),
    "AUDIO_ENCODER_CONFIG.conv_dim": (1, 8192),  # each entry
    "AUDIO_ENCODER_CONFIG.conv_kernel": (1, 1024),
    "AUDIO_ENCODER_CONFIG.conv_stride": (1, 1024),
}
MAX_CONFIG_BYTES = 1 << 20  # config.json is read whole: a larger file is not a config
MAX_PATCH_SCALES = 16  # entries of V_PATCH_NUMS
MAX_CONV_LAYERS = 16  # entries of the audio encoder's conv_dim / conv_kernel / conv_stride
ENCODER_FLOAT_KEYS = ("layer_norm_eps", "mask_time_prob", "mask_feature_prob", "hidden_dropout", "activation_dropout",
                      "attention_dropout", "feat_proj_dropout", "final_dropout", "layerdrop")


def _whole(value: Any, key: str) -> int:
    """A config number that must be whole: int, or a float with no fraction (12.0); never bool, text, NaN, inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FlameTalkError(f"config.json: {key} must be a whole number, got {_show(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise FlameTalkError(f"config.json: {key} must be a whole number, got {value!r}")
    return int(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_encoder_config(enc: dict[str, Any]) -> list[str]:
    """Problems of AUDIO_ENCODER_CONFIG's keys that FlameTalk knows (others go to transformers as they are)."""
    problems = []
    if "hidden_size" not in enc:
        problems.append("AUDIO_ENCODER_CONFIG.hidden_size is missing")
    for name, (low, high) in RANGES.items():
        section, _, key = name.partition(".")
        if section != "AUDIO_ENCODER_CONFIG" or key not in enc:
            continue
        values = enc[key] if key.startswith("conv_") else [enc[key]]
        if key.startswith("conv_") and (not isinstance(values, list) or not 1 <= len(values) <= MAX_CONV_LAYERS):
            problems.append(f"{name} must be a list of 1 to {MAX_CONV_LAYERS} whole numbers, got {_show(values)}")
            continue
        for v in values:
            if not low <= _whole(v, name) <= high:
                problems.append(f"{name} {_show(v)} is outside {low:,}-{high:,}")
                break
    lengths = {len(enc[k]) for k in ("conv_dim", "conv_kernel", "conv_stride") if isinstance(enc.get(k), list)}
    if len(lengths) > 1:
        problems.append("AUDIO_ENCODER_CONFIG.conv_dim, conv_kernel and conv_stride must have the same length")
    for key in ENCODER_FLOAT_KEYS:
        if key in enc:
            v = enc[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                problems.append(f"AUDIO_ENCODER_CONFIG.{key} must be a number from 0 to 1, got {_show(v)}")
    if not problems:
        hidden = enc["hidden_size"]
        for key in ("num_attention_heads", "num_conv_pos_embedding_groups"):
            if key in enc and int(hidden) % int(enc[key]):
                problems.append(f"AUDIO_ENCODER_CONFIG.hidden_size {int(hidden)} is not divisible by {key} "
                                f"{int(enc[key])}")
    return problems


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
    motion_dim: int = MOTION_DIM
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
            for name, section in (("AR_CONFIG", ar), ("VAE_CONFIG", vae)):
                if not isinstance(section, dict):
                    raise TypeError(f"{name} must be an object, got {_show(section)}")
            if audio_cfg is not None and not isinstance(audio_cfg, dict):
                raise TypeError(f"AUDIO_ENCODER_CONFIG must be an object, got {_show(audio_cfg)}")
            patch_nums = vae["V_PATCH_NUMS"]
            if not isinstance(patch_nums, list) or not 1 <= len(patch_nums) <= MAX_PATCH_SCALES:
                raise FlameTalkError(f"config.json: VAE_CONFIG.V_PATCH_NUMS must be a list of 1 to {MAX_PATCH_SCALES} "
                                     f"whole numbers, got {_show(patch_nums)}")
            for name, text in (("AR_CONFIG.AUDIO_ENCODER", ar.get("AUDIO_ENCODER", "wav2vec")),
                               ("VAE_CONFIG.QUANTIZER", vae.get("QUANTIZER", "bsq"))):
                if not isinstance(text, str):
                    raise FlameTalkError(f"config.json: {name} must be a string, got {_show(text)}")
            out = cls(
                embed_dim=_whole(ar.get("EMBED_DIM", RELEASE_EMBED_DIM), "AR_CONFIG.EMBED_DIM"),
                ar_depth=_whole(ar["T_DEPTH"], "AR_CONFIG.T_DEPTH"),
                ar_heads=_whole(ar["T_NUM_HEADS"], "AR_CONFIG.T_NUM_HEADS"),
                prev_ratio=_whole(ar.get("PREV_RATIO", 1), "AR_CONFIG.PREV_RATIO"),
                audio_encoder=ar.get("AUDIO_ENCODER", "wav2vec"),
                audio_encoder_config=dict(audio_cfg) if audio_cfg else dict(XLSR_300M_CONFIG),
                motion_dim=_whole(vae.get("MOTION_DIM", MOTION_DIM), "VAE_CONFIG.MOTION_DIM"),
                code_dim=_whole(vae["V_CODE_DIM"], "VAE_CONFIG.V_CODE_DIM"),
                quantizer=vae.get("QUANTIZER", "bsq"),
                codebook_size=_whole(vae.get("V_CODEBOOK_SIZE", 256), "VAE_CONFIG.V_CODEBOOK_SIZE"),
                vae_depth=_whole(vae["T_DEPTH"], "VAE_CONFIG.T_DEPTH"),
                vae_heads=_whole(vae["T_NUM_HEADS"], "VAE_CONFIG.T_NUM_HEADS"),
                vae_hidden=_whole(vae["T_HIDDEN_DIM"], "VAE_CONFIG.T_HIDDEN_DIM"),
                patch_nums=tuple(_whole(p, "VAE_CONFIG.V_PATCH_NUMS") for p in patch_nums),
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
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise FlameTalkError(f"{path} is {path.stat().st_size:,} bytes, not a model config (the release's "
                                     f"is under 2 KB; at most {MAX_CONFIG_BYTES:,} are read); re-download config.json")
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise FlameTalkError(f"checkpoint config not found: {path}; put the release's config.json there") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FlameTalkError(f"cannot read {path} as JSON ({err}); re-download config.json") from err
        except RecursionError as err:
            raise FlameTalkError(f"cannot read {path} as JSON (nested too deeply); re-download config.json") from err
        if not isinstance(data, dict):
            raise FlameTalkError(f"{path} does not hold a JSON object; re-download config.json")
        try:
            return cls.from_release_dict(data)
        except FlameTalkError as err:
            if "expected AR_CONFIG and VAE_CONFIG" in str(err):
                raise
            raise FlameTalkError(f"{err} (in {path}; use the config.json that came with the weights)") from err

    def replace(self, **changes: Any) -> ARTalkConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Every number in its sane range (RANGES, named by its config.json key) and the shapes consistent."""
        problems = []
        values = {
            "AR_CONFIG.EMBED_DIM": self.embed_dim, "AR_CONFIG.T_DEPTH": self.ar_depth,
            "AR_CONFIG.T_NUM_HEADS": self.ar_heads, "AR_CONFIG.PREV_RATIO": self.prev_ratio,
            "VAE_CONFIG.MOTION_DIM": self.motion_dim, "VAE_CONFIG.V_CODE_DIM": self.code_dim,
            "VAE_CONFIG.T_DEPTH": self.vae_depth, "VAE_CONFIG.T_NUM_HEADS": self.vae_heads,
            "VAE_CONFIG.T_HIDDEN_DIM": self.vae_hidden,
        }
        if self.quantizer == "vq":
            values["VAE_CONFIG.V_CODEBOOK_SIZE"] = self.codebook_size
        for name, value in values.items():
            low, high = RANGES[name]
            if not low <= value <= high:
                problems.append(f"{name} {value} is outside {low:,}-{high:,}")
        range_ok = not problems
        if range_ok and self.embed_dim % self.ar_heads:
            problems.append(f"AR_CONFIG.EMBED_DIM {self.embed_dim} is not divisible by AR_CONFIG.T_NUM_HEADS "
                            f"{self.ar_heads}")
        if range_ok and self.vae_hidden % self.vae_heads:
            problems.append(f"VAE_CONFIG.T_HIDDEN_DIM {self.vae_hidden} is not divisible by VAE_CONFIG.T_NUM_HEADS "
                            f"{self.vae_heads}")
        low, high = RANGES["VAE_CONFIG.V_PATCH_NUMS"]
        if (not 1 <= len(self.patch_nums) <= MAX_PATCH_SCALES or list(self.patch_nums) != sorted(set(self.patch_nums))
                or self.patch_nums[0] < low or self.patch_nums[-1] > high):
            problems.append(f"V_PATCH_NUMS {list(self.patch_nums)} must be strictly increasing, from 1 to {high:,}, "
                            f"at most {MAX_PATCH_SCALES} entries")
        if self.audio_encoder not in ("wav2vec", "hubert"):
            problems.append(f"AUDIO_ENCODER {_show(self.audio_encoder)} is not supported (wav2vec, hubert)")
        if self.quantizer not in ("bsq", "vq"):
            problems.append(f"QUANTIZER {_show(self.quantizer)} is not supported (bsq, vq)")
        if not isinstance(self.audio_encoder_config, dict):
            problems.append("AUDIO_ENCODER_CONFIG must be an object")
        else:
            problems += _check_encoder_config(self.audio_encoder_config)
        if problems:
            raise FlameTalkError("invalid model config: " + "; ".join(problems))
