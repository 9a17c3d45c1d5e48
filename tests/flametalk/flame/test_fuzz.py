"""Fuzz the readers of untrusted input (issue 19): FLAME files, motion .npz files, a checkpoint's config.json, worker
request lines and WAV headers.

A seeded generator (numpy's, no extra dependency) mutates valid files: byte flips, truncation, extension, and
changes to the format's own header fields (.npy shapes and dtypes, zip directory fields, pickle integers and
string lengths, RIFF/fmt/data fields, JSON values). Each family runs in a child interpreter under
resource.setrlimit(RLIMIT_AS) and a per-case alarm, so a memory blow-up or a hang fails the test instead of the
machine. Every case must end in success or the reader's one-line error (FlameTalkError, FlameFileError,
MotionFileError, the worker's BadRequest); any other exception is reported with the mutation and a copy of the
input. Pickle seeds that would run `touch MARKER` through os.system are mutated too: the marker must never appear.

FLAMETALK_FUZZ_SEED picks another seed, FLAMETALK_FUZZ_SCALE multiplies the case counts (e.g. 10 for a long run).
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickletools
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.common import REPO as ROOT
from fixtures.common import SHARED

SEED = int(os.environ.get("FLAMETALK_FUZZ_SEED", "19"))
SCALE = float(os.environ.get("FLAMETALK_FUZZ_SCALE", "1"))
MEMORY_LIMIT = 2 << 30  # bytes of address space per child
CASE_SECONDS = 20  # alarm per case (a config that builds a model on the meta device takes ~0.2 s)
# cases per family: sized so the whole file runs in about a minute on a 2-core machine
COUNTS = {"harness": 6, "flame": 1500, "motion": 3000, "config": 180, "request": 6000, "wav": 3000}

INTERESTING = [0, -1, 1, 2, 3, 7, 106, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1,
               2**63 - 1, 2**64, 10**9, 10**12, 10**30, -(2**31), 0.5, -0.0, 1e-300, 1e308, -1e308,
               float("nan"), float("inf"), float("-inf"), "", "x", "exact", "generate", "wav2vec", "x" * 5000,
               "a\u0000b", "\udcff", [], [1], [[[[[[[[[[[]]]]]]]]]]], {}, {"a": 1}, None, True, False]


# -- mutations -----------------------------------------------------------------------------------------------------


def _flip(rng: np.random.Generator, data: bytes, span: int | None = None) -> tuple[bytes, str]:
    out = bytearray(data)
    top = min(len(out), span or len(out))
    if not top:
        return bytes(out) + b"\0", "flip: empty, appended NUL"
    spots = sorted({int(rng.integers(0, top)) for _ in range(int(rng.integers(1, 9)))})
    for spot in spots:
        out[spot] ^= int(rng.integers(1, 256))
    return bytes(out), f"flip bytes {spots}"


def _truncate(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    cut = int(rng.integers(0, max(len(data), 1)))
    return data[:cut], f"truncate to {cut} of {len(data)} bytes"


def _extend(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    kind = int(rng.integers(0, 3))
    n = int(rng.choice([1, 7, 64, 4096, 70_000]))
    if kind == 0:
        return data + rng.integers(0, 256, n, dtype=np.uint8).tobytes(), f"append {n} random bytes"
    if kind == 1:
        return data + data[: n], f"append the first {min(n, len(data))} bytes again"
    at = int(rng.integers(0, len(data) + 1))
    return data[:at] + b"\0" * n + data[at:], f"insert {n} NUL bytes at {at}"


def _bytes_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    pick = int(rng.integers(0, 3))
    return (_flip, _truncate, _extend)[pick](rng, data)


def _interesting_int(rng: np.random.Generator, bits: int, signed: bool = False) -> int:
    top = 1 << bits
    values = [0, 1, 2, top - 1, top // 2, top // 2 - 1, int(rng.integers(0, min(top, 2**62)))]
    value = values[int(rng.integers(0, len(values)))]
    return value - top if signed and value >= top // 2 else value


def _pack(rng: np.random.Generator, data: bytes, at: int, fmt: str) -> tuple[bytes, str]:
    size = struct.calcsize(fmt)
    signed = fmt[-1].islower()
    value = _interesting_int(rng, 8 * size, signed)
    return data[:at] + struct.pack(fmt, value) + data[at + size:], f"set {size}-byte field at {at} to {value}"


def _random_json_value(rng: np.random.Generator) -> Any:
    return copy.deepcopy(INTERESTING[int(rng.integers(0, len(INTERESTING)))])


def _json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths += _json_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            paths += _json_paths(value, (*prefix, i))
    return paths


def _json_mutation(rng: np.random.Generator, seed: Any) -> tuple[bytes, str]:
    """Change, delete or add a value somewhere in a JSON document; or mutate its text."""
    doc = copy.deepcopy(seed)
    if rng.random() < 0.25:
        return _bytes_mutation(rng, json.dumps(doc).encode())
    hows = []
    for _ in range(int(rng.integers(1, 4))):
        paths = [p for p in _json_paths(doc) if p]
        if not paths:
            doc = _random_json_value(rng)
            hows.append(f"document := {doc!r}"[:80])
            break
        path = paths[int(rng.integers(0, len(paths)))]
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = int(rng.integers(0, 4))
        if action == 0 and isinstance(parent, dict):
            del parent[path[-1]]
            hows.append(f"delete {'.'.join(map(str, path))}")
        elif action == 1 and isinstance(parent, dict):
            value = _random_json_value(rng)
            parent[f"extra{int(rng.integers(0, 99))}"] = value
            hows.append(f"add a key beside {'.'.join(map(str, path))} = {value!r}"[:80])
        else:
            value = _random_json_value(rng)
            parent[path[-1]] = value
            hows.append(f"{'.'.join(map(str, path))} := {value!r}"[:80])
    return json.dumps(doc).encode(), "; ".join(hows)


def _npy_header_mutation(rng: np.random.Generator, member: bytes) -> tuple[bytes, str]:
    """A valid-looking .npy whose header declares another shape, dtype or order (data unchanged)."""
    end = member.index(b"\n") + 1
    header = {"descr": "<f4", "fortran_order": False, "shape": (20, 106)}
    try:
        import ast

        header = ast.literal_eval(member[10:end].decode("latin1"))
    except (ValueError, SyntaxError):
        pass
    kind = int(rng.integers(0, 4))
    if kind == 0:
        ndim = int(rng.integers(0, 4))
        header["shape"] = tuple(abs(int(rng.choice([0, 1, 2, 20, 106, 100, 300, 5023, 10**6, 10**9, 2**40, 2**62])))
                                for _ in range(ndim))
        how = f"shape := {header['shape']}"
    elif kind == 1:
        header["descr"] = str(rng.choice(["<f8", ">f4", "<f2", "<f16", "<i4", "|u1", "|b1", "<c8", "|O", "<U9",
                                          "|S4", "|V8", "<M8[s]", "|V1000000000", "<f4x"]))
        how = f"descr := {header['descr']}"
    elif kind == 2:
        header["fortran_order"] = not header.get("fortran_order", False)
        how = "fortran_order flipped"
    else:
        body = bytearray(member)
        at = int(rng.integers(0, 10))
        body[at] ^= int(rng.integers(1, 256))
        return bytes(body), f"npy magic/version/length byte {at} flipped"
    text = repr(header).encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + member[end:], how


def _zip_members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _rebuild_zip(members: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, body in members:
            zf.writestr(info.filename, body)
    return buf.getvalue()


def _zip_field_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """Change a field of the end record, a central-directory entry or a local header."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        at = data.rfind(b"PK\x05\x06")
        field_at, fmt = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H")][int(rng.integers(0, 5))]
        data, how = _pack(rng, data, at + field_at, fmt)
        return data, f"end record: {how}"
    signature = b"PK\x01\x02" if kind == 1 else b"PK\x03\x04"
    spots = [m.start() for m in re.finditer(re.escape(signature), data)]
    at = spots[int(rng.integers(0, len(spots)))]
    fields = ([(8, "<H"), (10, "<H"), (20, "<I"), (24, "<I"), (28, "<H"), (30, "<H"), (42, "<I")] if kind == 1
              else [(6, "<H"), (8, "<H"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H")])
    field_at, fmt = fields[int(rng.integers(0, len(fields)))]
    data, how = _pack(rng, data, at + field_at, fmt)
    return data, f"{'central directory' if kind == 1 else 'local header'} at {at}: {how}"


def _zip_mutation(rng: np.random.Generator, data: bytes, pickle_member: str | None = None) -> tuple[bytes, str]:
    kind = int(rng.integers(0, 6))
    if kind <= 2:
        return _bytes_mutation(rng, data)
    if kind == 3:
        return _zip_field_mutation(rng, data)
    members = _zip_members(data)
    i = int(rng.integers(0, len(members)))
    info, body = members[i]
    if info.filename.endswith(".npy"):
        body, how = _npy_header_mutation(rng, body) if kind == 4 else _bytes_mutation(rng, body)
    elif pickle_member and info.filename.endswith(pickle_member):
        body, how = _pickle_mutation(rng, body) if kind == 4 else _bytes_mutation(rng, body)
    else:
        body, how = _bytes_mutation(rng, body)
    members[i] = (info, body)
    return _rebuild_zip(members), f"member {info.filename} (CRC kept valid): {how}"


def _pickle_mutation(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """Change an integer argument or a length prefix inside a pickle (sizes, shapes, strides, offsets)."""
    if rng.random() < 0.4:
        return _bytes_mutation(rng, data)
    widths = {"BININT1": "<B", "BININT2": "<H", "BININT": "<i", "SHORT_BINSTRING": "<B", "BINSTRING": "<i",
              "SHORT_BINUNICODE": "<B", "BINUNICODE": "<I", "SHORT_BINBYTES": "<B", "BINBYTES": "<I", "LONG1": "<B",
              "BINBYTES8": "<Q", "BINUNICODE8": "<Q", "FRAME": "<Q", "BINGET": "<B", "LONG_BINGET": "<I",
              "BINPUT": "<B", "LONG_BINPUT": "<I", "PROTO": "<B"}
    spots = [(op.name, pos) for op, _arg, pos in pickletools.genops(data) if op.name in widths]
    name, pos = spots[int(rng.integers(0, len(spots)))]
    data, how = _pack(rng, data, pos + 1, widths[name])
    return data, f"pickle {name} at {pos}: {how}"


# -- seeds and readers, per family (these run in the child) --------------------------------------------------------


def _one_line_errors() -> tuple[type, ...]:
    from flametalk.commands.protocol import BadRequest
    from flametalk.errors import FlameTalkError
    from flametalk.flame import FlameFileError
    from flametalk.flame.motionfile import MotionFileError

    return FlameTalkError, FlameFileError, MotionFileError, BadRequest


def _flame_family(folder: Path, marker: Path) -> tuple[list, Any]:
    from fixtures import hostile_files
    from flametalk.flame import load_flame
    from flametalk.testing import synthetic_flame as synthetic

    arrays = synthetic.make_arrays(n_verts=120, n_faces=200, n_expr=10, seed=4)
    seeds = []
    for name, writer in (("a.pkl", synthetic.write_pkl_2020), ("b.pkl", synthetic.write_pkl_2023),
                         ("c.npz", synthetic.write_npz)):
        seeds.append((name, Path(writer(str(folder / name), arrays)).read_bytes(), "data.pkl"))
    for module in ("posix", "os"):
        path = hostile_files.write_malicious_pkl(str(folder / f"evil_{module}.pkl"), str(marker), module)
        seeds.append((f"evil_{module}.pkl", Path(path).read_bytes(), "data.pkl"))
    pt = folder / "seed_FLAME_with_eye.pt"  # written by the parent, which has torch
    if pt.is_file():
        seeds.append(("d.pt", pt.read_bytes(), "data.pkl"))

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        name, data, member = seeds[int(rng.integers(0, len(seeds)))]
        if data[:2] == b"PK":
            body, how = _zip_mutation(rng, data, member)
        else:
            body, how = _pickle_mutation(rng, data)
        return name, body, how

    return mutate, lambda path: load_flame(str(path), use_torch=False)


def _motion_family(folder: Path, marker: Path) -> tuple[list, Any]:
    from flametalk.errors import FlameTalkError
    from flametalk.flame.motionfile import MotionFileError, read_motion
    from flametalk.io import motion as motion_io
    from flametalk.testing import synthetic_flame as synthetic

    motion = synthetic.random_motion(12, seed=2)
    seeds = []
    for name, arrays in (("a.npz", {"motion": motion, "fps": np.float64(25), "provenance": np.asarray('{"a": 1}')}),
                         ("b.npz", {"motion": motion.astype(">f8"), "fps": np.int64(30)}),
                         ("c.npz", {"motion": np.asfortranarray(motion), "fps": np.float32(25)})):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        seeds.append((name, buf.getvalue()))
    buf = io.BytesIO()
    np.savez_compressed(buf, motion=motion, fps=25.0)
    seeds.append(("d.npz", buf.getvalue()))

    class Evil:  # an object member: unpickling it would run `touch marker`
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    buf = io.BytesIO()
    np.savez(buf, motion=motion, fps=25.0, provenance=np.array([Evil()], dtype=object))
    seeds.append(("evil.npz", buf.getvalue()))
    buf = io.BytesIO()
    np.savez(buf, motion=np.array([Evil()] * 106, dtype=object).reshape(1, 106), fps=25.0)
    seeds.append(("evil_motion.npz", buf.getvalue()))

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        name, data = seeds[int(rng.integers(0, len(seeds)))]
        body, how = _zip_mutation(rng, data, pickle_member=None)
        return name, body, how

    def read(path: Path) -> None:
        """flametalk's loader and the Blender add-on's reader must agree on every file."""
        outcomes = []
        for reader, one_line in ((motion_io.load_motion, FlameTalkError), (read_motion, MotionFileError)):
            try:
                reader(path)
                outcomes.append("ok")
            except one_line as err:
                outcomes.append(str(err))
        if outcomes[0] != outcomes[1]:
            raise AssertionError(f"flametalk and the add-on disagree: {outcomes}")
        if outcomes[0] != "ok":
            raise MotionFileError(outcomes[0])

    return mutate, read


def _config_family(folder: Path, marker: Path) -> tuple[list, Any]:
    from flametalk.io.checkpoint import build_model
    from flametalk.model.config import ARTalkConfig

    release = SHARED / "reference" / "artalk_release" / "assets" / "config.json"
    cfg = ARTalkConfig.from_json_file(release) if release.is_file() else ARTalkConfig()
    seed = cfg.to_release_dict()  # with AUDIO_ENCODER_CONFIG spelled out
    build_model(ARTalkConfig.from_release_dict(seed), "meta")  # warm: transformers' import is not a case

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        body, how = _json_mutation(rng, seed)
        return "config.json", body, how

    def read(path: Path) -> None:
        cfg = ARTalkConfig.from_json_file(path)
        build_model(cfg, "meta")  # the checks a real load runs before any weight is read

    return mutate, read


REQUEST_SEEDS = [
    {"id": 1, "cmd": "generate", "audio": "a.wav", "out": "x.npz", "style": {"motion_npy": "s.npy"}, "style_start": 3,
     "postprocess": False, "device": "cpu", "mode": "fast", "checkpoint": "ckpt"},
    {"id": "two", "cmd": "load", "checkpoint": "ckpt", "device": None, "mode": "exact"},
    {"id": 3, "cmd": "cancel", "target": "two"},
    {"id": 4, "cmd": "spare_cores", "cores": 1},
    {"id": 5, "cmd": "ping"},
    {"id": None, "cmd": "generate", "audio": "b.flac", "out": "y.npz", "style": "natural_0"},
]


def _request_family(folder: Path, marker: Path) -> tuple[list, Any]:
    from flametalk.commands.protocol import parse_request

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        seed = REQUEST_SEEDS[int(rng.integers(0, len(REQUEST_SEEDS)))]
        body, how = _json_mutation(rng, seed)
        return "line.jsonl", body.replace(b"\n", b" "), how

    return mutate, lambda path: parse_request(path.read_bytes())


def _wav_family(folder: Path, marker: Path) -> tuple[list, Any]:
    import soundfile as sf
    from flametalk.io.audio import load_audio

    rng = np.random.default_rng(5)
    seeds = []
    for name, channels, rate, subtype in (("a.wav", 1, 16000, "PCM_16"), ("b.wav", 2, 44100, "PCM_24"),
                                          ("c.wav", 1, 8000, "FLOAT"), ("d.wav", 3, 22050, "PCM_U8")):
        buf = io.BytesIO()
        sf.write(buf, rng.uniform(-0.5, 0.5, (int(rate * 0.2), channels)), rate, subtype=subtype, format="WAV")
        seeds.append((name, buf.getvalue()))
    # RIFF size, fmt size, format tag, channels, rate, byte rate, block align, bits, data size (canonical layout)
    fields = [(4, "<I"), (16, "<I"), (20, "<H"), (22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"),
              (40, "<I")]

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        name, data = seeds[int(rng.integers(0, len(seeds)))]
        kind = int(rng.integers(0, 5))
        if kind <= 1:
            body, how = data, []
            for _ in range(int(rng.integers(1, 3))):
                at, fmt = fields[int(rng.integers(0, len(fields)))]
                if at == 40:
                    at = data.find(b"data") + 4
                elif at > 4:
                    at += data.find(b"fmt ") - 12
                body, one = _pack(rng, body, at, fmt)
                how.append(one)
            return name, body, "header " + "; ".join(how)
        if kind == 2:
            body, how = _flip(rng, data, span=64)
            return name, body, f"header {how}"
        body, how = _bytes_mutation(rng, data)
        return name, body, how

    return mutate, load_audio


def _harness_family(folder: Path, marker: Path) -> tuple[list, Any]:
    """Not a reader: checks that the harness itself sees every way a case can go wrong."""
    from flametalk.errors import FlameTalkError

    kinds = [b"ok", b"error", b"crash", b"alloc", b"warn", b"code"]

    def mutate(rng: np.random.Generator) -> tuple[str, bytes, str]:
        kind = kinds[mutate.i % len(kinds)]  # type: ignore[attr-defined]
        mutate.i += 1  # type: ignore[attr-defined]
        return "case.bin", kind, kind.decode()

    mutate.i = 0  # type: ignore[attr-defined]

    def read(path: Path) -> None:
        import warnings

        kind = path.read_bytes()
        if kind == b"error":
            raise FlameTalkError("one line")
        if kind == b"crash":
            raise KeyError("escaped")
        if kind == b"alloc":
            np.ones(4 << 30)  # 32 GiB: over the address-space limit
        if kind == b"warn":
            warnings.warn("a second line on stderr", RuntimeWarning, stacklevel=1)
        if kind == b"code":
            os.system(f"touch {marker}")

    return mutate, read


FAMILIES = {"flame": _flame_family, "motion": _motion_family, "config": _config_family,
            "request": _request_family, "wav": _wav_family, "harness": _harness_family}


# -- the child -----------------------------------------------------------------------------------------------------


def _child(family: str, seed: int, count: int, folder: Path, marker: Path) -> int:
    import resource
    import signal
    import traceback
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if family == "flame":
        sys.modules["torch"] = None  # as inside Blender: the torch-free reader
    mutate, read = FAMILIES[family](folder, marker)
    allowed = _one_line_errors()

    def too_slow(*_args: Any) -> None:
        raise TimeoutError(f"a case ran longer than {CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, too_slow)
    noise: list[str] = []  # what would reach stderr beside the one line: exceptions C code could not raise, warnings
    sys.unraisablehook = lambda hook: noise.append(f"{type(hook.exc_value).__name__}: {hook.exc_value}")
    warnings.showwarning = lambda message, category, *_args, **_kw: noise.append(f"{category.__name__}: {message}")
    rng = np.random.default_rng([seed, sorted(FAMILIES).index(family)])
    for i in range(count):
        name, body, how = mutate(rng)
        path = folder / f"case_{name}"
        path.write_bytes(body)
        print(json.dumps({"start": i, "how": how}), flush=True)
        signal.alarm(CASE_SECONDS)
        try:
            read(path)
            result, message = "ok", ""
        except allowed as err:
            result, message = "error", str(err)
        except BaseException as err:  # what the fuzzer is looking for
            result = "crash"
            message = "".join(traceback.format_exception_only(type(err), err)).strip()[-600:]
            (folder / f"crash_{i}_{name}").write_bytes(body)
        finally:
            signal.alarm(0)
        print(json.dumps({"case": i, "how": how, "result": result, "message": message,
                          "noise": noise[:3]}), flush=True)
        noise.clear()
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"done": count, "peak_mb": int(hwm.split()[1]) / 1024}), flush=True)
    return 0


# -- the tests -----------------------------------------------------------------------------------------------------


def _run_family(family: str, tmp_path: Path) -> tuple[list[dict], dict]:
    marker = tmp_path / "MARKER_code_ran"
    count = max(1, int(COUNTS[family] * SCALE))
    if family == "flame":
        try:
            from flametalk.testing import synthetic_flame as synthetic

            arrays = synthetic.make_arrays(n_verts=120, n_faces=200, n_expr=10, seed=4)
            synthetic.write_pt(str(tmp_path / "seed_FLAME_with_eye.pt"), arrays)
        except ImportError:
            pass
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "inference"), str(ROOT), str(ROOT / "tests")])}
    try:
        run = subprocess.run([sys.executable, __file__, family, str(SEED), str(count), str(tmp_path), str(marker)],
                             capture_output=True, text=True, timeout=120 + count // 5, env=env)
        stdout, stderr, code = run.stdout, run.stderr, run.returncode
    except subprocess.TimeoutExpired as err:
        stdout, stderr, code = _text(err.stdout), _text(err.stderr), "timeout"
    (tmp_path / f"{family}.out").write_text(stdout)
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    cases = [line for line in lines if "case" in line]
    done = next((line for line in lines if "done" in line), None)
    started = [line for line in lines if "start" in line]
    assert done is not None and code == 0, (
        f"{family}: the child died (exit {code}) in case {started[-1] if started else None}; "
        f"stderr: {stderr[-2000:]}"
    )
    assert not marker.exists(), f"{family}: a mutated file ran code (the marker file was created)"
    return cases, done


def _check(family: str, cases: list[dict], done: dict, tmp_path: Path) -> None:
    crashes = [c for c in cases if c["result"] == "crash"]
    assert not crashes, f"{family}: {len(crashes)} of {len(cases)} cases escaped the one-line error " + json.dumps(
        crashes[:5], indent=1) + f" (inputs kept as {tmp_path}/crash_*)"
    noisy = [c for c in cases if c["noise"]]
    assert not noisy, f"{family}: warnings or exceptions printed to stderr: " + json.dumps(noisy[:5], indent=1)
    errors = [c["message"] for c in cases if c["result"] == "error"]
    for message in errors:
        assert message and "\n" not in message and len(message) < 1000, message
        assert "memory" not in message.lower(), f"{family}: a mutation exhausted memory: {message}"
        assert "Traceback" not in message
    ok = sum(c["result"] == "ok" for c in cases)
    assert len(cases) == done["done"] and ok + len(errors) == len(cases)
    assert errors, f"{family}: no mutation was refused: the fuzzer mutates nothing"
    assert done["peak_mb"] < MEMORY_LIMIT / 2**20


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def test_fuzz_flame_files(tmp_path: Path) -> None:
    cases, done = _run_family("flame", tmp_path)
    _check("flame", cases, done, tmp_path)
    assert any(c["result"] == "ok" for c in cases)  # some mutations (e.g. appended bytes) leave a readable file


def test_fuzz_motion_files(tmp_path: Path) -> None:
    cases, done = _run_family("motion", tmp_path)
    _check("motion", cases, done, tmp_path)
    assert any(c["result"] == "ok" for c in cases)
    assert any("pickled objects" in c["message"] for c in cases)  # the evil seeds were refused, not run


def test_fuzz_config_json(tmp_path: Path) -> None:
    cases, done = _run_family("config", tmp_path)
    _check("config", cases, done, tmp_path)
    assert any(c["result"] == "ok" for c in cases)


def test_config_missing_heads_checked_with_transformers_default(tmp_path: Path) -> None:
    """A fuzz find: without AUDIO_ENCODER_CONFIG.num_attention_heads transformers' default (12) does not divide
    hidden_size 1024; the model's constructor raised ValueError instead of the one-line config error."""
    pytest.importorskip("transformers")
    from flametalk.errors import FlameTalkError
    from flametalk.io.checkpoint import build_model
    from flametalk.model.config import ARTalkConfig

    cfg = ARTalkConfig().to_release_dict()
    del cfg["AUDIO_ENCODER_CONFIG"]["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FlameTalkError) as err:
        build_model(ARTalkConfig.from_json_file(tmp_path / "config.json"), "meta")
    assert "AUDIO_ENCODER_CONFIG is not a valid wav2vec config (hidden_size 1024 is not divisible by " \
           "num_attention_heads 12)" in str(err.value)


def test_fuzz_worker_request_lines(tmp_path: Path) -> None:
    cases, done = _run_family("request", tmp_path)
    _check("request", cases, done, tmp_path)
    assert sum(c["result"] == "ok" for c in cases) > len(cases) // 10


def test_fuzz_worker_reader_keeps_serving() -> None:
    """The same mutated lines through the worker's request reader in one stream: every line is answered or queued,
    none is an internal error (an exception other than BadRequest), and a ping after all of them is answered."""
    from flametalk.commands.worker import Worker

    rng = np.random.default_rng([SEED, 99])
    lines = []
    for _ in range(max(1, int(2000 * SCALE))):
        seed = REQUEST_SEEDS[int(rng.integers(0, len(REQUEST_SEEDS)))]
        lines.append(_json_mutation(rng, seed)[0].replace(b"\n", b" ").replace(b"\r", b" "))
    out = io.StringIO()
    worker = Worker(out)
    worker.read_requests(io.BytesIO(b"\n".join(lines) + b'\n{"id":"last","cmd":"ping"}\n'))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    internal = [e for e in events if e.get("kind") == "internal"]
    assert not internal, internal[:5]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) > len(lines) // 2 and all("\n" not in e["message"] for e in errors)
    assert events[-1] == {"event": "pong", "id": "last", "loaded": None}
    assert worker.stdin_closed.is_set()


def test_fuzz_wav_headers(tmp_path: Path) -> None:
    cases, done = _run_family("wav", tmp_path)
    _check("wav", cases, done, tmp_path)
    assert any(c["result"] == "ok" for c in cases)


@pytest.mark.parametrize("case", ["tokenize", "compression", "complex"])
def test_flame_reader_fuzz_finds_are_one_line(case: str, tmp_path: Path) -> None:
    """Fuzz finds in the FLAME reader, each once an escaped exception: numpy's fallback .npy header parser raising
    tokenize.TokenError, zipfile's NotImplementedError for an unknown compression method, and a complex array
    (a ComplexWarning on stderr, then the imaginary part dropped)."""
    import warnings

    from flametalk.flame import FlameFileError, load_flame
    from flametalk.testing import synthetic_flame as synthetic

    arrays = synthetic.make_arrays(n_verts=120, n_faces=200, n_expr=10, seed=4)
    if case == "complex":
        arrays = {**arrays, "v_template": arrays["v_template"].astype(np.complex128)}
    if case == "compression":  # a tensor's storage in a FLAME_with_eye.pt, read lazily after the checks
        pytest.importorskip("torch")
        data = Path(synthetic.write_pt(str(tmp_path / "flame.pt"), arrays)).read_bytes()
    else:
        data = Path(synthetic.write_npz(str(tmp_path / "flame.npz"), arrays)).read_bytes()
    if case == "tokenize":
        members = _zip_members(data)
        header = b"{'descr': '<f8', 'fortran_order': False, 'shape': ((5, 120), }"
        header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
        members = [(info, b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
                    if info.filename == "J_regressor.npy" else body) for info, body in members]
        data = _rebuild_zip(members)
    elif case == "compression":
        entries = [m.start() for m in re.finditer(b"PK\x01\x02", data)]
        at = next(e for e in entries if b"/data/" in data[e + 46:e + 46 + struct.unpack("<H", data[e + 28:e + 30])[0]])
        data = data[:at + 10] + struct.pack("<H", 99) + data[at + 12:]  # that storage's compression method
    (tmp_path / "bad.npz").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        with pytest.raises(FlameFileError) as err:
            load_flame(str(tmp_path / "bad.npz"), use_torch=False)
    expected = {"tokenize": "unreadable .npy header", "compression": "compression method is not supported",
                "complex": "'v_template' has dtype complex128, not numbers"}[case]
    assert expected in str(err.value) and "\n" not in str(err.value)


_LIMITED_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
sys.modules["torch"] = None
from flametalk.flame import FlameFileError, load_flame
try:
    load_flame(sys.argv[1], use_torch=False)
except FlameFileError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize(("case", "expected"), [
    ("memo", "memo index 2147483647 at opcode 2 is out of range"),
    ("bytes_claim", "expected 2147483648 bytes in a bytes4, but only 11 remain"),
    ("void_dtype", "'posedirs' has dtype |V1000000000, not numbers"),
])  # fmt: skip
def test_flame_reader_memory_fuzz_finds(case: str, expected: str, tmp_path: Path) -> None:
    """Fuzz finds: tiny FLAME files that made the reader allocate gigabytes (under a 1-GiB limit: MemoryError). A
    pickle PUT index makes the C unpickler grow and zero-fill its memo to that size; a counted bytes opcode makes it
    allocate the claimed length before reading; an .npz member of a 1-GB void dtype."""
    path = tmp_path / "flame.bin"
    if case == "memo":
        path.write_bytes(b"\x80\x02}r\xff\xff\xff\x7f.")  # {} memoized at index 2**31 - 1
    elif case == "bytes_claim":
        path.write_bytes(b"\x80\x03B\x00\x00\x00\x80" + b"x" * 10 + b".")  # 2 GiB claimed, 10 bytes there
    else:
        from flametalk.testing import synthetic_flame as synthetic

        arrays = synthetic.make_arrays(n_verts=120, n_faces=200, n_expr=10, seed=4)
        members = _zip_members(Path(synthetic.write_npz(str(tmp_path / "flame.npz"), arrays)).read_bytes())
        members = [(info, _npy_header_with(body, descr="|V1000000000") if info.filename == "posedirs.npy" else body)
                   for info, body in members]
        path.write_bytes(_rebuild_zip(members))
    run = subprocess.run([sys.executable, "-c", _LIMITED_READ, str(path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "inference")})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert expected in lines[0] and "memory" not in lines[0], lines[0]


def _npy_header_with(member: bytes, **changes: Any) -> bytes:
    import ast

    end = member.index(b"\n") + 1
    header = {**ast.literal_eval(member[10:end].decode("latin1")), **changes}
    text = repr(header).encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + member[end:]


def test_flame_dtype_with_refcount_flag_is_refused_quietly(tmp_path: Path) -> None:
    """A fuzz find: one flags byte in the dtype states of a FLAME 2020 pickle (0 -> 1, NPY_ITEM_REFCOUNT)."""
    from flametalk.testing import synthetic_flame as synthetic

    arrays = synthetic.make_arrays(n_verts=120, n_faces=200, n_expr=10, seed=4)
    data = Path(synthetic.write_pkl_2020(str(tmp_path / "generic_model.pkl"), arrays)).read_bytes()
    state_end = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # ..., -1, -1, flags 0) of a dtype's BUILD
    assert data.count(state_end) >= 5
    (tmp_path / "flags.pkl").write_bytes(data.replace(state_end, state_end.replace(b"K\x00", b"K\x01")))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from flametalk.flame import FlameFileError, load_flame\n"
            "try:\n    load_flame(sys.argv[1], use_torch=False)\n"
            "except FlameFileError as err:\n    print(err, file=sys.stderr); sys.exit(2)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "flags.pkl")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "inference")})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "altered flags" in lines[0], lines[0]


def test_the_harness_sees_escapes_memory_blowups_stderr_noise_and_code(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="a mutated file ran code"):
        _run_family("harness", tmp_path)
    (tmp_path / "MARKER_code_ran").unlink()
    lines = [json.loads(line) for line in (tmp_path / "harness.out").read_text().splitlines()]
    cases = {c["how"]: c for c in lines if "case" in c}
    assert {how: c["result"] for how, c in cases.items()} == {
        "ok": "ok", "error": "error", "crash": "crash", "alloc": "crash", "warn": "ok", "code": "ok"}
    assert cases["crash"]["message"] == "KeyError: 'escaped'"
    assert "_ArrayMemoryError: Unable to allocate 32.0 GiB" in cases["alloc"]["message"]
    assert cases["warn"]["noise"] == ["RuntimeWarning: a second line on stderr"]
    with pytest.raises(AssertionError, match="2 of 6 cases escaped the one-line error"):
        _check("harness", list(cases.values()), {"done": 6, "peak_mb": 1.0}, tmp_path)


def test_mutations_are_deterministic_and_change_the_input() -> None:
    rng_a, rng_b = np.random.default_rng([SEED, 0]), np.random.default_rng([SEED, 0])
    data = json.dumps(REQUEST_SEEDS[0]).encode()
    first = [_json_mutation(rng_a, REQUEST_SEEDS[0]) for _ in range(50)]
    assert first == [_json_mutation(rng_b, REQUEST_SEEDS[0]) for _ in range(50)]
    assert sum(body != data for body, _ in first) >= 45
    body, how = _truncate(np.random.default_rng(1), data)
    assert len(body) < len(data) and how.startswith("truncate to ")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])))
