"""Release assets: what to fetch from the model hub, where it lives in the per-user cache, and its state.

Cache folder: `--cache DIR`, else the rule both halves share (flame/contract.py `cache_dir`: env FLAMETALK_CACHE,
then a per-platform user cache folder).
Layout inside it:
  artalk/ARTalk_wav2vec.pt, artalk/config.json   the checkpoint folder (`default_checkpoint_dir()`)
  artalk/style_motion/<name>.pt                  release style clips
  flame/FLAME_with_eye.pt                        FLAME 2020 (only with --accept-flame-license)
  assets.lock.json                               size + sha256 recorded on first download of unhashed files
The hub base URL is https://huggingface.co unless env FLAMETALK_HUB_URL says otherwise (mirrors, tests).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import FlameTalkError
from ..flame import contract
from ..flame.contract import CHECKPOINT_SUBDIR, cache_dir

HUB_URL = "https://huggingface.co"
ARTALK_REPO = "xg-chu/ARTalk"
FLAME_REPO = "xg-chu/GAGAvatar"
REVISION = "main"
STYLE_SUBDIR = f"{CHECKPOINT_SUBDIR}/{contract.STYLE_SUBDIR}"  # the checkpoint folder's style clips
FLAME_SUBDIR = "flame"
LOCK_NAME = "assets.lock.json"
CHECKPOINT_NAME = "ARTalk_wav2vec.pt"
CONFIG_NAME = "config.json"
FLAME_NAME = "FLAME_with_eye.pt"
FLAME_LICENSE_URL = "https://flame.is.tue.mpg.de"
EXIT_OFFLINE = 3  # exit status when the hub cannot be reached
LISTING_TIMEOUT_S = 10.0  # seconds to wait for the hub's style-folder listing (optional; falls back to KNOWN_STYLES)
KNOWN_STYLES = (  # release style clips known to exist; `download` also asks the hub for the folder's listing
    "angry_0", "curious_0", "doubtful_0", "doubtful_1", "happy_0", "happy_1", "happy_2",
    "natural_0", "natural_1", "natural_2", "natural_3", "natural_4", "natural_5", "natural_6", "natural_7",
)  # fmt: skip
FLAME_NOTE = (
    f"{FLAME_NAME} is FLAME 2020, which is licensed separately and may not be redistributed: register at "
    f"{FLAME_LICENSE_URL} and accept the FLAME licence, then run "
    "`python -m flametalk assets download --accept-flame-license`"
)

__all__ = [
    "Asset", "AssetState", "cache_dir", "default_checkpoint_dir", "download", "flame_file", "hub_url",
    "missing_checkpoint_message", "release_manifest", "resolve_checkpoint_dir", "states", "style_dir",
]  # fmt: skip


@dataclass(frozen=True)
class Asset:
    """One file: where it is on the hub, where it goes in the cache, and what it must be."""

    name: str  # shown to users
    repo: str  # hub repository, owner/name
    path: str  # path inside the hub repository
    dest: str  # path relative to the cache folder, '/'-separated
    size: int | None = None  # bytes; None when not published
    sha256: str | None = None  # None when not published: recorded in the lock file on first download
    revision: str = REVISION
    flame: bool = False  # needs the user's acceptance of the FLAME licence
    required: bool = True  # `verify` fails when a required file is missing


def release_manifest(style_names: Sequence[str] = KNOWN_STYLES) -> list[Asset]:
    """The release files: checkpoint and config first (they matter most), then style clips, then FLAME."""
    items = [
        Asset(CHECKPOINT_NAME, ARTALK_REPO, CHECKPOINT_NAME, f"{CHECKPOINT_SUBDIR}/{CHECKPOINT_NAME}", 1_959_150_898,
              "d89615a32e2a6b4e35cf5494c1e400b2acedc43812f63423b9f5d705046d67c2"),
        Asset(CONFIG_NAME, ARTALK_REPO, CONFIG_NAME, f"{CHECKPOINT_SUBDIR}/{CONFIG_NAME}", 303,
              "7546248a7eace5184a3b072de6fac80f22109e32f073ba4f616a7971a6f190fe"),
    ]  # fmt: skip
    # The release publishes no sizes or hashes for style clips: trust on first download (recorded in the lock file),
    # verified against that record ever after.
    for name in style_names:
        items.append(Asset(f"style_motion/{name}.pt", ARTALK_REPO, f"style_motion/{name}.pt",
                           f"{STYLE_SUBDIR}/{name}.pt", required=False))  # fmt: skip
    items.append(Asset(FLAME_NAME, FLAME_REPO, f"assets/{FLAME_NAME}", f"{FLAME_SUBDIR}/{FLAME_NAME}", 26_819_643,
                       "b87a1d3513b3df0504f1e1f93bcb85ac01abe4dadf92e75ac08046c4a68403be", flame=True, required=False))
    return items


def default_checkpoint_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder holding ARTalk_wav2vec.pt + config.json (a checkpoint folder)."""
    return cache_dir(cache) / CHECKPOINT_SUBDIR


