"""The release files in the per-user cache: what and where (store.py), fetching from the model hub (hub.py), sha256
sidecars (hashing.py). The public names of store.py are re-exported here (`from flametalk import assets`)."""

from .store import (
    Asset,
    AssetState,
    cache_dir,
    default_checkpoint_dir,
    download,
    flame_file,
    hub_url,
    missing_checkpoint_message,
    release_manifest,
    resolve_checkpoint_dir,
    states,
    style_dir,
)

__all__ = [
    "Asset", "AssetState", "cache_dir", "default_checkpoint_dir", "download", "flame_file", "hub_url",
    "missing_checkpoint_message", "release_manifest", "resolve_checkpoint_dir", "states", "style_dir",
]  # fmt: skip
