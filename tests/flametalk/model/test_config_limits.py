"""config.json values in sane ranges (the message names the key), NaN/inf weights blamed on the checkpoint file, and
a refused pickle explained without torch's advice to turn the safety off (issue 19, items 7 and 11)."""

from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.common import one_error_line, run_flametalk
from flametalk.commands.reference import config_from_vector
from flametalk.errors import FlameTalkError
from flametalk.io.checkpoint import load_checkpoint
from flametalk.model.config import ARTalkConfig

RELEASE = {
    "AR_CONFIG": {"T_DEPTH": 12, "T_NUM_HEADS": 12, "PREV_RATIO": 1, "AUDIO_ENCODER": "wav2vec"},
    "VAE_CONFIG": {"MOTION_DIM": 106, "V_CODE_DIM": 32, "T_DEPTH": 8, "T_NUM_HEADS": 8, "T_HIDDEN_DIM": 512,
                   "V_PATCH_NUMS": [1, 5, 25, 50, 100]},
}


def changed(section: str, key: str, value) -> dict:
    cfg = copy.deepcopy(RELEASE)
    cfg.setdefault(section, {})[key] = value
    return cfg


@pytest.mark.parametrize("section, key, value, message", [
    ("AR_CONFIG", "T_DEPTH", 1e6, "invalid model config: AR_CONFIG.T_DEPTH 1000000 is outside 1-64"),
    ("AR_CONFIG", "T_DEPTH", 0, "AR_CONFIG.T_DEPTH 0 is outside 1-64"),
    ("AR_CONFIG", "T_NUM_HEADS", 0, "AR_CONFIG.T_NUM_HEADS 0 is outside 1-128"),
    ("AR_CONFIG", "T_NUM_HEADS", 7, "AR_CONFIG.EMBED_DIM 768 is not divisible by AR_CONFIG.T_NUM_HEADS 7"),
    ("AR_CONFIG", "EMBED_DIM", 10**9, "AR_CONFIG.EMBED_DIM 1000000000 is outside 1-8,192"),
    ("AR_CONFIG", "PREV_RATIO", 0, "AR_CONFIG.PREV_RATIO 0 is outside 1-64"),
    ("AR_CONFIG", "T_DEPTH", 2.5, "config.json: AR_CONFIG.T_DEPTH must be a whole number, got 2.5"),
    ("AR_CONFIG", "T_DEPTH", float("inf"), "AR_CONFIG.T_DEPTH must be a whole number, got inf"),
    ("AR_CONFIG", "T_DEPTH", float("nan"), "AR_CONFIG.T_DEPTH must be a whole number, got nan"),
    ("AR_CONFIG", "T_DEPTH", "12", "AR_CONFIG.T_DEPTH must be a whole number, got '12'"),
    ("AR_CONFIG", "T_DEPTH", True, "AR_CONFIG.T_DEPTH must be a whole number, got True"),
    ("AR_CONFIG", "AUDIO_ENCODER", ["wav2vec"], "AR_CONFIG.AUDIO_ENCODER must be a string"),
    ("VAE_CONFIG", "T_NUM_HEADS", 0, "VAE_CONFIG.T_NUM_HEADS 0 is outside 1-128"),
    ("VAE_CONFIG", "T_NUM_HEADS", 3, "VAE_CONFIG.T_HIDDEN_DIM 512 is not divisible by VAE_CONFIG.T_NUM_HEADS 3"),
    ("VAE_CONFIG", "T_DEPTH", 10**6, "VAE_CONFIG.T_DEPTH 1000000 is outside 1-64"),
    ("VAE_CONFIG", "V_CODE_DIM", 10**7, "VAE_CONFIG.V_CODE_DIM 10000000 is outside 1-1,024"),
    ("VAE_CONFIG", "MOTION_DIM", -1, "VAE_CONFIG.MOTION_DIM -1 is outside 1-4,096"),
    ("VAE_CONFIG", "V_PATCH_NUMS", [1, 5, 25, 50, 10**6], "V_PATCH_NUMS [1, 5, 25, 50, 1000000] must be strictly"),
    ("VAE_CONFIG", "V_PATCH_NUMS", list(range(1, 40)), "must be a list of 1 to 16 whole numbers"),
    ("VAE_CONFIG", "V_PATCH_NUMS", "1,5,25", "must be a list of 1 to 16 whole numbers, got '1,5,25'"),
    ("AUDIO_ENCODER_CONFIG", "hidden_size", 10**6, "AUDIO_ENCODER_CONFIG.hidden_size 1000000 is outside 1-8,192"),
    ("AUDIO_ENCODER_CONFIG", "num_hidden_layers", 10**4, "num_hidden_layers 10000 is outside 1-128"),
    ("AUDIO_ENCODER_CONFIG", "num_attention_heads", 0, "AUDIO_ENCODER_CONFIG.num_attention_heads 0 is outside"),
    ("AUDIO_ENCODER_CONFIG", "num_attention_heads", 7, "hidden_size 1024 is not divisible by num_attention_heads 7"),
    ("AUDIO_ENCODER_CONFIG", "conv_kernel", [10, 3], "conv_dim, conv_kernel and conv_stride must have the same"),
    ("AUDIO_ENCODER_CONFIG", "conv_stride", [0] * 7, "AUDIO_ENCODER_CONFIG.conv_stride 0 is outside 1-1,024"),
    ("AUDIO_ENCODER_CONFIG", "conv_dim", "big", "conv_dim must be a list of 1 to 16 whole numbers"),
    ("AUDIO_ENCODER_CONFIG", "mask_time_prob", 5.0, "AUDIO_ENCODER_CONFIG.mask_time_prob must be a number from 0"),
])
def test_out_of_range_values_are_refused_naming_the_key(section, key, value, message):
    cfg = changed(section, key, value)
    if section == "AUDIO_ENCODER_CONFIG":
        from flametalk.model.config import XLSR_300M_CONFIG

        cfg[section] = {**XLSR_300M_CONFIG, key: value}
    with pytest.raises(FlameTalkError) as info:
        ARTalkConfig.from_release_dict(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_the_release_config_and_small_test_configs_pass():
    cfg = ARTalkConfig.from_release_dict(RELEASE)
    assert (cfg.ar_depth, cfg.ar_heads, cfg.vae_hidden, cfg.patch_nums) == (12, 12, 512, (1, 5, 25, 50, 100))
    assert ARTalkConfig.from_release_dict(changed("AR_CONFIG", "T_DEPTH", 12.0)).ar_depth == 12
    partial = ARTalkConfig.from_release_dict({**RELEASE, "AUDIO_ENCODER_CONFIG": {"hidden_size": 1}})
    assert partial.audio_dim == 1  # keys left out go to transformers' defaults unchecked


def test_a_missing_hidden_size_is_named():
    with pytest.raises(FlameTalkError, match=re.escape("AUDIO_ENCODER_CONFIG.hidden_size is missing")):
        ARTalkConfig.from_release_dict({**RELEASE, "AUDIO_ENCODER_CONFIG": {"num_hidden_layers": 2}})


def test_a_bad_config_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(changed("AR_CONFIG", "T_NUM_HEADS", 0)))
    with pytest.raises(FlameTalkError) as info:
        ARTalkConfig.from_json_file(path)
    assert str(info.value) == (f"invalid model config: AR_CONFIG.T_NUM_HEADS 0 is outside 1-128 (in {path}; use the "
                               "config.json that came with the weights)")
    path.write_text("[" * 100_000)
    with pytest.raises(FlameTalkError, match="as JSON \\(nested too deeply\\)"):
        ARTalkConfig.from_json_file(path)
    path.write_text(json.dumps({**RELEASE, "pad": "x" * (2 << 20)}))
    with pytest.raises(FlameTalkError, match="bytes, not a model config"):
        ARTalkConfig.from_json_file(path)


