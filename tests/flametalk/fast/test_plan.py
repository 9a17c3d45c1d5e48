"""Kernel plans (flametalk/fast/plan.py): chosen from the CPU's features, forced with FLAMETALK_CPU_PLAN, probed and
fallen back from; every plan this host can run is run on the parity vector, in fast mode, and through the CLI and
the worker. Plans this host cannot run are skipped with the CPU feature they need."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures.common import PARITY_VECTOR, run_flametalk
from fixtures.parity import assert_matches
from flametalk.commands.reference import compute_outputs, load_vector, model_from_vector
from flametalk.decode.pipeline import generate_motion, prepare_for_inference
from flametalk.fast import plan as plans
from flametalk.fast.featext import TimeMajorFeatureExtractor
from flametalk.fast.int8 import FbgemmInt8Linear, Int8Linear
from flametalk.fast.packed import PackedLinear
from flametalk.fast.precision import apply_mode

HOST = plans.detect()
AVX2_ONLY = {"machine": "x86_64", "model": "test", "torch_capability": "AVX2", "avx2": True, "avx512": False,
             "avx512_vnni": False, "avx_vnni": False, "avx512_bf16": False, "amx": False, "onednn": True,
             "fbgemm": True, "native_bf16": False, "native_fp16": False}


def fake(**changes) -> plans.CpuFeatures:
    return plans.CpuFeatures(**{**AVX2_ONLY, **changes})


def runnable(name: str):
    """Skip, naming the missing CPU feature, where this host cannot run CPU plan `name`."""
    lacking = plans.missing_for(name, HOST)
    return pytest.param(name, marks=pytest.mark.skipif(lacking is not None, reason=f"plan {name} needs {lacking}"))


EVERY_PLAN = [runnable(n) for n in plans.CPU_PLANS]


@pytest.fixture(scope="module")
def vector():
    return load_vector(PARITY_VECTOR)


@pytest.fixture(autouse=True)
def _no_forced_plan(monkeypatch):
    monkeypatch.delenv(plans.PLAN_ENV, raising=False)
    monkeypatch.delenv(plans.INT8_ENV, raising=False)


# ---- choice from features (no kernel runs) ----


def test_plans_from_features():
    avx2 = fake()
    assert [n for n in plans.CPU_PLANS if plans.missing_for(n, avx2) is None] == ["avx2", "generic"]
    assert plans.missing_for("avx512", avx2) == "AVX-512" and plans.missing_for("avx2-vnni", avx2) == "AVX-VNNI"
    fast = plans.cpu_plan("avx2", "fast", avx2)
    assert (fast.pack, fast.int8, fast.dtype, fast.attention) == (True, "fbgemm", "float32", "bmm")
    exact = plans.cpu_plan("avx2", "exact", avx2)
    assert (exact.pack, exact.int8, exact.dtype, exact.attention) == (True, None, "float32", "sdpa")
    # Intel client CPUs since Alder Lake: AVX-VNNI without AVX-512 -> oneDNN int8, no bf16 (emulated there)
    alder = fake(avx_vnni=True)
    assert plans.missing_for("avx2-vnni", alder) is None and plans.missing_for("avx512", alder) == "AVX-512"
    assert plans.cpu_plan("avx2-vnni", "fast", alder).int8 == "onednn"
    assert plans.cpu_plan("avx2-vnni", "fast", alder).dtype == "float32"
    # AVX-512 servers: VNNI and bf16 where the CPU has them, else fbgemm / fp32
    sapphire = fake(avx512=True, avx512_vnni=True, avx512_bf16=True, amx=True, avx_vnni=True)
    assert plans.cpu_plan("avx512", "fast", sapphire).int8 == "onednn"
    assert plans.cpu_plan("avx512", "fast", sapphire).dtype == "bfloat16"
    skylake = fake(avx512=True)
    assert plans.cpu_plan("avx512", "fast", skylake).int8 == "fbgemm"
    assert plans.cpu_plan("avx512", "fast", skylake).dtype == "float32"
    # ARM64 (Apple Silicon, Graviton): only the generic plan; fp16/bf16 only where torch reports it native
    arm = fake(machine="arm64", avx2=False, onednn=False, fbgemm=False, torch_capability="DEFAULT")
    assert [n for n in plans.CPU_PLANS if plans.missing_for(n, arm) is None] == ["generic"]
    assert "x86-64" in plans.missing_for("avx2", arm)
    generic = plans.cpu_plan("generic", "fast", arm)
    assert (generic.pack, generic.int8, generic.dtype) == (False, None, "float32")
    assert plans.cpu_plan("generic", "fast", replace(arm, native_bf16=True)).dtype == "bfloat16"
    # GPUs: torch's kernels, fp16 in fast mode
    assert plans.gpu_plan("cuda", "fast").dtype == "float16" and plans.gpu_plan("mps", "exact").dtype == "float32"
    assert not plans.gpu_plan("cuda", "fast").pack and plans.gpu_plan("mps", "fast").int8 is None
    # query/key/value as one GEMM: on the AVX2 plans (measured there), not with oneDNN int8, not on AVX-512 or GPUs
    assert fast.fuse_qkv and exact.fuse_qkv and plans.cpu_plan("avx2-vnni", "exact", alder).fuse_qkv
    assert not plans.cpu_plan("avx2-vnni", "fast", alder).fuse_qkv
    assert not any(plans.cpu_plan("avx512", m, sapphire).fuse_qkv for m in ("exact", "fast"))
    assert not plans.cpu_plan("generic", "exact", arm).fuse_qkv and not plans.gpu_plan("cuda", "fast").fuse_qkv


def test_int8_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(plans.INT8_ENV, "0")
    assert plans.cpu_plan("avx2", "fast", fake()).int8 is None
    assert plans.cpu_plan("avx512", "fast", fake(avx512=True, avx512_vnni=True)).int8 is None


def test_a_forced_plan_the_cpu_cannot_run_is_refused_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv(plans.PLAN_ENV, "avx512")
    names, note = plans.candidate_cpu_plans(fake())
    assert names == ["avx2", "generic"] and note == "FLAMETALK_CPU_PLAN=avx512 needs AVX-512; using avx2"
    monkeypatch.setenv(plans.PLAN_ENV, "generic")
    assert plans.candidate_cpu_plans(fake()) == (["generic"], None)
    monkeypatch.setenv(plans.PLAN_ENV, "sse9")
    names, note = plans.candidate_cpu_plans(fake())
    assert names == ["avx2", "generic"] and "is not a plan" in note
    monkeypatch.setenv(plans.PLAN_ENV, "bogus-plan-for-test")
    plans.choose("cpu", "exact")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flametalk: warning: FLAMETALK_CPU_PLAN=bogus-plan-for-test")


# ---- probes and fallback ----


def test_a_kernel_that_fails_its_probe_falls_back_with_one_warning(monkeypatch, capsys):
    best = plans.choose("cpu", "fast", warn=False)
    if not best.int8:
        pytest.skip("this host's best fast plan has no int8 kernel to break")

    def broken(self, *args, **kwargs):
        raise RuntimeError("no kernel for this CPU (simulated)")

    monkeypatch.setattr(Int8Linear, "__init__", broken)
    monkeypatch.setattr(FbgemmInt8Linear, "__init__", broken)
    plans._probe_kernel.cache_clear()
    try:
        got = plans.choose("cpu", "fast")
    finally:
        plans._probe_kernel.cache_clear()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "simulated" in line]
    assert len(warnings) >= 1 and all(w.startswith("flametalk: warning: ") for w in warnings)
    assert got.int8 is None and got.name == "generic"
    assert got.fallback_from == best.name and "simulated" in got.reason


def test_a_kernel_that_computes_wrongly_fails_its_probe(monkeypatch):
    if plans.missing_for("avx2", HOST):
        pytest.skip(f"fbgemm plan needs {plans.missing_for('avx2', HOST)}")
    real = FbgemmInt8Linear.forward
    monkeypatch.setattr(FbgemmInt8Linear, "forward", lambda self, x: real(self, x) * 1.5)
    plans._probe_kernel.cache_clear()
    try:
        assert "computes wrongly" in plans._probe_kernel("fbgemm", "float32")
    finally:
        plans._probe_kernel.cache_clear()
    monkeypatch.undo()
    assert plans._probe_kernel("fbgemm", "float32") is None


def test_this_host_never_gets_emulated_bf16():
    fast = plans.choose("cpu", "fast", warn=False)
    if fast.dtype == "bfloat16":
        assert HOST.avx512_bf16 or HOST.amx or HOST.native_bf16
    assert plans.choose("cpu", "exact", warn=False).dtype == "float32"


# ---- every plan this host runs ----


@pytest.mark.parametrize("name", EVERY_PLAN)
def test_exact_mode_matches_the_release_bit_for_bit_on_every_plan(vector, name):
    model = apply_mode(model_from_vector(vector), "exact", plan=plans.cpu_plan(name, "exact"))
    out = compute_outputs(model, vector["inputs"], prepare=True)
    assert_matches(out, vector["outputs"])
    packed = any(isinstance(m, PackedLinear) for m in model.modules())
    assert packed == (name != "generic")
    assert isinstance(model.audio_encoder.feature_extractor, TimeMajorFeatureExtractor) == (name != "generic")


@pytest.mark.parametrize("name", EVERY_PLAN)
def test_fast_mode_runs_and_stays_near_exact_on_every_plan(vector, name):
    plan = plans.cpu_plan(name, "fast")
    fast = apply_mode(model_from_vector(vector), "fast", plan=plan)
    kinds = {"onednn": Int8Linear, "fbgemm": FbgemmInt8Linear}
    layers, blocks = len(fast.audio_encoder.encoder.layers), len(fast.attn_blocks)
    per_layer, per_block = (4, 5) if plan.fuse_qkv else (6, 7)  # fused: one GEMM for query, key and value
    for kind, cls in kinds.items():
        count = sum(isinstance(m, cls) for m in fast.modules())
        assert count == (per_layer * layers + per_block * blocks if plan.int8 == kind else 0), (kind, count)
    low = plan.torch_dtype()
    assert fast.logits_head.weight.dtype == low
    audio = vector["inputs"]["audio_16k"][0, :48000].numpy()
    exact_motion = generate_motion(model_from_vector(vector), audio)
    fast_motion = generate_motion(fast, audio)
    assert fast_motion.shape == exact_motion.shape == (75, 106) and np.isfinite(fast_motion).all()
    assert np.abs(fast_motion - exact_motion).mean() < 0.2  # drifts (or not, without int8), same motion
    if plan.int8:
        assert np.abs(fast_motion - exact_motion).mean() > 0  # int8 really ran


def test_gpu_fast_path_fp16_numerics_on_the_cpu(vector):
    """The CUDA/MPS fast plan (fp16) run on the CPU: a dtype mistake (an fp32 statistic cast to fp16, an fp16
    tensor meeting an fp32 one) shows up here without a GPU."""
    plan = plans.gpu_plan("cuda", "fast")
    fast = apply_mode(model_from_vector(vector), "fast", plan=plan)
    assert fast.logits_head.weight.dtype == torch.float16
    assert fast.audio_encoder.encoder.layers[0].attention.q_proj.weight.dtype == torch.float16
    assert fast.style_encoder.PE.pe.dtype == torch.float32 and fast.basic_vae.motion_std.dtype == torch.float32
    assert not any(isinstance(m, (PackedLinear, Int8Linear, FbgemmInt8Linear)) for m in fast.modules())
    prepare_for_inference(fast)
    assert not any(isinstance(m, PackedLinear) for m in fast.modules())  # the GPU plan never packs
    audio = vector["inputs"]["audio_16k"][0, :48000].numpy()
    style = vector["inputs"]["style_motion"][0].float().numpy()
    exact_motion = generate_motion(model_from_vector(vector), audio, style)
    fast_motion = generate_motion(fast, audio, style)
    assert fast_motion.dtype == np.float32 and np.isfinite(fast_motion).all()
    assert 0 < np.abs(fast_motion - exact_motion).mean() < 0.2


def test_bf16_parts_stay_bf16_with_fp32_statistics(vector):
    """A bf16 fast plan (what a CPU with native bf16 gets), run unpacked on any CPU: the same casting rules."""
    plan = replace(plans.cpu_plan("generic", "fast"), dtype="bfloat16")
    fast = apply_mode(model_from_vector(vector), "fast", plan=plan)
    assert fast.basic_vae.decoder.compute_dtype == torch.bfloat16
    assert fast.basic_vae.motion_std.dtype == torch.float32 and fast.style_encoder.PE.pe.dtype == torch.float32
    motion = generate_motion(fast, vector["inputs"]["audio_16k"][0, :32000].numpy())
    assert motion.shape == (50, 106) and np.isfinite(motion).all()


@pytest.mark.parametrize("name", EVERY_PLAN)
def test_cli_generate_and_bench_report_the_forced_plan(parity_checkpoint_dir, tmp_path, name):
    env = {plans.PLAN_ENV: name}
    wav = tmp_path / "a.wav"
    import soundfile as sf

    audio = load_vector(PARITY_VECTOR)["inputs"]["audio_16k"][0, :32000].numpy()
    sf.write(wav, audio, 16000)
    out = tmp_path / "a.npz"
    run = run_flametalk("generate", str(wav), "--checkpoint", str(parity_checkpoint_dir), "--out", str(out),
                        "--mode", "fast", "--device", "cpu", "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    assert f"fast mode, {name} plan" in run.stdout
    with np.load(out, allow_pickle=False) as z:
        prov = json.loads(str(z["provenance"]))
        assert z["motion"].shape == (50, 106)
    assert prov["settings"]["plan"]["name"] == name and prov["settings"]["mode"] == "fast"
    run = run_flametalk("bench", "--checkpoint", str(parity_checkpoint_dir), "--seconds", "2", "--threads", "1",
                        "--mode", "fast", "--json", "--warmup", "0", env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["plan"] == {**plans.cpu_plan(name, "fast").as_dict()} and result["frames"] == 50
    assert result["cpu"]["capability"] == HOST.torch_capability


def test_devices_json_shows_features_and_plans(monkeypatch):
    run = run_flametalk("devices", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["cpu"]["torch_capability"] == HOST.torch_capability
    assert report["cpu"]["avx2"] == HOST.avx2 and report["cpu"]["avx512"] == HOST.avx512
    cpu = report["devices"]["cpu"]["plans"]
    assert cpu["exact"] == plans.choose("cpu", "exact", warn=False).as_dict()
    assert cpu["fast"] == plans.choose("cpu", "fast", warn=False).as_dict()
    assert report["cpu_plans_runnable"][-1] == "generic" and "cpu_plan_forced" not in report
    run = run_flametalk("devices", "--json", env={plans.PLAN_ENV: "generic"})
    report = json.loads(run.stdout)
    assert report["devices"]["cpu"]["plans"]["fast"]["name"] == "generic"
    assert report["cpu_plan_forced"] == {"requested": "generic", "refused": None}
    text = run_flametalk("devices")
    assert text.returncode == 0 and "exact: " in text.stdout and "fast : " in text.stdout
    exact_line, fast_line = (next(line for line in text.stdout.splitlines() if line.strip().startswith(m))
                             for m in ("exact:", "fast :"))
    assert "FFT positional convolution" in fast_line and "FFT" not in exact_line
    assert ("GELU as GEMM post-op" in exact_line) is cpu["exact"]["gelu_post_op"]
    for line, mode in ((exact_line, "exact"), (fast_line, "fast")):
        assert ("query/key/value as one GEMM" in line) is cpu[mode]["fuse_qkv"]


@pytest.mark.parametrize("name", EVERY_PLAN)
def test_the_worker_runs_the_forced_plan_and_reports_it(monkeypatch, parity_checkpoint_dir, tmp_path, name):
    import sys

    import soundfile as sf
    from flametalk.io.motion import load_motion

    from blender_addon.worker.client import WorkerClient

    monkeypatch.setenv(plans.PLAN_ENV, name)  # the worker process inherits it
    wav = tmp_path / "w.wav"
    sf.write(wav, load_vector(PARITY_VECTOR)["inputs"]["audio_16k"][0, :16000].numpy(), 16000)
    client = WorkerClient(sys.executable)
    client.start()
    try:
        results = {}
        for mode in ("exact", "fast"):
            rid = client.submit("generate", audio=str(wav), out=str(tmp_path / f"{mode}.npz"), mode=mode,
                                checkpoint=str(parity_checkpoint_dir), device="cpu")
            results[mode] = client.wait(rid, timeout=300)
    finally:
        client.stop()
    for mode, result in results.items():
        assert result["plan"] == plans.cpu_plan(name, mode).as_dict()
        motion, fps, _ = load_motion(tmp_path / f"{mode}.npz")
        assert motion.shape == (25, 106) and np.isfinite(motion).all() and fps == 25
