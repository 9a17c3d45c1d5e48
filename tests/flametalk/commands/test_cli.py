"""`python -m flametalk`: bad input gives one readable line and a non-zero exit; unexpected errors are short."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from fixtures.common import one_error_line, run_flametalk
from flametalk.assets.hashing import cached_sha256, sha256_file, sidecar_path
from flametalk.commands import main as cli


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "speech.wav"
    sf.write(str(path), np.zeros(16_000, np.float32), 16_000)
    return path


def test_usage_errors_are_one_line(tmp_path):
    for args, message in [
        ((), "the following arguments are required: COMMAND"),
        (("generate",), "the following arguments are required: AUDIO"),
        (("generate", "a.wav", "--bogus"), "unrecognized arguments: --bogus"),
        (("generate", "a.wav", "--style-start", "x"), "invalid int value: 'x'"),
        (("assets",), "the following arguments are required: ACTION"),
        (("assets", "fetch"), "invalid choice: 'fetch'"),
    ]:
        proc = run_flametalk(*args, cwd=tmp_path)
        assert proc.returncode == 2, args
        line = one_error_line(proc.stderr)
        assert message in line and "--help`" in line


def test_missing_checkpoint_in_an_empty_cache_explains_how_to_get_it(tmp_path, wav):
    proc = run_flametalk("generate", str(wav), env={"FLAMETALK_CACHE": str(tmp_path / "cache")}, cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert err.startswith("flametalk: error: no checkpoint given and the asset cache has none")
    assert "python -m flametalk assets download" in err and "--checkpoint DIR" in err
    assert f"to:   {tmp_path / 'cache' / 'artalk' / 'ARTalk_wav2vec.pt'}" in err
    assert "https://huggingface.co/xg-chu/ARTalk/resolve/main/config.json" in err
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--checkpoint", "/nonexistent/ckpt"), "checkpoint '/nonexistent/ckpt' does not exist"),
        (("--style", "no_such_style", "--cache", "{tmp}/c"), "style 'no_such_style' not found"),
        (("--style", "{tmp}/missing.npy"), "does not exist; check the path or use a style name"),
        (("--style-start", "-3"), "--style-start must be >= 0, got -3"),
        (("--checkpoint", "{tmp}", "--device", "tpu"), "unknown device 'tpu'"),
        (("--out", "{tmp}/no/such/dir/x.npz"), "folder '{tmp}/no/such/dir' does not exist"),
    ],
)
def test_generate_bad_input(tmp_path, wav, extra, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    proc = run_flametalk("generate", str(wav), *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(proc.stderr)


def test_reference_run_missing_vector(tmp_path):
    proc = run_flametalk("reference-run", str(tmp_path / "v.pt"), str(tmp_path / "o.pt"))
    assert proc.returncode == 2
    assert f"parity vector '{tmp_path / 'v.pt'}' does not exist" in one_error_line(proc.stderr)


def test_unexpected_errors_are_short_unless_debug(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(cli, "_cmd_assets", boom)
    assert cli.main(["assets", "status"]) == 1
    err = capsys.readouterr().err
    assert err == "flametalk: error: unexpected RuntimeError: kaput second line (run with --debug for details)\n"
    assert cli.main(["--debug", "assets", "status"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: kaput" in err
    assert cli.main(["assets", "status", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_exits_130(monkeypatch, capsys):
    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_assets", stop)
    assert cli.main(["assets", "status"]) == 130
    assert capsys.readouterr().err == "flametalk: interrupted\n"


def test_checkpoint_hash_is_cached_in_a_sidecar(tmp_path, monkeypatch):
    f = tmp_path / "weights.pt"
    f.write_bytes(b"abc" * 1000)
    digest = cached_sha256(f)
    assert digest == sha256_file(f) and sidecar_path(f).name == "weights.pt.sha256"
    monkeypatch.setattr("flametalk.assets.hashing.sha256_file", lambda p: pytest.fail("re-hashed a cached file"))
    assert cached_sha256(f) == digest  # same size + mtime: served from the sidecar
    monkeypatch.undo()
    st = f.stat()
    f.write_bytes(b"abd" * 1000)  # same size, new content, new mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # coarse-mtime file systems
    assert cached_sha256(f) == sha256_file(f) != digest