@pytest.mark.parametrize("key, value, message", [
    ("hidden_act", "bogus", "(hidden_act 'bogus' is not an activation transformers knows)"),
    ("feat_extract_norm", "bogus", "(feat_extract_norm 'bogus' must be 'group' or 'layer')"),
    ("do_stable_layer_norm", "yes", "Field 'do_stable_layer_norm' expected bool"),
    ("num_feat_extract_layers", 99, "Configuration for convolutional layers is incorrect"),
])
def test_encoder_fields_transformers_checks_are_one_line(key, value, message):
    from flametalk.io.checkpoint import build_model
    from flametalk.model.config import XLSR_300M_CONFIG

    cfg = ARTalkConfig.from_release_dict({**RELEASE, "AUDIO_ENCODER_CONFIG": {**XLSR_300M_CONFIG, key: value}})
    with pytest.raises(FlameTalkError) as info:
        build_model(cfg, "meta")
    assert str(info.value).startswith("config.json's AUDIO_ENCODER_CONFIG is not a valid wav2vec config (")
    assert message in str(info.value) and "\n" not in str(info.value)


# ---- weights ----

def vector_checkpoint(parity_vector, folder: Path, damage=None) -> Path:
    folder.mkdir(parents=True)
    state = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in parity_vector["state_dict"].items()}
    if damage:
        damage(state)
    (folder / "config.json").write_text(json.dumps(config_from_vector(parity_vector).to_release_dict()))
    torch.save(state, folder / "model.pt")
    return folder


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_blame_the_checkpoint_file(parity_vector, tmp_path, bad):
    def damage(state):
        state["logits_head.weight"][3, :5] = bad
        state["logits_head.bias"][0] = bad

    folder = vector_checkpoint(parity_vector, tmp_path / "nan", damage)
    with pytest.raises(FlameTalkError) as info:
        load_checkpoint(folder)
    assert str(info.value) == (
        f"checkpoint {folder / 'model.pt'} is at fault: 5 NaN or infinite values in logits_head.weight and 1 more "
        "tensors; the file is damaged or comes from a training run that diverged: download it again or use another "
        "checkpoint"
    )


