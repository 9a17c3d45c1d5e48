"""Checkpoint loading: release key layout, both weight-norm spellings, strictness and clear errors."""

import json
import re
from pathlib import Path

import pytest
import torch
from fixtures.common import SHARED
from flametalk.commands.reference import config_from_vector, load_vector
from flametalk.errors import FlameTalkError
from flametalk.io.checkpoint import build_model, expected_shapes, load_checkpoint
from flametalk.model.config import ARTalkConfig

KEYS_TSV = SHARED / "reference" / "artalk_wav2vec_state_dict_keys.tsv"
VECTOR = SHARED / "reference" / "artalk_parity_v1.pt"
RELEASE_CONFIG = {
    "AR_CONFIG": {"T_DEPTH": 12, "T_NUM_HEADS": 12, "PREV_RATIO": 1, "AUDIO_ENCODER": "wav2vec"},
    "VAE_CONFIG": {"MOTION_DIM": 106, "V_CODE_DIM": 32, "T_DEPTH": 8, "T_NUM_HEADS": 8, "T_HIDDEN_DIM": 512,
                   "V_PATCH_NUMS": [1, 5, 25, 50, 100]},
}


def read_tsv() -> dict[str, tuple[int, ...]]:
    rows = KEYS_TSV.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, _dtype = row.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def test_full_size_model_matches_every_release_key_and_shape():
    release = read_tsv()
    assert len(release) == 814
    model = build_model(ARTalkConfig.from_release_dict(RELEASE_CONFIG), "meta")
    ours = {k: tuple(v) for k, v in expected_shapes(model).items()}
    assert ours == release
    n_params = sum(v.numel() for k, v in model.state_dict().items() if v.is_floating_point())
    assert 480e6 < n_params < 500e6  # "~490 M fp32 values"


def write_checkpoint(folder: Path, cfg_dict: dict, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg_dict))
    torch.save(state, folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def vector():
    return load_vector(VECTOR)


def test_folder_and_file_paths_load_the_same_weights(vector, tmp_path):
    cfg = config_from_vector(vector).to_release_dict()
    folder = write_checkpoint(tmp_path / "ckpt", cfg, {k: v.float() for k, v in vector["state_dict"].items()})
    a = load_checkpoint(folder)
    b = load_checkpoint(folder / "model.pt")
    assert torch.equal(a.logits_head.weight, vector["state_dict"]["logits_head.weight"].float())
    assert torch.equal(a.logits_head.weight, b.logits_head.weight)
    assert not any(p.is_meta for p in a.parameters()) and not any(t.is_meta for t in a.buffers())


def test_old_weight_norm_spelling_and_missing_mask_embed_are_accepted(vector, tmp_path):
    state = {k: v.float() for k, v in vector["state_dict"].items()}
    prefix = "audio_encoder.encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    del state["audio_encoder.masked_spec_embed"]
    folder = write_checkpoint(tmp_path / "old", config_from_vector(vector).to_release_dict(), state)
    model = load_checkpoint(folder)
    conv = model.audio_encoder.encoder.pos_conv_embed.conv
    assert torch.equal(conv.parametrizations.weight.original1, state[prefix + "weight_v"])


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("logits_head.bias"), "1 missing: logits_head.bias"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(2)), "1 unexpected: extra.weight"),
    (lambda s: s.__setitem__("logits_head.bias", torch.zeros(3)), "wrong shape: logits_head.bias (3,)"),
])
def test_key_mismatches_are_reported(vector, tmp_path, damage, message):
    state = {k: v.float() for k, v in vector["state_dict"].items()}
    damage(state)
    folder = write_checkpoint(tmp_path / "bad", config_from_vector(vector).to_release_dict(), state)
    with pytest.raises(FlameTalkError, match=re.escape("does not match its config.json")) as info:
        load_checkpoint(folder)
    assert message in str(info.value)


def test_missing_and_damaged_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FlameTalkError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlameTalkError, match="no weights file"):
        load_checkpoint(tmp_path / "empty")
    folder = tmp_path / "garbled"
    folder.mkdir()
    (folder / "ARTalk_wav2vec.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(FlameTalkError, match=re.escape("config.json missing")):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(RELEASE_CONFIG))
    with pytest.raises(FlameTalkError, match="cannot read checkpoint"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(FlameTalkError, match=r"cannot read .* as JSON"):
        load_checkpoint(folder)


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE_CONFIG))
    torch.save({"x": Evil()}, folder / "ARTalk_wav2vec.pt")
    with pytest.raises(FlameTalkError, match="cannot read checkpoint"):
        load_checkpoint(folder)
