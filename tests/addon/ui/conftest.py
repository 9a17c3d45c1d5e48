"""Fixtures of the add-on's operator tests in bpy: the add-on enabled with the torch worker on the reduced parity
model, the synthetic FLAME-format head, and the parity speech as a WAV. Modules that need more (a timing record, a
character file) wrap `fixtures.addon.enabled_addon` in their own `addon` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def addon(parity_checkpoint_dir: Path) -> Iterator[Any]:
    pytest.importorskip("bpy")
    from fixtures.addon import enabled_addon

    with enabled_addon(parity_checkpoint_dir) as prefs:
        yield prefs


@pytest.fixture(scope="module")
def head_model() -> Any:
    from fixtures.synthetic_head import make_head_arrays
    from flametalk.testing import synthetic_flame

    return synthetic_flame.model_from_arrays(make_head_arrays())


@pytest.fixture(scope="module")
def speech(parity_vector: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parity speech, 9.2 s at 16 kHz as float samples: three 4-s windows (the last partial)."""
    import soundfile as sf

    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    sf.write(path, parity_vector["inputs"]["audio_16k"][0].float().numpy(), 16_000, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 minutes of quiet noise (a job long enough to cancel in the middle)."""
    from fixtures.addon import write_wav

    return write_wav(tmp_path_factory.mktemp("long") / "long.wav", 600.0)
