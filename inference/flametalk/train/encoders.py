"""Pre-trained audio encoders for stage 2, from local files only (nothing is fetched from a hub).

`stage2.audio_encoder_weights` may be:
- a transformers model folder (config.json + model.safetensors or pytorch_model.bin), e.g. a downloaded
  wav2vec2 XLS-R 300M or HuBERT checkpoint: the architecture comes from its config.json;
- a single weights file (.safetensors, .pt, .bin; a flat state_dict): the architecture comes from the training
  config's AUDIO_ENCODER_CONFIG.
Prefixes of task models (`wav2vec2.`, `hubert.`, `audio_encoder.`) are stripped and task heads ignored; every
encoder weight must be present (the pre-training-only `masked_spec_embed` excepted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import FlameTalkError
from ..io.checkpoint import OPTIONAL_KEYS, normalize_keys

PREFIXES = ("wav2vec2.", "hubert.", "audio_encoder.", "model.")
META_KEYS = ("architectures", "_name_or_path", "transformers_version", "model_type", "torch_dtype", "dtype",
             "id2label", "label2id", "auto_map")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt")


def config_kwargs(kind: str, folder: Path) -> dict[str, Any]:
    """Keyword arguments of the encoder's transformers config, as the exported config.json stores them."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise FlameTalkError(f"cannot read {folder / 'config.json'} ({err})") from err
    expected = {"wav2vec": "wav2vec2", "hubert": "hubert"}[kind]
    if data.get("model_type") not in (None, expected):
        raise FlameTalkError(f"{folder} holds a {data.get('model_type')} model; AUDIO_ENCODER {kind!r} needs "
                             f"{expected}")
    return {k: v for k, v in data.items() if k not in META_KEYS}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FlameTalkError(f"cannot read audio encoder weights {path} ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FlameTalkError(f"{path} is not a state_dict")
    return obj


def locate(kind: str, weights: str, fallback: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config kwargs, raw state_dict) of the encoder at `weights`."""
    path = Path(weights).expanduser()
    if path.is_dir():
        file = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if file is None:
            raise FlameTalkError(f"no weights ({', '.join(WEIGHT_FILES)}) in audio encoder folder {path}")
        return config_kwargs(kind, path), read_weights(file)
    if path.is_file():
        return dict(fallback), read_weights(path)
    raise FlameTalkError(f"audio encoder weights not found: {path}")


def load_into(encoder: torch.nn.Module, raw: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: v.shape for k, v in encoder.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in PREFIXES:
            if key.startswith(prefix) and key[len(prefix):] in expected:
                key = key[len(prefix):]
                break
        state[key] = value
    state = {k: v for k, v in normalize_keys(state, expected).items() if k in expected}
    optional = {k.split(".", 1)[1] for k in OPTIONAL_KEYS}
    missing = [k for k in expected if k not in state and k not in optional]
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k])]
    if missing or wrong:
        raise FlameTalkError(f"{source} does not fit the audio encoder config ({len(missing)} missing, e.g. "
                             f"{missing[:2]}; {len(wrong)} of wrong shape, e.g. {wrong[:2]})")
    encoder.load_state_dict(state, strict=False)