def style_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(cache) / STYLE_SUBDIR


def flame_file(cache: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(cache) / FLAME_SUBDIR / FLAME_NAME


def hub_url() -> str:
    return (os.environ.get("FLAMETALK_HUB_URL") or HUB_URL).rstrip("/")


def asset_url(asset: Asset, base: str | None = None) -> str:
    return f"{(base or hub_url()).rstrip('/')}/{asset.repo}/resolve/{asset.revision}/{asset.path}"


def _human(n: int | None) -> str:
    if n is None:
        return "size not published"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}, {n:,} bytes"
    return f"{n:,} bytes"


# ---- lock file (recorded size + sha256 of files without published hashes) ----


def _lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def _read_lock(root: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_lock_path(root).read_text(encoding="utf-8"))
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in files.items() if isinstance(v, dict)}
    except (OSError, ValueError):
        return {}


def _record_lock(root: Path, asset: Asset, size: int, digest: str) -> None:
    files = _read_lock(root)
    files[asset.dest] = {"size": size, "sha256": digest, "url": asset_url(asset, HUB_URL)}
    tmp = _lock_path(root).with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(_lock_path(root))


def _expected(asset: Asset, lock: dict[str, dict[str, object]]) -> Asset:
    """The asset with size/sha256 filled from the lock file where the release publishes none."""
    entry = lock.get(asset.dest)
    if asset.sha256 is None and entry is not None:
        size, digest = entry.get("size"), entry.get("sha256")
        return replace(
            asset, size=size if isinstance(size, int) else None, sha256=digest if isinstance(digest, str) else None
        )
    return asset


# ---- state ----


@dataclass(frozen=True)
class AssetState:
    asset: Asset
    path: Path
    state: str  # verified | present | missing | partial | wrong-size | mismatch | unrecorded
    detail: str = ""
    # "verified": its bytes were hashed in this call (or while downloading it) and match the published/recorded
    # sha256. "present": the size matches; the sha256 was not re-computed (a hash recorded earlier is not proof:
    # a file edited in place with its size and time restored keeps it), `assets verify` re-hashes.

    @property
    def ok(self) -> bool:
        return self.state in ("verified", "present")


NOT_REVERIFIED = "not re-verified: size ok, sha256 not re-computed (`assets verify` re-hashes)"


def _state(asset: Asset, root: Path, lock: dict[str, dict[str, object]], full_hash: bool,
           hashed_now: dict[str, str] | None = None) -> AssetState:
    from .hashing import cached_sha256, read_sidecar, sha256_file, write_sidecar
    from .hub import locked_by_another, part_path

    exp = _expected(asset, lock)
    path = root / asset.dest
    if not path.is_file():
        part = part_path(path)
        if part.is_file():
            of = f" of {exp.size:,}" if exp.size else ""
            how = ("being downloaded by another process" if locked_by_another(path)
                   else "`assets download` resumes")
            return AssetState(asset, path, "partial", f"{part.stat().st_size:,}{of} bytes; {how}")
        note = "needs --accept-flame-license" if asset.flame else ""
        return AssetState(asset, path, "missing", note)
    size = path.stat().st_size
    if exp.size is not None and size != exp.size:
        return AssetState(asset, path, "wrong-size", f"{size:,} bytes, expected {exp.size:,}")
    if exp.sha256 is None:
        digest = cached_sha256(path)
        note = f"sha256 {digest[:12]}... not yet recorded; `assets download` records it"
        return AssetState(asset, path, "unrecorded", note)
    fresh = (hashed_now or {}).get(asset.dest)
    if full_hash:
        digest = sha256_file(path)
        write_sidecar(path, digest)
    elif fresh is not None:  # hashed while this run downloaded (or checked) it
        digest = fresh
    else:
        digest = read_sidecar(path)
        if digest is None:
            return AssetState(asset, path, "present", "size ok, hash not checked yet (`assets verify`)")
        if digest == exp.sha256:  # a recorded hash is a hint, not a check: say so
            return AssetState(asset, path, "present", NOT_REVERIFIED)
    if digest != exp.sha256:
        return AssetState(asset, path, "mismatch", f"sha256 {digest} but expected {exp.sha256}")
    return AssetState(asset, path, "verified", "")


def states(
    cache: str | os.PathLike[str] | None = None, manifest: Sequence[Asset] | None = None, full_hash: bool = False,
    hashed_now: dict[str, str] | None = None,
) -> list[AssetState]:
    """State of every manifest file. `full_hash`: re-hash present files (`verify`: "verified" or "mismatch");
    otherwise a matching size is "present (not re-verified)" and only a recorded hash that differs is reported
    ("mismatch"). `hashed_now`: {dest: sha256} of files hashed by the caller just now (a download)."""
    root = cache_dir(cache)
    lock = _read_lock(root)
    if manifest is None:
        folder = root / STYLE_SUBDIR
        local = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
        manifest = release_manifest([*KNOWN_STYLES, *(n for n in local if n not in KNOWN_STYLES)])
    return [_state(a, root, lock, full_hash, hashed_now) for a in manifest]


