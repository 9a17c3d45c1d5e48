"""Converted checkpoint weights hand their file pages back (Linux); nothing else is touched."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from fixtures.common import PARITY_VECTOR
from flametalk.commands.reference import load_vector, model_from_vector
from flametalk.decode.pipeline import generate_motion
from flametalk.fast import filepages
from flametalk.io.checkpoint import load_checkpoint, read_state_dict

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise path is Linux-only")


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * filepages.PAGE / 2**20


@linux_only
def test_dropped_pages_leave_memory_and_keep_values(tmp_path):
    values = {f"w{i}": torch.arange(4 * 2**20, dtype=torch.float32) * (i + 1) for i in range(4)}  # 4 x 16 MB
    torch.save(values, tmp_path / "w.pt")
    state = read_state_dict(tmp_path / "w.pt")
    fw = filepages.track(state, tmp_path / "w.pt")
    assert fw is not None and fw.hi - fw.lo >= 64 * 2**20
    sums = {k: float(v.sum()) for k, v in state.items()}  # touch every page
    before = resident_mb()
    assert not filepages.done_with(state["w0"])  # outside a releasing block: nothing happens
    with filepages.releasing(fw):
        assert all(filepages.done_with(state[k]) for k in ("w0", "w1", "w2"))
        assert not filepages.done_with(torch.ones(2**20))  # an ordinary tensor is never touched
        assert not filepages.done_with(values["w3"])
    assert before - resident_mb() > 40  # ~48 MB of file pages handed back
    assert {k: float(v.sum()) for k, v in state.items()} == sums  # re-read from the file if used again
    torch.testing.assert_close(state["w2"], values["w2"], rtol=0, atol=0)


def test_state_dict_not_from_a_mapping_is_not_tracked(tmp_path):
    state = {"a": torch.ones(1000)}
    assert filepages.track(state, tmp_path / "missing.pt") is None


@linux_only
def test_checkpoint_model_still_matches_the_release_after_handing_pages_back(parity_checkpoint_dir):
    vector = load_vector(PARITY_VECTOR)
    model = load_checkpoint(parity_checkpoint_dir)
    assert model._file_weights is not None
    audio = vector["inputs"]["audio_16k"][0].float().numpy()
    motion = generate_motion(model, audio)  # packs every linear layer, dropping its file pages
    assert model._file_weights is None
    expected = generate_motion(model_from_vector(vector), audio)
    assert np.array_equal(motion, expected)
