"""Shared test fixtures: paths to ../shared and a checkpoint folder holding the parity vector's (reduced) model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY_VECTOR = SHARED / "reference" / "artalk_parity_v1.pt"
AUDIO_DIR = SHARED / "audio"


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


def run_flametalk(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m flametalk ARGS` in a fresh interpreter (the venv's), capturing text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "flametalk", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def one_error_line(stderr: str) -> str:
    """The single `flametalk: error: ...` line a bad-input run must print (and nothing else)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("flametalk: error: "), lines[0]
    return lines[0]
