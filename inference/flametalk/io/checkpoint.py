"""Checkpoint loading: the release layout (one flat state_dict file + config.json beside it), strictly.

Nothing in a checkpoint is executed: files are read with `torch.load(weights_only=True)`, memory-mapped so a 2 GB
file costs no copy before the weights are used.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..assets.store import CHECKPOINT_NAME as RELEASE_WEIGHTS_NAME
from ..assets.store import CONFIG_NAME
from ..errors import FlameTalkError
from ..fast import filepages
from ..model.artalk import ARTalkModel
from ..model.config import ARTalkConfig

WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Present only when the encoder's config masks time steps during pre-training; never used at inference.
OPTIONAL_KEYS = ("audio_encoder.masked_spec_embed",)
# Attention masks: -inf marks blocked positions (the only weights where a non-finite value is right).
MASK_KEYS = ("attn_bias_for_masking", "attn_mask")
# torch/transformers version differences in the positional-convolution weight norm's parameter names.
WEIGHT_NORM_SPELLINGS = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A checkpoint folder or its weights file -> (weights file, config.json)."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
        if (path / RELEASE_WEIGHTS_NAME).is_file():
            candidates = [path / RELEASE_WEIGHTS_NAME]
        if not candidates:
            raise FlameTalkError(
                f"no weights file (*.pt) in checkpoint folder {path}; put {RELEASE_WEIGHTS_NAME} and {CONFIG_NAME} "
                "there (python -m flametalk assets download)"
            )
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise FlameTalkError(f"checkpoint folder {path} holds several weight files ({names}); keep one")
        weights = candidates[0]
    elif path.is_file():
        weights = path
    else:
        raise FlameTalkError(
            f"checkpoint not found: {path}; pass the folder holding {RELEASE_WEIGHTS_NAME} and {CONFIG_NAME} "
            "(python -m flametalk assets download fetches them)"
        )
    config = weights.parent / CONFIG_NAME
    if not config.is_file():
        raise FlameTalkError(f"{CONFIG_NAME} missing beside {weights}; put the release's {CONFIG_NAME} there")
    return weights, config


def checkpoint_provenance(path: str | Path) -> dict[str, str]:
    """Path and sha256 of the weights file load_checkpoint picks and of its config.json (hashes cached beside)."""
    from ..assets.hashing import cached_sha256

    weights, config = resolve_checkpoint(path)
    return {
        "path": str(Path(path).expanduser().resolve()),
        "state_dict": weights.name,
        "sha256": cached_sha256(weights),  # sidecar-cached: the 2 GB release file is hashed once
        "config_sha256": cached_sha256(config),
    }


def _torch_load(weights: Path, mmap: bool):
    with warnings.catch_warnings():
        # torch warns about pickle protocols other than 2 on a line of its own; the file is read (or refused) anyway
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
        return torch.load(weights, map_location="cpu", weights_only=True, mmap=mmap)


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    try:
        obj = _torch_load(weights, mmap=True)
    except RuntimeError:
        # mmap needs the zip format; older single-blob files can still be read (still weights_only).
        try:
            obj = _torch_load(weights, mmap=False)
        except Exception as err:
            raise _unreadable(weights, err) from err
    except Exception as err:
        raise _unreadable(weights, err) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # training checkpoints wrap the flat dict
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FlameTalkError(f"{weights} is not a state_dict (a flat dict of tensors); is it the right file?")
    return obj


def _refusal_reason(text: str) -> str:
    """What torch's safe unpickler objected to, without its advice (which includes turning the safety off)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    _, found, detail = text.partition("WeightsUnpickler error:")
    detail = " ".join(detail.split()) if found else ""
    detail = re.split(r"\s(?:Please|Check the documentation)\b", detail)[0].rstrip(". ")
    return detail[:160] or "objects other than tensors"


def _unreadable(weights: Path, err: Exception) -> FlameTalkError:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Unsupported operand 149" in text:  # FRAME: pickle protocol >= 4
        return FlameTalkError(
            f"cannot read checkpoint {weights}: it is a pickle of protocol 4 or newer, which the safe reader cannot "
            "read (nothing in it was run); re-save the weights with torch.save's defaults: torch.save(state_dict, path)"
        )
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        reason = _refusal_reason(text)
        if "Unsupported global" in reason or "Unsupported class" in reason:
            return FlameTalkError(
                f"cannot read checkpoint {weights}: it holds more than plain weights ({reason}), so it was refused "
                "and nothing in it was run; FlameTalk reads only tensors saved with torch.save: use the release's "
                f"{RELEASE_WEIGHTS_NAME} or a state_dict from a source you trust"
            )
        return FlameTalkError(f"cannot read checkpoint {weights} (the safe reader stopped at: {reason}); the file is "
                              "damaged or not a torch checkpoint: download it again")
    return FlameTalkError(
        f"cannot read checkpoint {weights} ({type(err).__name__}: {text.splitlines()[0][:200] if text else ''}); "
        "the file is damaged or not a torch checkpoint: download it again"
    )


def check_finite(state: dict[str, torch.Tensor], weights: Path, file_weights: filepages.FileWeights | None = None
                 ) -> None:
    """Refuse weights holding NaN or infinity (masks: NaN or +inf), naming the file: such a model only makes NaN.

    One sum per tensor (cheap next to loading); a tensor whose sum is not finite is then counted
    exactly (a finite fp16 tensor may overflow its sum). Pages read here are handed back at once (filepages), so the
    check does not raise the memory a conversion peaks at."""
    bad: list[tuple[str, int]] = []
    with filepages.releasing(file_weights):
        for key, tensor in state.items():
            if not tensor.is_floating_point() or not tensor.numel():
                pass
            elif key.endswith(MASK_KEYS):  # -inf blocks attention there; NaN or +inf never belongs
                n = int((torch.isnan(tensor) | (tensor == float("inf"))).sum())
                if n:
                    bad.append((key, n))
            elif not bool(torch.isfinite(tensor.sum())):
                n = int((~torch.isfinite(tensor)).sum())
                if n:
                    bad.append((key, n))
            filepages.done_with(tensor)
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        key, n = bad[0]
        raise FlameTalkError(
            f"checkpoint {weights} is at fault: {n:,} NaN or infinite values in {key}{more}; the file is damaged "
            "or comes from a training run that diverged: download it again or use another checkpoint"
        )


def normalize_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map either weight-norm spelling onto the one this torch uses; drop optional keys the model lacks."""
    out: dict[str, torch.Tensor] = {}
    reverse = {v: k for k, v in WEIGHT_NORM_SPELLINGS.items()}
    for key, tensor in state.items():
        if key not in expected:
            for a, b in list(WEIGHT_NORM_SPELLINGS.items()) + list(reverse.items()):
                if key.endswith(a) and key[: -len(a)] + b in expected:
                    key = key[: -len(a)] + b
                    break
        if key in OPTIONAL_KEYS and key not in expected:
            continue
        out[key] = tensor
    return out


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str) -> None:
    missing = [k for k in expected if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise FlameTalkError(
            f"{source} does not match its config.json ({'; '.join(problems)}); use the config.json that came "
            "with these weights"
        )


def check_audio_encoder_config(cfg: ARTalkConfig) -> None:
    """Let transformers check AUDIO_ENCODER_CONFIG's fields (types, conv layers, norms, activations) up front, so a
    bad value is one line naming the config instead of an exception from deep inside the model's construction."""
    from transformers.activations import ACT2FN

    if cfg.audio_encoder == "hubert":
        from transformers import HubertConfig as EncoderConfig
    else:
        from transformers import Wav2Vec2Config as EncoderConfig
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = EncoderConfig(**cfg.audio_encoder_config)
        for key in ("hidden_act", "feat_extract_activation"):
            value = getattr(enc, key, "gelu")
            if not isinstance(value, str) or value not in ACT2FN:
                raise ValueError(f"{key} {value!r} is not an activation transformers knows")
        if getattr(enc, "feat_extract_norm", "group") not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm {enc.feat_extract_norm!r} must be 'group' or 'layer'")
        if enc.hidden_size % enc.num_attention_heads:  # also when one of them is left to transformers' default
            raise ValueError(f"hidden_size {enc.hidden_size} is not divisible by num_attention_heads "
                             f"{enc.num_attention_heads}")
    except Exception as err:  # transformers' own validation errors have no common base beyond Exception
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise FlameTalkError(f"config.json's AUDIO_ENCODER_CONFIG is not a valid {cfg.audio_encoder} config "
                             f"({reason}); use the config.json that came with the weights") from err


def build_model(cfg: ARTalkConfig, device: str | torch.device = "meta") -> ARTalkModel:
    """The architecture without weights (meta: instant, no memory) or randomly initialised on a real device."""
    check_audio_encoder_config(cfg)
    with torch.device(device):
        model = ARTalkModel(cfg)
    return model.eval()


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> ARTalkModel:
    """Load a checkpoint folder (or weights file) into an eval-mode model on `device`."""
    weights, config_path = resolve_checkpoint(path)
    cfg = ARTalkConfig.from_json_file(config_path)
    state = read_state_dict(weights)
    file_weights = filepages.track(state, weights)  # lets conversions hand the file's pages back
    check_finite(state, weights, file_weights)
    model = model_from_state_dict(cfg, state, device=device, dtype=dtype, source=str(weights))
    model._file_weights = file_weights if model.pos_embed.device.type == "cpu" else None
    return model


def model_from_state_dict(cfg: ARTalkConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, source: str = "state_dict") -> ARTalkModel:
    model = build_model(cfg, "meta")
    expected = expected_shapes(model)
    state = normalize_keys(state, expected)
    check_keys(state, expected, source)
    # Floating tensors in the model's dtype (fp16-stored test vectors are cast up); integer buffers stay as they are.
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    if "audio_encoder.masked_spec_embed" in expected and "audio_encoder.masked_spec_embed" not in state:
        state["audio_encoder.masked_spec_embed"] = torch.zeros(expected["audio_encoder.masked_spec_embed"], dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)
