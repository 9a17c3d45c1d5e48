"""The main job (run by scripts/demo.sh inside .venv): speak a line, animate a FLAME head with it, save the results.

    demo/demo.wav        the line, synthesized with espeak-ng at run time (nothing recorded ships with the project)
    demo/demo.blend      the rigged FLAME head with the take keyed and the sound strip in sync
    demo/demo.glb        the same as glTF (one clip: bone channels + morph weights)
    demo/demo.png        a Workbench render of the frame where the jaw is most open

Inputs, each with an override:
    release weights      the asset cache (`python -m flametalk assets download`), or FLAMETALK_CHECKPOINT=DIR
    FLAME file           FLAMETALK_FLAME=FILE, else the cache's FLAME_with_eye.pt (after accepting its licence)
    speech               FLAMETALK_DEMO_AUDIO=FILE instead of espeak-ng; FLAMETALK_DEMO_TEXT="..." changes the line
    output folder        FLAMETALK_DEMO_OUT=DIR (default demo/)
Anything missing: exact instructions on stderr and exit status 3 (missing inputs) or 2 (no speech synthesizer).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flametalk.assets import store as assets

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Hello! I am a FLAME head, and FlameTalk moved my face from this very sentence."
EXIT_MISSING = 3
EXIT_NO_SPEECH = 2


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def fail(message: str, code: int) -> int:
    print(f"demo: {message}", file=sys.stderr, flush=True)
    return code


def run(*command: str) -> None:
    say("$ " + " ".join(command))
    subprocess.run(command, check=True, cwd=ROOT)


def checkpoint_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.pt"))


def find_checkpoint() -> tuple[Path | None, str]:
    """(folder, '') when usable, else (None, what to do). Downloads the release where the network allows."""
    override = os.environ.get("FLAMETALK_CHECKPOINT")
    if override:
        folder = Path(override)
        return (folder, "") if checkpoint_ready(folder) else (
            None, f"FLAMETALK_CHECKPOINT={folder} is not a checkpoint folder (needs config.json and a .pt)")
    folder = assets.default_checkpoint_dir()
    if checkpoint_ready(folder):
        return folder, ""
    say(f"fetching the ARTalk release weights into {assets.cache_dir()}")
    result = subprocess.run([sys.executable, "-m", "flametalk", "assets", "download"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode == 0 and checkpoint_ready(folder):
        print(result.stdout, end="", flush=True)
        return folder, ""
    return None, result.stderr.strip() or f"`python -m flametalk assets download` failed ({result.returncode})"


def find_flame() -> tuple[Path | None, str]:
    override = os.environ.get("FLAMETALK_FLAME")
    if override:
        path = Path(override)
        return (path, "") if path.is_file() else (None, f"FLAMETALK_FLAME={path}: no such file")
    cached = assets.flame_file()
    if cached.is_file():
        return cached, ""
    return None, (
        "no FLAME head model. FLAME is licensed separately and cannot ship with FlameTalk: register at "
        f"{assets.FLAME_LICENSE_URL} and accept the licence, then EITHER point the demo at your file:\n"
        "    FLAMETALK_FLAME=/path/to/generic_model.pkl bash scripts/demo.sh\n"
        "OR let FlameTalk download FLAME_with_eye.pt (FLAME 2020) for you:\n"
        "    .venv/bin/python -m flametalk assets download --accept-flame-license\n"
        f"    (it goes to {cached})")


def speech(out: Path) -> tuple[Path | None, str]:
    override = os.environ.get("FLAMETALK_DEMO_AUDIO")
    if override:
        return (Path(override), "") if Path(override).is_file() else (None, f"FLAMETALK_DEMO_AUDIO={override}: "
                                                                             "no such file")
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None, ("espeak-ng is not installed (it speaks the demo line): `sudo apt-get install espeak-ng` "
                      "(Debian/Ubuntu), or set FLAMETALK_DEMO_AUDIO=your_speech.wav")
    wav = out / "demo.wav"
    run(espeak, "-v", "en-us", "-s", "150", "-w", str(wav), os.environ.get("FLAMETALK_DEMO_TEXT", TEXT))
    return wav, ""


def main() -> int:
    out = Path(os.environ.get("FLAMETALK_DEMO_OUT") or ROOT / "demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    flame, flame_problem = find_flame()
    checkpoint, checkpoint_problem = find_checkpoint()
    if flame_problem or checkpoint_problem:
        problems = [p for p in (checkpoint_problem, flame_problem) if p]
        return fail("\n\n".join(problems) + "\n\nThen run `bash scripts/demo.sh` again.", EXIT_MISSING)
    wav, problem = speech(out)
    if wav is None:
        return fail(problem, EXIT_NO_SPEECH)
    blend, glb, png = out / "demo.blend", out / "demo.glb", out / "demo.png"
    try:
        run(sys.executable, "-m", "blender_addon.cli", "animate", "--flame", str(flame), "--audio", str(wav),
            "--checkpoint", str(checkpoint), "--worker-python", sys.executable, "--out", str(blend), "--glb", str(glb))
        run(sys.executable, str(ROOT / "scripts" / "render_preview.py"), str(blend), str(png))
    except subprocess.CalledProcessError as err:
        return fail(f"step failed (exit status {err.returncode}): {' '.join(err.cmd)}", 1)
    say(f"done: {blend}, {glb}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
