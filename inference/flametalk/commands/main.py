"""`python -m flametalk` (also the `flametalk` console script).

  generate AUDIO [--checkpoint PATH] [--style S] [--style-start FRAME] [--device D] [--out FILE] [--no-postprocess]
      Speech -> motion .npz (motion (T, 106) float32 at 25 fps + provenance). Default --out: `<audio stem>.motion.npz`
      in the current folder (the audio's folder may be read-only or shared). Default checkpoint: the asset cache.
  serve [--host 127.0.0.1] [--port 8765] [--checkpoint PATH] [--mode M] [--speed X]
      A WebSocket server: PCM in, motion frames out as each 4-s window is final (commands/serve.py).
  live [--device N | --wav FILE] [--out take.npz] [--mode M]
      Microphone (sounddevice) -> motion frames as they are final, with their latency (commands/live.py).
  devices [--json]
      What this machine has (CPU features, GPUs) and the kernel plan each mode uses (fast/plan.py).
  reference-run VECTOR.pt OUT.pt
      Run the model of a parity vector on its inputs and save the outputs.
  assets download [--accept-flame-license] | status | verify   [--cache DIR]
      Fetch / list / re-hash the release files in the per-user cache.
  train CONFIG [--set KEY=VALUE] [--no-resume] [--stop-at STEP]     (torchrun --nproc_per_node N -m flametalk train)
  evaluate --checkpoint C --data DIR --flame F --masks FLAME_masks.pkl [--split test] [--json FILE]
  dataset validate DIR
      Training (stage 1 autoencoder / stage 2 generator), LVE/FDD/MOD evaluation, dataset checks: flametalk.train.

Errors caused by input or set-up print one line `flametalk: error: <what is wrong; what to do>` to stderr and exit
with the error's code (2 bad input, 3 model hub unreachable); anything unexpected prints a short line and exits 1
(the traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from .._version import __version__
from ..errors import FlameTalkError

PROG = "flametalk"
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
OUT_SUFFIX = ".motion.npz"  # default output name: <audio stem>.motion.npz in the current folder

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        print(f"{PROG}: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---- generate ----


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..assets.store import resolve_checkpoint_dir
    from ..decode.postprocess import postprocess_motion
    from ..fast.devices import configure_torch_for_parity, resolve_device
    from ..flame.contract import MOTION_FPS, SAMPLE_RATE
    from ..io.audio import load_audio
    from ..io.motion import save_motion
    from ..io.style import load_style

    audio_path = Path(args.audio).expanduser()
    out = Path(args.out).expanduser() if args.out else Path.cwd() / (audio_path.stem + OUT_SUFFIX)
    if not out.parent.is_dir():
        raise FlameTalkError(f"cannot write '{out}': folder '{out.parent}' does not exist; create it or change --out")
    if args.style_start < 0:
        raise FlameTalkError(f"--style-start must be >= 0, got {args.style_start}")
    # Cheap checks first, so bad input fails before the (slow) model load.
    audio = load_audio(audio_path)
    style_dir = None
    if args.cache:
        from ..assets.store import style_dir as cache_style_dir

        style_dir = cache_style_dir(args.cache)
    style, style_name = load_style(args.style, args.style_start, style_dir=style_dir)
    ckpt = resolve_checkpoint_dir(args.checkpoint, args.cache)
    device = resolve_device(args.device)
    configure_torch_for_parity()

    from tqdm import tqdm

    from ..decode.pipeline import generate_motion
    from ..fast.precision import apply_mode
    from ..io.checkpoint import checkpoint_provenance, load_checkpoint

    ckpt_info = checkpoint_provenance(ckpt)
    model = apply_mode(load_checkpoint(ckpt, device=device), args.mode)
    with tqdm(total=None, desc="generating", unit="window", disable=args.quiet, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        raw = generate_motion(model, audio, style, progress=progress)
    motion = postprocess_motion(raw) if args.postprocess else raw
    seconds = audio.shape[0] / SAMPLE_RATE
    provenance = {
        "flametalk_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": ckpt_info,
        "style": {
            "name": style_name,
            "spec": args.style,
            "start_frame": args.style_start if style is not None else None,
        },
        "audio": {"path": str(audio_path.resolve()), "duration_s": seconds, "samples_16k": int(audio.shape[0])},
        "settings": {
            "postprocess": bool(args.postprocess),
            "device": str(device),
            "mode": args.mode,
            "plan": model._plan.as_dict(),
            "fps": MOTION_FPS,
            "sample_rate": SAMPLE_RATE,
            "tf32": False,
        },
        "frames": int(motion.shape[0]),
    }
    save_motion(out, motion, fps=MOTION_FPS, provenance=provenance)
    print(f"wrote {out} ({motion.shape[0]} frames, {motion.shape[0] / MOTION_FPS:.2f} s at {MOTION_FPS} fps; "
          f"{args.mode} mode, {model._plan.summary()})")
    return 0


# ---- devices ----


def _cmd_devices(args: argparse.Namespace) -> int:
    import torch

    from ..fast.plan import PLAN_ENV, candidate_cpu_plans, choose, features_dict

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    report: dict[str, Any] = {"flametalk": __version__, "torch": torch.__version__, "cpu": features_dict(),
                              "threads": torch.get_num_threads(), "devices": {}}
    runnable, note = candidate_cpu_plans()
    report["cpu_plans_runnable"] = runnable
    if os.environ.get(PLAN_ENV):
        report["cpu_plan_forced"] = {"requested": os.environ[PLAN_ENV], "refused": note}
    for dev in devices:
        entry: dict[str, Any] = {"plans": {m: choose(dev, m, warn=not args.json).as_dict() for m in ("exact", "fast")}}
        if dev.startswith("cuda"):
            entry["name"] = torch.cuda.get_device_name(torch.device(dev))
        report["devices"][dev] = entry
    if args.json:
        print(json.dumps(report))
        return 0
    cpu = report["cpu"]
    have = [k for k in ("avx2", "avx512", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx", "onednn", "fbgemm")
            if cpu[k]]
    print(f"flametalk {__version__}, torch {torch.__version__}, {report['threads']} CPU threads")
    print(f"CPU: {cpu['model']} ({cpu['machine']}; torch kernels: {cpu['torch_capability']}; "
          f"has: {', '.join(have) or 'none of the x86 extensions'})")
    for dev, entry in report["devices"].items():
        name = f" ({entry['name']})" if "name" in entry else ""
        print(f"{dev}{name}:")
        for m, p in entry["plans"].items():
            note = f" [instead of {p['fallback_from']}: {p['reason']}]" if p.get("fallback_from") else ""
            parts = ["oneDNN-packed linears" if p["pack"] else "torch linears"]
            parts += [f"int8 linears ({p['int8']})"] if p["int8"] else []
            parts += [p["dtype"], f"{p['attention']} attention"]
            parts += ["GELU as GEMM post-op"] if p.get("gelu_post_op") else []
            parts += ["FFT positional convolution"] if p.get("pos_conv") == "fft" else []
            parts += ["query/key/value as one GEMM"] if p.get("fuse_qkv") else []
            print(f"  {m:5s}: {p['name']} plan: " + ", ".join(parts) + note)
    return 0


# ---- reference-run ----


def _cmd_reference_run(args: argparse.Namespace) -> int:
    from ..fast.devices import configure_torch_for_parity

    vector = Path(args.vector).expanduser()
    if not vector.is_file():
        raise FlameTalkError(f"parity vector '{vector}' does not exist; check the path")
    out = Path(args.out).expanduser()
    configure_torch_for_parity()
    from .reference import run_reference

    run_reference(str(vector), str(out), device=args.device)
    print(f"wrote {out}")
    return 0


# ---- assets ----


def _print_states(items: Sequence[Any], root: Path) -> None:
    print(f"cache: {root}")
    for s in items:
        detail = f"  ({s.detail})" if s.detail else ""
        print(f"  {s.state:<10} {s.asset.name:<28} {s.path}{detail}")


def _cmd_assets(args: argparse.Namespace) -> int:
    from ..assets import store as assets

    root = assets.cache_dir(args.cache)
    if args.action == "download":
        final = assets.download(args.cache, accept_flame_license=args.accept_flame_license, progress=not args.quiet)
        bad = [s for s in final if not s.ok and s.state != "missing"]
        _print_states(final, root)
        if bad:
            names = ", ".join(s.asset.name for s in bad)
            raise FlameTalkError(f"{len(bad)} file(s) are not right after downloading: {names}")
        return 0
    if args.action == "status":
        _print_states(assets.states(args.cache), root)
        return 0
    # verify: re-hash every present file
    items = assets.states(args.cache, full_hash=True)
    _print_states(items, root)
    bad = [s for s in items if s.state in ("mismatch", "wrong-size", "unrecorded")]
    missing = [s for s in items if s.state in ("missing", "partial") and s.asset.required]
    if bad or missing:
        parts = []
        if bad:
            parts.append(f"{len(bad)} damaged or unrecorded ({', '.join(s.asset.name for s in bad)})")
        if missing:
            parts.append(f"{len(missing)} required missing ({', '.join(s.asset.name for s in missing)})")
        raise FlameTalkError(f"asset check failed: {'; '.join(parts)}; run `python -m flametalk assets download`")
    return 0


# ---- parser ----


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="FlameTalk: speech -> FLAME motion with the ARTalk model.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of unexpected errors")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    g = sub.add_parser("generate", parents=[common], help="audio -> motion .npz")
    g.add_argument("audio", metavar="AUDIO", help="speech recording (wav/flac/ogg/mp3; any rate, any channels)")
    g.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (.pt + config.json); default: asset cache")
    g.add_argument("--style", metavar="S", default=None,
                   help="style: a release name like natural_0, a .pt/.npy/.npz clip, or none (default)")
    g.add_argument("--style-start", metavar="FRAME", type=int, default=0,
                   help="first frame of the 50-frame style span in a longer clip (default 0)")
    g.add_argument("--device", metavar="D", default="auto", help="auto (default), cuda, cuda:N, mps or cpu")
    g.add_argument("--out", metavar="FILE",
                   help=f"output .npz (default: <audio stem>{OUT_SUFFIX} in the current folder)")
    g.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="keep the raw model output (no Savitzky-Golay smoothing, jaw roll/yaw not zeroed)")
    g.add_argument("--mode", choices=("exact", "fast"), default="exact",
                   help="exact (fp32, the release's numbers; default) or fast (int8 / bf16 where this CPU runs them, "
                        "fp16 on GPUs: `flametalk devices` shows the plan)")
    g.add_argument("--cache", metavar="DIR", help="asset cache folder (default: FLAMETALK_CACHE or the user cache)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)  # fmt: skip

    r = sub.add_parser("reference-run", parents=[common], help="run a parity vector's model on its inputs")
    r.add_argument("vector", metavar="VECTOR.pt")
    r.add_argument("out", metavar="OUT.pt")
    r.add_argument("--device", metavar="D", default="cpu",
                   help="cpu (default: the vector was recorded on CPU), cuda, mps, auto")
    r.set_defaults(func=_cmd_reference_run)

    a = sub.add_parser("assets", parents=[common], help="download / status / verify the release files")
    asub = a.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    asub.required = True
    for name, text in (("download", "fetch missing files (sha256-checked, resumable)"),
                       ("status", "list what is present (verify re-hashes)"),
                       ("verify", "re-hash every present file")):  # fmt: skip
        p = asub.add_parser(name, parents=[common], help=text)
        p.add_argument("--cache", metavar="DIR", help="cache folder (default: FLAMETALK_CACHE or the user cache)")
        if name == "download":
            p.add_argument("--accept-flame-license", action="store_true",
                           help="also fetch FLAME_with_eye.pt; only after registering at https://flame.is.tue.mpg.de "
                                "and accepting the FLAME licence")  # fmt: skip
            p.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_cmd_assets)

    v = sub.add_parser("devices", parents=[common], help="what this machine has and the kernels each mode uses")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=_cmd_devices)

    from . import bench, drift, live, serve  # each module: add_arguments(parser) and command(args)

    for name, module, text in (
        ("bench", bench, "time generation, print one JSON line"),
        ("drift", drift, "fast-mode drift from exact mode, as JSON"),
        ("serve", serve, "streaming generation over a WebSocket (PCM in, motion out)"),
        ("live", live, "motion from a microphone (or a WAV file) as you speak"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.command)

    from ..train import commands as train_commands  # argparse only: torch loads when a command runs

    train_commands.register_train(sub, [common])
    train_commands.register_evaluate(sub, [common])
    train_commands.register_dataset(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        args = build_parser().parse_args(args_list)
        return int(args.func(args) or 0)
    except FlameTalkError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # last resort: one line unless --debug
        if debug:
            traceback.print_exc()
        msg = " ".join(str(err).split())[:300]
        print(f"{PROG}: error: unexpected {type(err).__name__}: {msg} (run with --debug for details)", file=sys.stderr)
        return EXIT_UNEXPECTED
