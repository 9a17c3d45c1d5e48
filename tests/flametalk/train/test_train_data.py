"""Dataset layout, validator (bad clips reported, not crashed on), window sampling and the training config files."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from flametalk.commands.main import main
from flametalk.errors import FlameTalkError
from flametalk.testing.synthetic_dataset import write_synthetic_dataset
from flametalk.train.config import config_from_dict, load_config
from flametalk.train.data import WindowDataset, WindowSpec, collate, load_split, validate_dataset


@pytest.fixture(scope="module")
def data_with_bad_clips(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("data"), n_clips=4, seconds=2.0, seed=1)
    motion = np.load(root / "clip_00.npz")["motion"]
    np.savez(root / "bad_len.npz", motion=motion[:30])  # 2 s of audio, 1.2 s of motion
    shutil.copy(root / "clip_00.wav", root / "bad_len.wav")
    nan = motion.copy()
    nan[5, 3] = np.nan
    np.savez(root / "bad_nan.npz", motion=nan)
    shutil.copy(root / "clip_00.wav", root / "bad_nan.wav")
    np.savez(root / "bad_dims.npz", motion=motion[:, :100])
    shutil.copy(root / "clip_00.wav", root / "bad_dims.wav")
    np.savez(root / "no_audio.npz", motion=motion)
    (root / "bad_audio.wav").write_bytes(b"RIFF not really a wav file")
    np.savez(root / "bad_audio.npz", motion=motion)
    np.savez(root / "bad_fps.npz", motion=motion, fps=30.0)
    sf.write(str(root / "bad_fps.wav"), np.zeros(32000, np.float32), 16000)
    split = json.loads((root / "split.json").read_text())
    split["train"] += ["bad_len", "bad_nan", "bad_dims", "no_audio", "bad_audio", "bad_fps", "ghost"]
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_validator_reports_every_bad_clip(data_with_bad_clips):
    report = validate_dataset(data_with_bad_clips)
    assert sorted(report.bad) == ["bad_audio", "bad_dims", "bad_fps", "bad_len", "bad_nan", "no_audio"]
    text = {k: " ".join(v) for k, v in report.bad.items()}
    assert "length mismatch" in text["bad_len"] and "NaN" in text["bad_nan"]
    assert "(frames, 106)" in text["bad_dims"] and "no audio" in text["no_audio"]
    assert "unreadable audio" in text["bad_audio"] and "fps" in text["bad_fps"]
    assert any("ghost" in w for w in report.warnings)
    assert len(report.good) == 4


def test_training_data_skips_bad_clips_and_resamples(data_with_bad_clips):
    clips, _ = load_split(data_with_bad_clips, "train")
    assert [c.name for c in clips] == ["clip_00", "clip_01"]
    for clip in clips:  # clip_01 was written at 22.05 kHz: resampled to 16 kHz, cut to the motion's length
        assert clip.audio.shape == (clip.motion.shape[0] * 640,) and clip.audio.dtype == np.float32


def test_validate_command_lists_bad_clips_and_fails(data_with_bad_clips, capsys):
    assert main(["dataset", "validate", str(data_with_bad_clips)]) == 2
    out, err = capsys.readouterr()
    assert "BAD   bad_nan:" in out and "6 bad" in out
    assert err.strip().startswith("flametalk: error: 6 of 10 clips are bad")
    good = write_synthetic_dataset(data_with_bad_clips.parent / "good", n_clips=3, seconds=1.0)
    assert main(["dataset", "validate", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bad"] == {}


def test_window_samples_are_deterministic_per_key(data_with_bad_clips):
    clips, _ = load_split(data_with_bad_clips, "train")
    spec = WindowSpec(window=25, stage=2, tokens=31, code_dim=8, codebook_size=16)
    ds = WindowDataset(clips, spec, seed=3, crops_per_clip=5)
    a, b, c = ds[(1, 4)], ds[(1, 4)], ds[(2, 4)]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in ("flip_u", "audio"))
    batch = collate([ds[(0, i)] for i in range(4)])
    assert batch["prev"].shape == (4, 25, 106) and batch["audio"].shape == (4, 16000)
    assert batch["style"].shape == (4, 50, 106) and batch["flip_u"].shape == (4, 31, 8)


def test_config_files_json_toml_overrides_and_typos(tmp_path):
    (tmp_path / "c.toml").write_text('stage = 2\n[data]\nroot = "/d"\n[stage2]\nvae_checkpoint = "/v"\n'
                                     '[optim]\nlr = 1e-3\nbetas = [0.8, 0.9]\n')
    cfg = load_config(tmp_path / "c.toml", ["optim.batch_size=4", "run.run_dir=out"])
    assert cfg.stage == 2 and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.batch_size == 4 and cfg.run.run_dir == "out"
    assert cfg.model_config().embed_dim == 768  # model section defaults to the release
    (tmp_path / "c.json").write_text(json.dumps({"data": {"root": "/d"}, "optim": {"lerning_rate": 1}}))
    with pytest.raises(FlameTalkError, match="lerning_rate"):
        load_config(tmp_path / "c.json")
    with pytest.raises(FlameTalkError, match="should be of type"):
        config_from_dict({"data": {"root": 5}})
    vq = config_from_dict({"data": {"root": "/d"}, "model": {"VAE_CONFIG": {"QUANTIZER": "vq", "V_CODE_DIM": 64}}})
    assert vq.model_config().quantizer == "vq" and vq.model_config().logits_dim == 256
    assert vq.model_config().patch_nums == (1, 5, 25, 50, 100)  # VAE_CONFIG merged key by key


def test_example_configs_parse():
    from pathlib import Path

    import flametalk.train

    folder = Path(flametalk.train.__file__).parent / "configs"
    configs = {p.stem: load_config(p, ["data.root=/d"]) for p in sorted(folder.glob("*.toml"))}
    assert set(configs) == {"stage1_release", "stage2_release", "stage1_paper_vq", "stage2_paper_hubert",
                            "finetune_release"}
    assert configs["stage1_release"].model_config() == configs["stage2_release"].model_config()  # the release
    vq = configs["stage1_paper_vq"].model_config()
    assert (vq.quantizer, vq.code_dim, vq.codebook_size) == ("vq", 64, 256)
    assert configs["stage2_paper_hubert"].model_config().audio_encoder == "hubert"
