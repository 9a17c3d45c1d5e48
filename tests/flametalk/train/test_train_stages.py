"""Both stages on tiny synthetic data: losses fall, both quantisers and both audio encoders train, and the exports
load in load_checkpoint / generate_motion / `python -m flametalk generate`."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.training import (
    TINY_HUBERT,
    TINY_WAV2VEC,
    dataset,
    stage1_bsq,
    stage1_dict,
    stage1_vq,
    stage2_dict,
    train,
    workdir,
)
from flametalk.decode.pipeline import generate_motion
from flametalk.io.checkpoint import load_checkpoint
from flametalk.model.config import ARTalkConfig
from flametalk.model.vae import MotionAutoencoder
from flametalk.train.config import config_from_dict
from flametalk.train.data import collate
from flametalk.train.run import build
from flametalk.train.stage1 import make_train_quantizer, reconstruction_error
from flametalk.train.stage2 import read_vae_export

pytestmark = pytest.mark.filterwarnings("ignore:stage 2 runs on a randomly initialised audio encoder")


def first_last(history, key, n=5):
    vals = [h[key] for h in history]
    assert all(math.isfinite(v) for v in vals)
    return float(np.mean(vals[:n])), float(np.mean(vals[-n:]))


def trained_vae(export_dir) -> MotionAutoencoder:
    cfg, state = read_vae_export(str(export_dir))
    vae = MotionAutoencoder(cfg)
    vae.load_state_dict(state)
    return vae.eval()


def test_stage1_bsq_reconstruction_error_falls_10x():
    result = stage1_bsq()
    objective, train_set, _, _ = build(config_from_dict(stage1_dict(workdir() / "unused")))  # same seed: the
    batch = collate([train_set[(0, i)] for i in range(0, len(train_set), 2)])  # run's random-initialised VAE
    before = reconstruction_error(objective.vae, batch["prev"], batch["this"])
    after = reconstruction_error(trained_vae(result.export_dir), batch["prev"], batch["this"])
    print(f"stage-1 BSQ reconstruction L1 (data units, encode_pair -> decode_pair): {before:.5f} -> {after:.5f}")
    assert before / after >= 10
    first, last = first_last(result.history, "motion_l1")
    assert first / last >= 10  # the training loss too (normalised units)


def test_training_quantizers_pick_the_inference_codes():
    for result in (stage1_bsq(), stage1_vq()):
        vae = trained_vae(result.export_dir)
        quant = make_train_quantizer(vae, config_from_dict(stage1_dict(workdir())).quant, seed=0)
        enc = torch.randn(3, vae.cfg.window_frames, vae.cfg.code_dim)
        out = quant(enc)
        assert torch.equal(out.codes, vae.quantize(enc))
        torch.testing.assert_close(out.features, vae.frame_features(vae.quantize(enc)), atol=1e-5, rtol=0)


def test_stage1_vq_trains_with_dead_code_refresh():
    result = stage1_vq()
    first, last = first_last(result.history, "loss")
    assert last < 0.5 * first
    assert max(h["dead_codes"] for h in result.history) > 0  # refresh re-seeded unused codes
    cfg = json.loads((result.export_dir / "config.json").read_text())
    assert cfg["VAE_CONFIG"]["QUANTIZER"] == "vq" and cfg["VAE_CONFIG"]["V_CODEBOOK_SIZE"] == 32


@pytest.fixture(scope="module")
def wav2vec_weights(tmp_path_factory):
    """A local wav2vec2 weights file as a CTC model would save it (prefix + a task head to ignore)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(7)
    enc = Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC))
    state = {f"wav2vec2.{k}": v for k, v in enc.state_dict().items()}
    state["lm_head.weight"] = torch.zeros(4, 32)
    path = tmp_path_factory.mktemp("w2v") / "wav2vec2_tiny.pt"
    torch.save(state, path)
    return path, enc.state_dict()


@pytest.fixture(scope="module")
def stage2_wav2vec(wav2vec_weights):
    cfg = stage2_dict(workdir() / "s2_bsq", stage1_bsq().export_dir,
                      stage2={"audio_encoder_weights": str(wav2vec_weights[0]), "allow_random_audio_encoder": False})
    return train(cfg, resume=False)