def test_a_nan_in_an_attention_mask_is_found_but_its_minus_inf_is_right(parity_vector, tmp_path):
    folder = vector_checkpoint(parity_vector, tmp_path / "mask",
                               lambda s: s["basic_vae.attn_mask"][0, 0, 0].fill_(float("nan")))
    message = "is at fault: 200 NaN or infinite values in basic_vae.attn_mask;"
    with pytest.raises(FlameTalkError, match=re.escape(message)):
        load_checkpoint(folder)
    assert torch.isinf(parity_vector["state_dict"]["basic_vae.attn_mask"]).any()  # -inf: blocked, and loads


def test_finite_weights_whose_fp16_sum_overflows_still_load(parity_vector, tmp_path):
    def big(state):
        state["logits_head.weight"] = torch.full_like(state["logits_head.weight"], 60_000.0).half()

    folder = vector_checkpoint(parity_vector, tmp_path / "big", big)
    model = load_checkpoint(folder)
    assert float(model.logits_head.weight.max()) == 60_000.0


def test_cli_names_the_checkpoint_for_nan_weights(parity_vector, tmp_path):
    folder = vector_checkpoint(parity_vector, tmp_path / "nan",
                               lambda s: s["logits_head.weight"].fill_(float("nan")))
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, np.float32), 16_000)
    proc = run_flametalk("generate", str(wav), "--checkpoint", str(folder), "--out", str(tmp_path / "o.npz"),
                         "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"checkpoint {folder / 'model.pt'} is at fault" in one_error_line(proc.stderr)
    assert not (tmp_path / "o.npz").exists()


# ---- refused pickles ----

class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_code_running_checkpoint_is_refused_without_advice_to_disable_safety(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE))
    torch.save({"x": Evil()}, folder / "model.pt")
    with pytest.raises(FlameTalkError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert message == (
        f"cannot read checkpoint {folder / 'model.pt'}: it holds more than plain weights (Unsupported global: GLOBAL "
        "print was not an allowed global by default), so it was refused and nothing in it was run; FlameTalk reads "
        "only tensors saved with torch.save: use the release's ARTalk_wav2vec.pt or a state_dict from a source you "
        "trust"
    )
    assert "weights_only" not in message and "False" not in message and "\x1b" not in message


def test_cli_refuses_a_code_running_checkpoint_in_one_line(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE))
    torch.save({"x": Evil()}, folder / "model.pt")
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, np.float32), 16_000)
    proc = run_flametalk("generate", str(wav), "--checkpoint", str(folder), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "so it was refused and nothing in it was run" in line and "weights_only" not in line
    assert "pwned" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("writer", ["torch_legacy", "pickle"])
def test_a_protocol_4_pickle_is_one_message_and_no_warning(tmp_path, writer):
    folder = tmp_path / "p4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE))
    state = {"logits_head.bias": torch.zeros(64)}
    if writer == "torch_legacy":
        torch.save(state, folder / "model.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    else:
        with open(folder / "model.pt", "wb") as fh:
            pickle.dump(state, fh, protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(FlameTalkError) as info:
            load_checkpoint(folder)
    assert [str(w.message) for w in seen] == []
    assert str(info.value) == (
        f"cannot read checkpoint {folder / 'model.pt'}: it is a pickle of protocol 4 or newer, which the safe reader "
        "cannot read (nothing in it was run); re-save the weights with torch.save's defaults: "
        "torch.save(state_dict, path)"
    )


def test_garbage_is_damaged_not_refused_and_never_quotes_the_advice(tmp_path):
    folder = tmp_path / "garbled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE))
    (folder / "model.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(FlameTalkError) as info:
        load_checkpoint(folder)
    assert str(info.value) == (f"cannot read checkpoint {folder / 'model.pt'} (the safe reader stopped at: Unsupported "
                               "operand 110); the file is damaged or not a torch checkpoint: download it again")


def test_cli_prints_no_torch_warning_for_a_protocol_4_checkpoint(tmp_path):
    folder = tmp_path / "p4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE))
    torch.save({"a": torch.zeros(2)}, folder / "model.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, np.float32), 16_000)
    proc = run_flametalk("generate", str(wav), "--checkpoint", str(folder), cwd=tmp_path)
    assert proc.returncode == 2
    assert "is a pickle of protocol 4 or newer" in one_error_line(proc.stderr)  # one line: no UserWarning
