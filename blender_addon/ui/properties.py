"""Panel settings (saved with the scene: `scene.flametalk`) and generation state (`window_manager.flametalk`,
not saved, not in undo)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from ..core import paths
from ..scene.rig import RIG_TAG
from .settings import DEVICE_ITEMS, worker_settings

AUDIO_ITEMS = [
    ("FILE", "File", "An audio file (a sound strip is added at the start frame)"),
    ("STRIP", "Sound Strip", "A sound strip already in the sequencer (keys start where the strip starts)"),
]
LIVE_ITEMS = [
    ("MIC", "Microphone", "An audio input device (sounddevice in the worker's runtime)"),
    ("FILE", "File", "An audio file played in real time, standing in for a microphone"),
]
STYLE_ITEMS = [
    ("NONE", "None", "The model's neutral speaking style"),
    ("RELEASE", "Release Clip", "A style clip downloaded with the model (asset cache)"),
    ("FILE", "File", "A style clip file: .pt, .npy or a motion .npz (2 s or longer)"),
    ("ACTION", "Action", "2 s of an action already on a FLAME head in this file"),
]


def _is_flame_armature(_self: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE" and RIG_TAG in obj


def _release_style_search(_self: bpy.types.PropertyGroup, context: bpy.types.Context, _text: str) -> list[str]:
    return paths.release_styles(worker_settings(context).checkpoint)


class FLAMETALK_PG_settings(bpy.types.PropertyGroup):
    head: PointerProperty(name="Head", type=bpy.types.Object, poll=_is_flame_armature,
                          description="FLAME head to animate (empty: the active object's head)")
    audio_source: EnumProperty(name="Audio", items=AUDIO_ITEMS, default="FILE")
    audio_file: StringProperty(name="Audio File", subtype="FILE_PATH", default="")
    audio_strip: StringProperty(name="Sound Strip", default="")
    style_source: EnumProperty(name="Style", items=STYLE_ITEMS, default="NONE")
    style_release: StringProperty(name="Clip", default="natural_0", search=_release_style_search)
    style_file: StringProperty(name="Style File", subtype="FILE_PATH", default="")
    style_action: PointerProperty(name="Action", type=bpy.types.Action)
    style_frame: IntProperty(name="From Frame", default=1, description="First frame of the 2 s used as style")
    device: EnumProperty(name="Device", items=[("PREFS", "Preferences", "The device set in the preferences"),
                                               *DEVICE_ITEMS], default="PREFS")
    start_frame: IntProperty(name="Start Frame", default=1,
                             description="Frame where the sound starts and the first key goes")
    jaw_intensity: FloatProperty(name="Jaw", default=1.0, min=0.0, soft_max=2.0,
                                 description="Scales the jaw rotation (lip sync amount); 0 = jaw still")
    expression_intensity: FloatProperty(name="Expression", default=1.0, min=0.0, soft_max=2.0,
                                        description="Scales the 100 FLAME expression coefficients")
    head_intensity: FloatProperty(name="Head Motion", default=1.0, min=0.0, soft_max=2.0,
                                  description="Scales the head rotation; 0 = head still")
    smoothing: FloatProperty(name="Smoothing", default=0.0, min=0.0, soft_max=4.0,
                             description="Gaussian smoothing over time, standard deviation in 25 fps frames")
    simplify: BoolProperty(name="Simplify Keys", default=False,
                           description="Keep only the keys needed to stay within the tolerances (linear keys)")
    simplify_expression: FloatProperty(name="Max Error", default=0.02, min=0.0, soft_max=0.2, precision=3,
                                       description="Largest change of an expression value from simplifying")
    simplify_rotation: FloatProperty(name="Max Rotation Error", default=0.25, min=0.0, soft_max=5.0,
                                     description="Largest rotation change (about, in degrees) from simplifying")
    push_to_nla: BoolProperty(name="Push to NLA", default=False,
                              description="Put each take on its own NLA track instead of leaving it active")
    keep_partial: BoolProperty(name="Keep finished windows on cancel", default=False,
                               description="Cancel keeps the 4-s windows already keyed as a shorter take "
                                           "(off: Cancel leaves the scene as it was)")
    live_source: EnumProperty(name="Live Input", items=LIVE_ITEMS, default="MIC")
    live_device: StringProperty(name="Input Device", default="",
                                description="Audio input for Live: a device index or name (empty: the system's "
                                            "default input; `python -m sounddevice` lists them)")
    live_file: StringProperty(name="Live File", subtype="FILE_PATH", default="",
                              description="An audio file played in real time instead of a microphone")


class FLAMETALK_PG_state(bpy.types.PropertyGroup):
    running: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(default="")
    first_keys: FloatProperty(default=-1.0, description="Seconds from Generate to the first keyed window of the "
                                                        "last progressive take (-1: none yet)")
    live_running: BoolProperty(default=False)
    live_status: StringProperty(default="")
    live_latency: FloatProperty(default=-1.0, description="Live: seconds from a moment's capture to its frame on "
                                                          "the head (the frame shown now; -1: none yet)")
    live_frames: IntProperty(default=0, description="Live: motion frames received")


CLASSES: tuple[type, ...] = (FLAMETALK_PG_settings, FLAMETALK_PG_state)


def register_properties() -> None:
    bpy.types.Scene.flametalk = PointerProperty(type=FLAMETALK_PG_settings)
    bpy.types.WindowManager.flametalk = PointerProperty(type=FLAMETALK_PG_state)


def unregister_properties() -> None:
    for owner in (bpy.types.WindowManager, bpy.types.Scene):
        if hasattr(owner, "flametalk"):
            del owner.flametalk