# ---- download ----


def offline_message(items: Sequence[Asset], root: Path, base: str, reason: str) -> str:
    lines = [f"cannot reach the model hub at {base} ({reason}). Download these files by hand and put each one at the "
             "path shown (the folders may need creating):"]  # fmt: skip
    for a in items:
        lines += [f"  {a.name} ({_human(a.size)})", f"    from: {asset_url(a, base)}", f"    to:   {root / a.dest}"]
    lines.append("then run `python -m flametalk assets verify`.")
    return "\n".join(lines)


def missing_checkpoint_message(cache: str | os.PathLike[str] | None = None) -> str:
    """Why the default checkpoint cannot be used, and how to get it (online and by hand)."""
    root = cache_dir(cache)
    needed = [a for a in release_manifest(()) if not a.flame and not (root / a.dest).is_file()]
    head = (f"no checkpoint given and the asset cache has none ({default_checkpoint_dir(cache)}); run "
            "`python -m flametalk assets download`, pass --checkpoint DIR, or download by hand:")  # fmt: skip
    body = offline_message(needed, root, hub_url(), "not tried").split("\n")[1:-1]
    return "\n".join([head, *body])


def resolve_checkpoint_dir(arg: str | os.PathLike[str] | None, cache: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint to load: `arg` when given (it must exist), else the cache's checkpoint folder when it holds the
    weights and config.json; FlameTalkError (with what to do) otherwise."""
    if arg:
        p = Path(arg).expanduser()
        if not p.exists():
            raise FlameTalkError(f"checkpoint '{p}' does not exist; pass a checkpoint folder (a .pt + config.json)")
        return p
    d = default_checkpoint_dir(cache)
    if (d / CHECKPOINT_NAME).is_file() and (d / CONFIG_NAME).is_file():
        return d
    raise FlameTalkError(missing_checkpoint_message(cache))


def _discover_styles(base: str, log: Callable[[str], None]) -> list[str]:
    from .hub import list_folder

    listed = list_folder(base, ARTALK_REPO, REVISION, "style_motion", timeout=LISTING_TIMEOUT_S)
    if not listed:
        return list(KNOWN_STYLES)
    names = {Path(p).stem for p in listed if p.endswith(".pt") and p.startswith("style_motion/") and p.count("/") == 1}
    extra = sorted(names - set(KNOWN_STYLES))
    if extra:
        log(f"the hub lists {len(extra)} more style clip(s): {', '.join(extra)}")
    return [*KNOWN_STYLES, *extra]


def download(
    cache: str | os.PathLike[str] | None = None,
    accept_flame_license: bool = False,
    manifest: Sequence[Asset] | None = None,
    base_url: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[AssetState]:
    """Fetch every missing or incomplete manifest file into the cache; verify everything; return final states.

    Files already in place with the right hash are not downloaded again. FLAME is skipped (with an explanation)
    unless `accept_flame_license`. Raises FlameTalkError (exit code EXIT_OFFLINE, naming every missing file with
    its size, URL and destination) when the hub cannot be reached.
    """
    from .hashing import cached_sha256
    from .hub import HubUnreachable, fetch

    say = log or (lambda msg: print(msg, file=sys.stderr))
    root = cache_dir(cache)
    base = (base_url or hub_url()).rstrip("/")
    items = list(manifest) if manifest is not None else release_manifest(_discover_styles(base, say))
    root.mkdir(parents=True, exist_ok=True)
    todo: list[Asset] = []
    for a in items:
        if a.flame and not accept_flame_license:
            if not (root / a.dest).is_file():
                say(f"skipped {a.name}: {FLAME_NOTE}")
            continue
        todo.append(a)

    hashed_now: dict[str, str] = {}  # files whose bytes this run hashed (downloaded): reported as verified
    for i, a in enumerate(todo):
        exp = _expected(a, _read_lock(root))
        dest = root / a.dest
        if dest.is_file():
            size = dest.stat().st_size
            if exp.size is None or size == exp.size:
                digest = cached_sha256(dest)
                if exp.sha256 is None:
                    _record_lock(root, a, size, digest)
                    say(f"recorded {a.name} (sha256 {digest[:12]}...)")
                    continue
                if digest == exp.sha256:
                    continue
            say(f"{a.name} in the cache is damaged (size or sha256 differs); downloading it again")
            dest.unlink()
        try:
            digest = fetch(asset_url(a, base), dest, exp.size, exp.sha256, desc=a.name, progress=progress, log=say)
        except HubUnreachable as err:
            missing = [b for b in todo[i:] if not (root / b.dest).is_file()]
            raise FlameTalkError(offline_message(missing, root, base, err.reason), EXIT_OFFLINE) from err
        if exp.sha256 is None:
            _record_lock(root, a, dest.stat().st_size, digest)
        hashed_now[a.dest] = digest
        say(f"downloaded {a.name} -> {dest}")
    return states(root, [a for a in items if not a.flame or accept_flame_license or (root / a.dest).is_file()],
                  hashed_now=hashed_now)