@pytest.mark.slow
def test_stage2_bsq_wav2vec_cross_entropy_falls(stage2_wav2vec, wav2vec_weights):
    h = stage2_wav2vec.history
    first, last = h[0]["ce"], float(np.mean([x["ce"] for x in h[-10:]]))
    print(f"stage-2 BSQ/wav2vec cross-entropy per bit: {first:.4f} -> {last:.4f} (bit accuracy {h[-1]['acc']:.3f})")
    assert first > 0.6 and last < 0.6 * first
    model = load_checkpoint(stage2_wav2vec.export_dir)
    for k, v in wav2vec_weights[1].items():  # the frozen encoder is exported unchanged
        torch.testing.assert_close(model.audio_encoder.state_dict()[k], v, atol=0, rtol=0)


@pytest.mark.slow
def test_trained_checkpoint_generates_in_python_and_cli(stage2_wav2vec, tmp_path, capsys):
    export = stage2_wav2vec.export_dir
    assert sorted(p.name for p in export.iterdir()) == ["ARTalk_wav2vec.pt", "config.json"]
    assert ARTalkConfig.from_json_file(export / "config.json").embed_dim == 32
    model = load_checkpoint(export)
    audio = (0.1 * np.random.default_rng(0).standard_normal(36_800)).astype(np.float32)  # 2.3 s
    motion = generate_motion(model, audio)
    assert motion.shape == (58, 106) and np.isfinite(motion).all()
    style = np.load(dataset() / "clip_00.npz")["motion"][:50]
    assert np.isfinite(generate_motion(model, audio, style)).all()

    from flametalk.commands.main import main
    from flametalk.io.motion import load_motion

    wav = tmp_path / "speech.wav"
    sf.write(str(wav), audio, 16000)
    out = tmp_path / "speech.motion.npz"
    assert main(["generate", str(wav), "--checkpoint", str(export), "--out", str(out), "--quiet"]) == 0
    saved, fps, _ = load_motion(out)
    assert saved.shape == (58, 106) and fps == 25


@pytest.mark.slow
def test_stage2_vq_hubert_from_a_local_transformers_folder(tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(3)
    hubert = HubertModel(HubertConfig(**TINY_HUBERT))
    hubert.save_pretrained(tmp_path / "hubert_tiny")  # config.json + model.safetensors, offline
    cfg = stage2_dict(workdir() / "s2_vq_hubert", stage1_vq().export_dir, encoder="hubert", steps=15,
                      stage2={"audio_encoder_weights": str(tmp_path / "hubert_tiny"),
                              "allow_random_audio_encoder": False})
    cfg["model"]["AUDIO_ENCODER_CONFIG"] = {"hidden_size": 1}  # ignored: the folder's config.json wins
    result = train(cfg, resume=False)
    first, last = first_last(result.history, "ce", n=3)
    assert last < first
    exported = json.loads((result.export_dir / "config.json").read_text())
    assert exported["AR_CONFIG"]["AUDIO_ENCODER"] == "hubert" and exported["VAE_CONFIG"]["QUANTIZER"] == "vq"
    assert exported["AUDIO_ENCODER_CONFIG"]["hidden_size"] == 32
    model = load_checkpoint(result.export_dir)
    assert model.logits_head.out_features == 32  # one logit per codebook entry
    motion = generate_motion(model, np.zeros(20_000, np.float32))
    assert motion.shape == (32, 106) and np.isfinite(motion).all()


@pytest.mark.slow
@pytest.mark.parametrize("stage,precision", [(1, "fp16"), (2, "bf16")])
def test_mixed_precision_autocast_trains(stage, precision):
    """bf16/fp16 autocast (fp16 with a gradient scaler); quantisers and the frozen autoencoder stay fp32."""
    if stage == 1:
        cfg = stage1_dict(workdir() / f"amp_{precision}", steps=6, optim={"precision": precision})
    else:
        cfg = stage2_dict(workdir() / f"amp_{precision}", stage1_vq().export_dir, steps=4,
                          optim={"precision": precision})
    first, last = first_last(train(cfg, resume=False).history, "loss", n=2)
    assert last < first
