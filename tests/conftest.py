"""pytest fixtures (the parity vector and a checkpoint folder with its reduced model) and session hooks (CI without
bpy fails at once; the measurements tests recorded are printed at the end); importable helpers live in
`tests/fixtures/`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures import report
from fixtures.common import PARITY_VECTOR


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI=true a missing or broken bpy module is a failed run, not dozens of silent skips."""
    if os.environ.get("CI") != "true":
        return
    try:
        import bpy  # noqa: F401
    except Exception as err:  # ImportError, or a bpy whose shared libraries are missing
        pytest.exit(f"CI=true but the bpy module does not import ({type(err).__name__}: {err}); the Blender tests "
                    "would all be skipped: install bpy (scripts/setup_env.sh) and its system libraries (.ci/run)",
                    returncode=1)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measurements tests recorded with fixtures.report.record(), by section."""
    text = report.lines()
    if text:
        terminalreporter.section("measurements")
        for line in text:
            terminalreporter.write_line(line)


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
