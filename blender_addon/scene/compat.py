"""The one place that knows Blender-version differences (the add-on targets 4.2 LTS .. 5.0).

- Animation: Blender 4.4 introduced slotted (layered) actions and 5.0 removed `Action.fcurves`; F-curves then live
  in a channelbag per (layer strip, slot). Before 4.4 an action is a flat list of F-curves.
- Sequencer: `SequenceEditor.strips` in 5.0, `SequenceEditor.sequences` before.
"""

from __future__ import annotations

from typing import Any

import bpy

KEY_INTERPOLATION = {"CONSTANT": 0, "LINEAR": 1, "BEZIER": 2}  # enum values foreach_set expects


def has_slotted_actions() -> bool:
    return "slots" in bpy.types.Action.bl_rna.properties  # RNA properties are not Python class attributes


def assign_action(owner: bpy.types.ID, action: bpy.types.Action) -> Any:
    """Make `action` the active action of `owner` (an Object or a Key); returns the slot used (or None)."""
    adt = owner.animation_data or owner.animation_data_create()
    if not has_slotted_actions():
        adt.action = action
        return None
    slot = None
    for candidate in action.slots:  # reuse the slot already made for this datablock type, if any
        if candidate.target_id_type == owner.id_type:
            slot = candidate
            break
    if slot is None:
        slot = action.slots.new(id_type=owner.id_type, name=owner.name)
    adt.action = action
    adt.action_slot = slot
    return slot


def action_fcurves(action: bpy.types.Action, owner: bpy.types.ID) -> Any:
    """The F-curve collection of `action` that animates `owner` (assigning the action to it first)."""
    slot = assign_action(owner, action)
    if slot is None:
        return action.fcurves
    try:
        from bpy_extras.anim_utils import action_ensure_channelbag_for_slot

        return action_ensure_channelbag_for_slot(action, slot).fcurves
    except ImportError:  # 4.4: build layer -> keyframe strip -> channelbag by hand
        layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
        strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
        return strip.channelbag(slot, ensure=True).fcurves


def new_fcurve(fcurves: Any, data_path: str, index: int, group: str = "") -> bpy.types.FCurve:
    """fcurves.new with a group name: `group_name` on 5.0 channelbags, `action_group` on flat actions."""
    for keyword in ("group_name", "action_group"):
        try:
            return fcurves.new(data_path, index=index, **{keyword: group})
        except TypeError:
            continue
    return fcurves.new(data_path, index=index)


def sequencer_strips(editor: bpy.types.SequenceEditor) -> Any:
    """Top-level strips of a sequence editor (5.0: `strips`, before: `sequences`)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def all_strips(editor: bpy.types.SequenceEditor | None) -> Any:
    """Every strip, also inside meta strips (5.0: `strips_all`, before: `sequences_all`); [] without an editor."""
    if editor is None:
        return []
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def all_strips_property() -> str:
    """Name of the all-strips collection on SequenceEditor, for UILayout.prop_search."""
    return "strips_all" if "strips_all" in bpy.types.SequenceEditor.bl_rna.properties else "sequences_all"


def iter_action_fcurves(action: bpy.types.Action) -> list[bpy.types.FCurve]:
    """Every F-curve of an action, over all layers, strips and slots (flat list before 4.4)."""
    if not has_slotted_actions() or not hasattr(action, "layers"):
        return list(action.fcurves)
    curves: list[bpy.types.FCurve] = []
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                curves.extend(bag.fcurves)
    if not curves and "fcurves" in action.bl_rna.properties:  # 4.4/4.5 legacy view of a single-slot action
        curves = list(action.fcurves)
    return curves


def push_to_nla(owner: bpy.types.ID, action: bpy.types.Action, start: int, track_name: str) -> Any:
    """Put `action` on a new NLA track of `owner` at `start` (slot chosen as for the active action), then clear
    the active action, like the Action editor's Push Down. Returns the track."""
    slot = assign_action(owner, action)
    adt = owner.animation_data
    track = adt.nla_tracks.new()
    track.name = track_name
    strip = track.strips.new(track_name, int(start), action)
    if slot is not None and "action_slot" in strip.bl_rna.properties and strip.action_slot != slot:
        strip.action_slot = slot
    adt.action = None
    return track
