"""Training configuration: one dataclass per concern, read from a JSON or TOML file plus `--set key=value` overrides.

The `model` section uses the release's config.json layout (AR_CONFIG, VAE_CONFIG, AUDIO_ENCODER_CONFIG), so the
file a run starts from and the config.json it exports read the same way. Unknown keys are errors: a typo must not
silently train with a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FlameTalkError
from ..model.config import ARTalkConfig


@dataclass
class DataConfig:
    root: str = ""  # dataset folder (see data.py for the layout)
    split_file: str = "split.json"  # relative to root; missing file = every clip is in "train"
    train_split: str = "train"
    val_split: str = "val"  # empty or absent from the split file: no validation
    crops_per_clip: int = 0  # window crops of each clip per epoch; 0 = one per window of the clip's length
    num_workers: int = 0  # DataLoader worker processes
    length_tolerance: int = 2  # frames of audio/motion length mismatch accepted by the validator


@dataclass
class OptimConfig:
    batch_size: int = 32  # global batch (all processes together); must divide by the number of processes
    max_steps: int = 100_000
    lr: float = 1e-4
    weight_decay: float = 0.01  # on matrices only (not biases, norms, embeddings of one row)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # learning rate at max_steps, as a fraction of lr (linear decay after warm-up)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    ema_decay: float = 0.999  # 0 disables; the export uses the EMA weights when enabled
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)


@dataclass
class LossConfig:
    """Stage-1 loss weights (the paper's terms). Motion terms are in normalised units (dataset std = 1); vertex
    terms are squared errors in millimetres (so weights near 1 are sensible)."""

    motion_l1: float = 1.0
    velocity: float = 0.5  # L1 between frame-to-frame differences of prediction and truth
    smooth: float = 0.0  # mean squared second difference (acceleration) of the prediction
    lip_vertex: float = 0.0  # needs flame.flame_path and flame.masks_path
    vertex: float = 0.0  # all vertices; needs flame.flame_path
    commit: float = 0.25  # commitment of encoder outputs to their quantised values
    codebook: float = 1.0  # VQ only: codebook vectors towards the encoder outputs
    entropy: float = 0.0  # BSQ only: per-token bit entropy minus per-window bit-usage entropy


@dataclass
class QuantConfig:
    entropy_temperature: float = 1.0  # BSQ soft-bit temperature for the entropy term
    entropy_gamma: float = 1.0  # weight of the usage-entropy (maximised) inside the entropy term
    dead_code_threshold: float = 1.0  # VQ: codes used fewer times than this between refreshes are dead
    refresh_every: int = 200  # VQ: steps between dead-code refreshes; 0 disables
    refresh_noise: float = 0.01  # VQ: relative noise added to the encoder outputs that replace dead codes


@dataclass
class Stage2Config:
    vae_checkpoint: str = ""  # a stage-1 export folder (or its .pt); the autoencoder is frozen in stage 2
    audio_encoder_weights: str = ""  # local weights: a transformers folder (config.json + weights) or a .pt
    allow_random_audio_encoder: bool = False  # tests only: train on a randomly initialised frozen encoder
    null_style_prob: float = 0.1  # classifier-free style guidance: samples trained with the null style
    style_frames: int = 50  # 2 s style span, as the release's style clips
    style_dropout: bool = True  # dropout inside the style encoder while training (its layers' default 0.1)
    bitflip_max: float = 0.1  # per sample, flip this fraction x U(0,1) of the coarser scales' input bits


@dataclass
class FlameConfig:
    flame_path: str = ""  # FLAME 2020 model (generic_model.pkl, FLAME_with_eye.pt or .npz) for vertex losses
    masks_path: str = ""  # FLAME_masks.pkl (the 'lips' region for the lip-vertex loss)


@dataclass
class RunConfig:
    run_dir: str = "runs/artalk"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: each process uses cuda:LOCAL_RANK)
    log_every: int = 10
    ckpt_every: int = 1000  # ckpt/last.pt (full resume state) and the export folder
    eval_every: int = 0  # validation every N steps (0: only at the end, when a val split exists)
    val_batches: int = 8
    tensorboard: bool = True  # only if torch.utils.tensorboard and tensorboard are importable
    progress: bool = True


def default_model_dict() -> dict[str, Any]:
    return ARTalkConfig().to_release_dict()


@dataclass
class TrainConfig:
    stage: int = 1
    init_from: str = ""  # fine-tuning: a checkpoint folder whose matching weights initialise the trained parts
    model: dict[str, Any] = field(default_factory=default_model_dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    flame: FlameConfig = field(default_factory=FlameConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def model_config(self) -> ARTalkConfig:
        return ARTalkConfig.from_release_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        problems = []
        if self.stage not in (1, 2):
            problems.append(f"stage must be 1 or 2, got {self.stage}")
        if self.optim.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"optim.precision must be fp32, bf16 or fp16, got {self.optim.precision!r}")
        if self.optim.batch_size < 1 or self.optim.max_steps < 1:
            problems.append("optim.batch_size and optim.max_steps must be >= 1")
        if not self.data.root:
            problems.append("data.root (the dataset folder) is not set")
        if self.stage == 2 and not self.stage2.vae_checkpoint:
            problems.append("stage2.vae_checkpoint (a stage-1 export folder) is not set")
        if problems:
            raise FlameTalkError("invalid training config: " + "; ".join(problems))
        cfg = self.model_config()
        if cfg.patch_nums[0] != 1:
            raise FlameTalkError("training needs V_PATCH_NUMS to start with 1 (the style token predicts scale 0)")
        if cfg.prev_ratio != 1:
            raise FlameTalkError("training supports PREV_RATIO 1 (the release's value) only")


# ---- reading files and overrides ----

def _merge_model(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """AR_CONFIG / VAE_CONFIG merge key by key over the release defaults; AUDIO_ENCODER_CONFIG is replaced whole
    (mixing a HuBERT config into XLS-R defaults would build neither)."""
    out = json.loads(json.dumps(base))
    for key, value in given.items():
        if key in ("AR_CONFIG", "VAE_CONFIG") and isinstance(value, dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise FlameTalkError(f"training config: [{where}] must be a table/object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FlameTalkError(f"training config: unknown key(s) in [{where}]: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}" if where else name)
        elif name == "model" and cls is TrainConfig:
            kwargs[name] = _merge_model(default_model_dict(), value)
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(float(v) for v in value)
    if origin is dict and isinstance(value, dict):
        return value
    raise FlameTalkError(f"training config: {where} = {value!r} should be of type {getattr(hint, '__name__', hint)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 3e-4); the value is JSON when it parses, else a string."""
    if "=" not in text:
        raise FlameTalkError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FlameTalkError(f"--set {text}: {part} is not a section")
        node[path[-1]] = value
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FlameTalkError(f"cannot read training config {path} ({err.strerror or err})") from err
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(raw.decode("utf-8"))
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise FlameTalkError(f"training config {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {err}") from err
    if not isinstance(data, dict):
        raise FlameTalkError(f"training config {path} must hold an object at the top level")
    return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    cfg = _build(TrainConfig, data, "")
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    data = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(data, list(overrides or [])))
