"""3D View sidebar > FlameTalk: head, audio, style, controls, Generate (progress + Cancel), takes, export."""

from __future__ import annotations

from typing import ClassVar

import bpy

from ..flame.contract import MOTION_FPS, STYLE_FRAMES
from ..scene import character, compat, retarget, takes
from ..scene.rig import find_rig
from . import live
from .generate import active_job


class _FlameTalkPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FlameTalk"


class FLAMETALK_PT_main(_FlameTalkPanel, bpy.types.Panel):
    bl_label = "FlameTalk"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.flametalk
        state = context.window_manager.flametalk
        layout.use_property_split = True
        layout.use_property_decorate = False

        col = layout.column()
        col.prop(settings, "head")
        rig = find_rig(settings.head or context.active_object)
        if rig is None:
            col.label(text="No FLAME head selected", icon="ERROR")
        col.operator("flametalk.build_head", icon="ADD")

        col = layout.column()
        col.prop(settings, "audio_source", expand=True)
        if settings.audio_source == "FILE":
            col.prop(settings, "audio_file")
            col.prop(settings, "start_frame")
        elif context.scene.sequence_editor is not None:
            col.prop_search(settings, "audio_strip", context.scene.sequence_editor, compat.all_strips_property())
        else:
            col.label(text="The sequencer has no strips", icon="INFO")

        col = layout.column()
        col.prop(settings, "style_source")
        if settings.style_source == "RELEASE":
            col.prop(settings, "style_release")
        elif settings.style_source == "FILE":
            col.prop(settings, "style_file")
        elif settings.style_source == "ACTION":
            col.prop(settings, "style_action")
            col.prop(settings, "style_frame")
            fps = context.scene.render.fps / context.scene.render.fps_base
            last = settings.style_frame + STYLE_FRAMES * fps / MOTION_FPS
            col.label(text=f"Uses frames {settings.style_frame}..{last:.0f}")
        col.prop(settings, "device")

        row = layout.row(align=True)
        row.scale_y = 1.4
        if state.running or active_job() is not None:
            progress = getattr(row, "progress", None)  # UILayout.progress: Blender 4.0+
            if progress is not None:
                progress(factor=state.progress, type="BAR", text=state.status or "Generating...")
            else:
                row.label(text=f"{state.status} {100 * state.progress:.0f}%")
            row.operator("flametalk.cancel", text="", icon="CANCEL")
        else:
            row.operator("flametalk.generate", icon="PLAY_SOUND")
        layout.prop(settings, "keep_partial")  # progressive takes (ui/generate.py) and Live (ui/live.py)
        if state.first_keys >= 0:
            layout.label(text=f"First window keyed after {state.first_keys:.1f} s", icon="TIME")
        live.draw_live(layout, context)


class FLAMETALK_PT_controls(_FlameTalkPanel, bpy.types.Panel):
    bl_label = "Controls"
    bl_parent_id = "FLAMETALK_PT_main"
    bl_options: ClassVar[set[str]] = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.flametalk
        col = layout.column()
        col.prop(settings, "jaw_intensity")
        col.prop(settings, "expression_intensity")
        col.prop(settings, "head_intensity")
        col.prop(settings, "smoothing")
        col.prop(settings, "simplify")
        sub = col.column()
        sub.enabled = settings.simplify
        sub.prop(settings, "simplify_expression")
        sub.prop(settings, "simplify_rotation")
        col.prop(settings, "push_to_nla")


class FLAMETALK_PT_takes(_FlameTalkPanel, bpy.types.Panel):
    bl_label = "Takes & Export"
    bl_parent_id = "FLAMETALK_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        found = takes.all_takes()  # FLAME takes and character takes (scene/retarget.py) in one list
        if found:
            box = layout.box()
            for name, kind in found[-8:]:
                if kind == "character":
                    obj = takes.character_take_object(name)
                    label = f"{name} ({obj.name})" if obj is not None else name
                    box.operator("flametalk.character_use_take", text=label, icon="USER").take = name
                else:
                    box.operator("flametalk.use_take", text=name, icon="ACTION").take = name
        else:
            layout.label(text="No takes yet")
        row = layout.row(align=True)
        row.operator("flametalk.export_fbx", text="FBX", icon="EXPORT")
        row.operator("flametalk.export_gltf", text="glTF", icon="EXPORT")
        target = getattr(context.scene, "flametalk_character", None)
        obj = target.target if target is not None else None
        if obj is not None and find_rig(obj) is None and takes.active_character_take(obj) is not None:
            row = layout.row(align=True)  # the character's active take, whatever the selection
            row.label(text=obj.name, icon="USER")
            row.operator("flametalk.export_fbx", text="FBX", icon="EXPORT").character = obj.name
            row.operator("flametalk.export_gltf", text="glTF", icon="EXPORT").character = obj.name


class FLAMETALK_PT_character(_FlameTalkPanel, bpy.types.Panel):
    """Your character: retarget FlameTalk takes onto a mesh with shape keys (ui/character.py)."""

    bl_label = "Character"
    bl_parent_id = "FLAMETALK_PT_main"
    bl_options: ClassVar[set[str]] = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.flametalk_character
        col = layout.column()
        col.prop(settings, "target")
        col.prop(settings, "flame_file")
        col.prop(settings, "shape_keys")
        if settings.shape_keys == "LIST":
            col.prop(settings, "key_list")
        obj = settings.target
        if obj is not None and obj.type == "MESH":
            col.prop_search(settings, "face_group", obj, "vertex_groups")
        else:
            col.prop(settings, "face_group")
        col.prop(settings, "jaw_bone")
        col.prop(settings, "head_target")
        if settings.head_target == "BONE":
            col.prop(settings, "head_bone")
        row = col.row(align=True)
        row.prop(settings, "use_placement")
        row.operator("flametalk.character_place_head", text="Place", icon="OBJECT_ORIGIN")
        summary = character.fit_summary(obj) if obj is not None else None
        row = layout.row(align=True)
        row.operator("flametalk.character_fit", icon="MOD_SHRINKWRAP")
        row.operator("flametalk.character_show_fit", text="Show", icon="HIDE_OFF")
        if summary is None:
            layout.label(text="Not fitted yet (Retarget fits it first)", icon="INFO")
        else:
            layout.label(text=f"Fit: {summary['rms_mm']:.2f} mm RMS, {summary['max_mm']:.2f} mm max, "
                              f"{summary['vertices_used']} vertices", icon="CHECKMARK")
        col = layout.column(align=True)
        col.operator("flametalk.character_retarget", icon="ARMATURE_DATA")
        col.operator("flametalk.character_generate", icon="PLAY_SOUND")
        if obj is not None and retarget.character_take_names():
            layout.label(text="Its takes: Takes & Export below", icon="INFO")


CLASSES: tuple[type, ...] = (FLAMETALK_PT_main, FLAMETALK_PT_controls, FLAMETALK_PT_character, FLAMETALK_PT_takes)
