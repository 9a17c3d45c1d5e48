"""`python -m flametalk reference-run VECTOR.pt OUT.pt`: run a parity vector's model on its inputs.

A parity vector holds configs, an fp16 state_dict and inputs (see ../shared/README.md). This builds the model from
the vector alone, runs each computation and saves the results under the vector's output names. It never reads the
vector's recorded outputs, so any vector in the same format can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..decode.autoregressive import Generator
from ..errors import FlameTalkError
from ..io.checkpoint import model_from_state_dict
from ..model.artalk import ARTalkModel
from ..model.audio_encoder import encode_audio_windows
from ..model.config import ARTalkConfig

REQUIRED = ("model_config", "wav2vec2_config", "state_dict", "inputs")


def config_from_vector(vector: dict[str, Any]) -> ARTalkConfig:
    release_cfg = dict(vector["model_config"])
    release_cfg["AUDIO_ENCODER_CONFIG"] = dict(vector["wav2vec2_config"])
    return ARTalkConfig.from_release_dict(release_cfg)


def load_vector(path: str | Path) -> dict[str, Any]:
    try:
        vector = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise FlameTalkError(f"parity vector not found: {path}") from err
    except Exception as err:
        raise FlameTalkError(f"cannot read parity vector {path} ({type(err).__name__}: {err})") from err
    if not isinstance(vector, dict) or any(k not in vector for k in REQUIRED):
        raise FlameTalkError(f"{path} is not a parity vector: it needs the keys {', '.join(REQUIRED)}")
    return vector


def model_from_vector(vector: dict[str, Any], device: str | torch.device = "cpu") -> ARTalkModel:
    return model_from_state_dict(config_from_vector(vector), vector["state_dict"], device=device,
                                 source="the parity vector's state_dict")


@torch.inference_mode()
def compute_outputs(model: ARTalkModel, inputs: dict[str, torch.Tensor], recompute: bool = False,
                    prepare: bool = False, audio_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Every output the vector format records, from the vector's inputs (raw model outputs, no post-processing).

    prepare=True runs the inference-prepared model (pre-packed weights), the path generate uses. audio_batch:
    windows per audio-encoder call (default: the device's, generate.default_audio_batch).
    """
    if prepare:
        from ..decode.pipeline import prepare_for_inference

        prepare_for_inference(model)
    device = model.pos_embed.device
    audio = inputs["audio_16k"].float().to(device)
    style = inputs["style_motion"].float().to(device)
    gen = Generator(model, audio_batch)
    out: dict[str, torch.Tensor] = {
        "motion_with_style": gen.run(audio, style, recompute=recompute),
        "motion_without_style": gen.run(audio, None, recompute=recompute),
        "style_feature": model.style_encoder(style),
    }
    first_window = gen.split_windows(audio)[0]
    out["audio_feature_window0"] = encode_audio_windows(model.audio_encoder, first_window)
    prev, this = inputs["vae_prev_motion"].float().to(device), inputs["vae_this_motion"].float().to(device)
    prev_bits, this_bits = model.basic_vae.encode_pair(prev, this)
    out["vae_prev_bits"], out["vae_this_bits"] = prev_bits.int(), this_bits.int()
    out["vae_decoded_prev"], out["vae_decoded_this"] = model.basic_vae.decode_pair(prev_bits, this_bits)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def run_reference(vector_path: str | Path, out_path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from ..fast.devices import configure_torch_for_parity, resolve_device

    configure_torch_for_parity()
    dev = resolve_device(device)
    vector = load_vector(vector_path)
    model = model_from_vector(vector, dev)
    outputs = compute_outputs(model, vector["inputs"], prepare=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(outputs, tmp)
    tmp.replace(out_path)
    return outputs
