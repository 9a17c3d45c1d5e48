"""pytest fixtures only (the parity vector and a checkpoint folder with its reduced model); importable helpers live in
`tests/fixtures/`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.common import PARITY_VECTOR


@pytest.fixture(scope="session")
def parity_vector() -> dict:
    import torch

    if not PARITY_VECTOR.is_file():
        pytest.fail(f"parity vector missing: {PARITY_VECTOR} (../shared must sit beside the checkout)")
    return torch.load(PARITY_VECTOR, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def parity_checkpoint_dir(parity_vector: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder (README "Checkpoint folder convention") with the parity vector's model:
    one flat state_dict `model.pt` (floating tensors cast fp16 -> fp32) and config.json with AR_CONFIG (incl.
    EMBED_DIM), VAE_CONFIG and the top-level AUDIO_ENCODER_CONFIG (the vector's wav2vec2_config)."""
    import torch

    folder = tmp_path_factory.mktemp("parity_checkpoint")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in parity_vector["state_dict"].items()}
    torch.save(state, folder / "model.pt")
    cfg = {
        "AR_CONFIG": dict(parity_vector["model_config"]["AR_CONFIG"]),
        "VAE_CONFIG": dict(parity_vector["model_config"]["VAE_CONFIG"]),
        "AUDIO_ENCODER_CONFIG": dict(parity_vector["wav2vec2_config"]),
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder
