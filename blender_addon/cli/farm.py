"""`python -m blender_addon.cli farm MANIFEST --out-dir D`: the batch on a Ray cluster (local without `--ray`).

Work split (Ray's scheduling, actor restarts, task retries; nothing home-made):
  - model actors (`--model-workers`, spread over the nodes; `num_gpus=1` where the cluster has GPUs) each keep one
    warm flametalk worker process (worker/client.py, the add-on's only way to the model) and write a line's motion
    .npz to D/.flametalk-farm/motion/<name>.<key>.npz through a temporary (renamed when complete);
  - Blender writer actors (`--blender-writers` per node; bpy imported once per actor process) read that motion and
    write the line exactly as `batch` does (take.py: a fresh scene, the FLAME head, the same request and controls,
    apply_motion; the .blend + exports to temporaries renamed together), then the line's done-marker
    D/.flametalk-farm/done/<name>.json (input key + outputs + report entry); only then the driver records the entry.
A killed actor process (or a model actor whose worker process died) is restarted by Ray and its line retried
(`max_task_retries` = --max-retries), then reported failed; what a dead attempt left (temporaries named after its
pid) is removed by the next attempt or run. Each attempt appends a line to D/.flametalk-farm/attempts/<name>.jsonl
(role, pid, worker pid, node): the report's `attempts` counts them.

Resume: a line whose marker holds the same input key (core/manifest.line_key: audio, FLAME, checkpoint weights +
config, style and shape files and the options) and whose outputs exist is `skipped`; a motion already computed for
the same key is reused. Every path must be the same on every node (shared storage).

Exit status: 0 every line ok or skipped, 1 some failed, 2 a bad invocation (one line), 130 interrupted
(farm_report.json lists the finished lines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.manifest import ManifestError, Row, is_style_file, line_key, read_manifest
from ..core.staging import StagedOutputs, clean_leftovers, write_json_atomic
from ..flame import FlameFileError, load_flame
from ..worker.client import WorkerClient, WorkerError
from ..worker.runtime import automatic_worker_python
from .interrupts import EXIT_INTERRUPTED, Interrupted, hold_interrupts, interrupted
from .take import CliError, check_fps, check_writable_folder, prepare_take, write_take

REPORT_NAME = "farm_report.json"
WORK_NAME = ".flametalk-farm"  # under --out-dir: motion/, done/, attempts/
MARKER_FORMAT = 1  # part of every line key: a change of the marker's meaning reruns everything
HOLD_ENV = "FLAMETALK_FARM_TEST_HOLD"  # tests: "NAME=SECONDS" holds NAME's first write before its files are renamed
MODEL_IN_FLIGHT = 2  # per model actor: one line computing, one queued, so the model never waits for the driver
WRITER_IN_FLIGHT = 1  # per writer: a slow or stuck Blender holds up only its own line
PROGRESS_EVERY_S = 2.0
RAY_MISSING = "the farm needs Ray: pip install 'flametalk[farm]' (into the Python that has bpy)"


# ---------------------------------------------------------------- the actors (plain classes; ray.remote at run time)


def _node() -> dict[str, str]:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


def _record_attempt(line: dict[str, Any], role: str, **extra: Any) -> int:
    """Append this attempt to the line's attempts file; returns how many `role` attempts it now holds."""
    record = {"role": role, "pid": os.getpid(), "time": round(time.time(), 3), **_node(), **extra}
    with open(line["attempts"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return sum(1 for r in _read_attempts(line["attempts"]) if r.get("role") == role)


def _read_attempts(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(ln) for ln in handle if ln.strip()]
    except (OSError, ValueError):
        return []


def _read_marker(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _marker_done(marker: dict[str, Any] | None, key: str) -> bool:
    return bool(marker and marker.get("key") == key and marker.get("outputs")
                and all(Path(p).is_file() for p in marker["outputs"]))


class ModelActor:
    """One warm flametalk worker process; `generate(line)` writes the line's motion file (atomically)."""

    def __init__(self, python: str):
        StagedOutputs.clean_on_enter = False  # shared folders: the driver removes what dead attempts left
        self.client = WorkerClient(python)  # started with the first line; the model loads then and stays loaded

    def info(self) -> dict[str, Any]:
        return {**_node(), "pid": os.getpid(), "worker_pid": (self.client.hello or {}).get("pid")}

    def generate(self, line: dict[str, Any]) -> dict[str, Any]:
        motion = line["motion"]
        started = time.perf_counter()
        if Path(motion).is_file():  # an earlier attempt finished it (the file is only ever complete)
            return {"motion": motion, "model_seconds": 0.0, "model_node": _node()["node"]}
        try:
            self.client.start()
        except WorkerError as err:  # e.g. no torch in --worker-python: every line says so in one line
            return {"error": " ".join(str(err).split())}
        _record_attempt(line, "model", worker_pid=(self.client.hello or {}).get("pid"))
        with StagedOutputs([motion]) as staged:
            try:
                rid = self.client.submit("generate", out=staged.path(motion), **line["fields"])
                event = self.client.wait(rid, timeout=line["timeout"])
            except WorkerError as err:
                if err.kind == "crash":  # the worker process died: this actor goes too; Ray restarts it and
                    os._exit(75)  # retries the line (max_task_retries), then reports it failed
                return {"error": " ".join(str(err).split())}
            staged.commit()
        return {"motion": motion, "model_seconds": round(time.perf_counter() - started, 3),
                "generate_seconds": event.get("seconds"), "audio_reused": bool(event.get("audio_cached")),
                "worker_pid": (self.client.hello or {}).get("pid"), "model_node": _node()["node"]}


class WriterActor:
    """A Blender process: keys a line's motion onto a fresh FLAME head and writes its files as `batch` does."""

    def __init__(self) -> None:
        import bpy  # noqa: F401 - once per actor process: every line reuses it

        StagedOutputs.clean_on_enter = False  # shared folders: the driver removes what dead attempts left
        self.flames: dict[tuple[str, str | None], Any] = {}

    def info(self) -> dict[str, Any]:
        return {**_node(), "pid": os.getpid()}

    def _flame(self, args: argparse.Namespace) -> Any:
        key = (args.flame, args.flame_version)
        if key not in self.flames:
            self.flames[key] = load_flame(args.flame, version=args.flame_version, use_torch=False)
        return self.flames[key]

    def write(self, line: dict[str, Any], motion: str) -> dict[str, Any]:
        started = time.perf_counter()
        marker = _read_marker(line["marker"])
        if _marker_done(marker, line["key"]):  # an attempt killed after its marker: the line is done
            assert marker is not None
            return dict(marker["entry"])
        attempt = _record_attempt(line, "writer")
        args = argparse.Namespace(**{**line["args"], "motion": motion})
        hold = _test_hold(line["name"]) if attempt == 1 else 0.0
        try:
            prep = prepare_take(args, self._flame(args))
            result = write_take(prep, before_commit=(lambda: time.sleep(hold)) if hold else None)
        except Exception as err:  # the line's own failure (CliError, GenerateError, Blender's RuntimeError...)
            return {"status": "failed", "error": " ".join(str(err).split()) or type(err).__name__}
        entry = {**result, "blender_seconds": round(time.perf_counter() - started, 3), **_node()}
        outputs = [p for p in (args.out, result.get("glb"), result.get("fbx")) if p]
        write_json_atomic(line["marker"], {"key": line["key"], "outputs": outputs, "entry": entry})
        return entry


def _test_hold(name: str) -> float:
    spec = os.environ.get(HOLD_ENV, "")
    held, _, seconds = spec.partition("=")
    try:
        return float(seconds) if held == name else 0.0
    except ValueError:
        return 0.0


# ---------------------------------------------------------------- the driver


@dataclass
class _Line:
    row: Row
    entry: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # what the actors get (plain data)
    model: dict[str, Any] = field(default_factory=dict)  # the model actor's answer


def _line_args(args: argparse.Namespace, row: Row, out_dir: str) -> argparse.Namespace:
    """The batch's per-line arguments with the row's overrides; every path absolute (actors run elsewhere)."""
    o = row.overrides
    glb, fbx = o.get("glb", args.glb), o.get("fbx", args.fbx)
    style = o.get("style", args.style)
    if style and is_style_file(style):
        style = _absolute(style)
    shape = o.get("shape") or args.shape
    values = {**vars(args), "audio": row.audio, "motion": None, "take": None,
              "out": _output(out_dir, row.name, ".blend"),
              "glb": _output(out_dir, row.name, ".glb") if glb else None,
              "fbx": _output(out_dir, row.name, ".fbx") if fbx else None,
              "flame": _absolute(o.get("flame", args.flame)), "style": style,
              "shape": _absolute(shape) if shape else None,
              "mode": o.get("mode", args.mode), "fps": o.get("fps", args.fps),
              "start_frame": o.get("start_frame", args.start_frame),
              "checkpoint": _absolute(args.checkpoint) if args.checkpoint else None}
    return argparse.Namespace(**{k: v for k, v in values.items() if k not in _DRIVER_ONLY})


_DRIVER_ONLY = ("manifest", "out_dir", "ray", "model_workers", "blender_writers", "max_retries", "model_cpus",
                "command")
_KEY_OPTIONS = ("mode", "device", "style", "style_start", "fps", "start_frame", "flame_version", "jaw", "expression",
                "head", "smoothing", "simplify", "simplify_rotation", "nla")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _output(folder: str, name: str, suffix: str) -> str:
    return str(Path(folder) / (name + suffix))


def _checkpoint_files(checkpoint: str) -> dict[str, str]:
    """What the model's bits depend on: the weights file(s) and config.json."""
    given = Path(checkpoint)
    if given.is_file():
        folder, weights = given.parent, [given]
    else:
        folder = given
        weights = sorted(p for p in given.iterdir() if p.suffix in paths.WEIGHTS_SUFFIXES and p.is_file())
    files = {f"checkpoint:{w.name}": str(w) for w in weights}
    files["checkpoint:config"] = str(folder / paths.CONFIG_NAME)
    return files


def _prepare(line: _Line, args: argparse.Namespace, out_dir: str, work: str, flames: dict[Any, Any],
             hashes: dict[str, str]) -> None:
    """Check the line as `batch` would (one line on failure) and fill its actor spec and input key."""
    from ..scene.job import style_field  # the same worker fields as the batch's GenerateJob

    row = line.row
    line_args = _line_args(args, row, out_dir)
    flame_key = (line_args.flame, line_args.flame_version)
    if flame_key not in flames:
        try:
            flames[flame_key] = load_flame(line_args.flame, version=line_args.flame_version, use_torch=False)
        except (FlameFileError, OSError, ValueError) as err:
            flames[flame_key] = err
    flame = flames[flame_key]
    if isinstance(flame, Exception):
        raise flame
    prep = prepare_take(line_args, flame)
    req = prep.request
    style, style_start = style_field(req, "", None)
    fields = {"audio": _absolute(req.audio), "checkpoint": req.checkpoint, "device": req.device,
              "mode": req.mode, "style": style, "style_start": style_start, "postprocess": True}
    files = {"audio": fields["audio"], "flame": line_args.flame, "shape": line_args.shape, "style": style,
             **_checkpoint_files(req.checkpoint)}
    options = {k: getattr(line_args, k) for k in _KEY_OPTIONS}
    options.update(format=MARKER_FORMAT, audio=fields["audio"], glb=bool(line_args.glb), fbx=bool(line_args.fbx))
    key = line_key(options, files, hashes)
    # the motion depends on the model's inputs only: new scene options (fps, exports, controls) reuse it
    model_files = {role: path for role, path in files.items() if role in ("audio", "style") or role.startswith(
        "checkpoint:")}
    model_key = line_key({"format": MARKER_FORMAT, **{k: v for k, v in fields.items() if k not in ("audio", "style")}},
                         model_files, hashes)
    line.spec = {"name": row.name, "key": key, "args": vars(line_args), "fields": fields,
                 "timeout": args.timeout, "worker_python": req.worker_python,
                 "motion": str(Path(work, "motion", f"{row.name}.{model_key[:16]}.npz")),
                 "marker": str(Path(work, "done", f"{row.name}.json")),
                 "attempts": str(Path(work, "attempts", f"{row.name}.jsonl"))}
    line.entry.update(audio=fields["audio"], blend=line_args.out)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _check_invocation(args: argparse.Namespace) -> str:
    out_dir = _absolute(args.out_dir)
    if not Path(out_dir).is_dir():
        raise CliError(f"--out-dir does not exist: {out_dir}")
    check_writable_folder(out_dir, "--out-dir")
    check_fps(args.fps)
    for option in ("model_workers", "blender_writers", "model_cpus"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise CliError(f"--{option.replace('_', '-')} must be 1 or more, got {value}")
    if args.max_retries < 0:
        raise CliError(f"--max-retries must be 0 or more, got {args.max_retries}")
    return out_dir


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CliError(RAY_MISSING) from None
    return ray


class _Progress:
    """Lines done, failed, skipped; lines per minute and ETA over the lines the cluster worked on (stderr)."""

    def __init__(self, total: int):
        self.total, self.ok, self.failed, self.skipped = total, 0, 0, 0
        self.started = time.monotonic()
        self.before = 0  # lines finished before the cluster started (bad rows, skipped): not in the rate
        self.shown = 0.0

    def start(self) -> None:
        self.started, self.before = time.monotonic(), self.ok + self.failed + self.skipped

    def count(self, status: str, show: bool = True) -> None:
        if status == "ok":
            self.ok += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1
        now = time.monotonic()
        finished = self.ok + self.failed + self.skipped
        if not show or (now - self.shown < PROGRESS_EVERY_S and finished < self.total):
            return
        self.shown = now
        rate = (finished - self.before) / max(now - self.started, 1e-9) * 60.0
        left = int((self.total - finished) / rate * 60.0) if rate > 0 else None
        eta = "?" if left is None else f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        print(f"flametalk: farm: {finished}/{self.total} lines ({self.ok} ok, {self.failed} failed, "
              f"{self.skipped} skipped), {rate:.1f} lines/min, ETA {eta}", file=sys.stderr, flush=True)


def _start_ray(ray: Any, args: argparse.Namespace, cpus_wanted: int) -> None:
    """Connect to `--ray` (auto or an address) or start a local instance (ray.shutdown() stops it again)."""
    pythonpath = [str(Path(__file__).resolve().parents[2])]  # the folder holding blender_addon
    pythonpath += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath))}
    env.update({k: v for k, v in os.environ.items() if k.startswith("FLAMETALK_")})
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                               "logging_level": logging.ERROR, "include_dashboard": False}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.ray:
            options.pop("include_dashboard")
            ray.init(address=args.ray, **options)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, cpus_wanted), object_store_memory=100 * 1024 * 1024,
                     **options)
    except Exception as err:  # ConnectionError, a bad address, a version mismatch
        where = f"the Ray cluster at {args.ray}" if args.ray else "a local Ray instance"
        raise CliError(f"cannot start or reach {where}: {_one_line(err)}") from None
    finally:
        for sig, handler in handlers.items():  # Ray sets its own: ours stop the farm cleanly
            signal.signal(sig, handler)


def _start_actors(ray: Any, args: argparse.Namespace, python: str, need_model: bool) -> tuple[list[Any], list[Any]]:
    """Model actors (none when every motion is already computed) and `--blender-writers` writers per node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise CliError("the Ray cluster has no live node with CPUs for the Blender writers")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    model_workers = args.model_workers or (gpus or len(nodes))
    wanted = (0 if gpus or not need_model else model_workers * args.model_cpus) + args.blender_writers * len(nodes)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if wanted > cpus:  # the actors would wait for resources forever
        raise CliError(f"the farm asks for {wanted} CPUs (model workers x --model-cpus + --blender-writers per node) "
                       f"but the Ray cluster has {cpus}: lower --model-workers, --model-cpus or --blender-writers")
    retry = {"max_restarts": -1, "max_task_retries": args.max_retries}  # the actor always comes back; a line
    model_cls = ray.remote(ModelActor).options(  # is tried 1 + max_retries times
        num_cpus=args.model_cpus, num_gpus=1 if gpus else 0, scheduling_strategy="SPREAD", **retry)
    models = [model_cls.remote(python) for _ in range(model_workers if need_model else 0)]
    writers = []
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=True)  # elsewhere if it is lost
        writer_cls = ray.remote(WriterActor).options(num_cpus=1, scheduling_strategy=strategy, **retry)
        writers += [writer_cls.remote() for _ in range(args.blender_writers)]
    return models, writers


def _attempts(spec: dict[str, Any]) -> int:
    records = _read_attempts(spec["attempts"])
    return max([sum(1 for r in records if r.get("role") == role) for role in ("model", "writer")] + [0])


def _run_lines(ray: Any, lines: list[_Line], args: argparse.Namespace, progress: _Progress) -> None:
    """Model, then writer, for every line; a few lines per actor at a time (the rest wait in the driver, so an
    actor that dies takes no queue of lines with it)."""
    python = lines[0].spec["worker_python"]
    to_model = deque(ln for ln in lines if not Path(ln.spec["motion"]).is_file())
    to_write = deque(ln for ln in lines if Path(ln.spec["motion"]).is_file())
    models, writers = _start_actors(ray, args, python, bool(to_model))
    load = {id(a): 0 for a in models + writers}
    for ln in to_write:
        ln.model = {"motion": ln.spec["motion"], "model_seconds": 0.0}
    flight: dict[Any, tuple[str, _Line, Any]] = {}

    def least(actors: list[Any], limit: int) -> Any:
        actor = min(actors, key=lambda a: load[id(a)])
        return actor if load[id(actor)] < limit else None

    def finish(ln: _Line, status: str, **fields: Any) -> None:
        ln.entry.update(fields, status=status, attempts=_attempts(ln.spec))
        if status == "failed":
            print(f"flametalk: error: {ln.row.name}: {ln.entry['error']}", file=sys.stderr, flush=True)
        progress.count(status)

    while to_model or to_write or flight:
        while to_model and (actor := least(models, MODEL_IN_FLIGHT)) is not None:
            ln = to_model.popleft()
            flight[actor.generate.remote(ln.spec)] = ("model", ln, actor)
            load[id(actor)] += 1
        while to_write and (actor := least(writers, WRITER_IN_FLIGHT)) is not None:
            ln = to_write.popleft()
            flight[actor.write.remote(ln.spec, ln.model["motion"])] = ("writer", ln, actor)
            load[id(actor)] += 1
        ready, _ = ray.wait(list(flight), num_returns=1, timeout=0.5)
        for ref in ready:
            role, ln, actor = flight.pop(ref)
            load[id(actor)] -= 1
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # died on every try
                finish(ln, "failed", error=f"the {role} process died {args.max_retries + 1} times on this line "
                                           f"({_one_line(err)[:200]})")
                continue
            except ray.exceptions.RayError as err:
                finish(ln, "failed", error=_one_line(getattr(err, "cause", None) or err))
                continue
            if answer.get("error"):
                finish(ln, "failed", error=answer["error"])
            elif role == "model":
                ln.model = answer
                to_write.append(ln)
            else:
                model = {k: v for k, v in ln.model.items() if k != "motion"}
                seconds = round(model.get("model_seconds", 0.0) + answer.get("blender_seconds", 0.0), 3)
                finish(ln, "ok", **model, **answer, motion=ln.spec["motion"], seconds=seconds)


def run_farm(args: argparse.Namespace) -> int:
    """Every manifest row through the cluster; farm_report.json in --out-dir. 0 all ok/skipped, 1 some failed."""
    out_dir = _check_invocation(args)
    ray = _import_ray()
    try:
        rows = read_manifest(args.manifest)
    except ManifestError as err:
        raise CliError(str(err)) from None
    args.worker_python = args.worker_python or automatic_worker_python() or sys.executable
    load_flame(args.flame, version=args.flame_version, use_torch=False)  # a bad head fails the farm at once
    work = str(Path(out_dir, WORK_NAME))
    for sub in ("motion", "done", "attempts"):
        Path(work, sub).mkdir(parents=True, exist_ok=True)
        clean_leftovers(str(Path(work, sub)))
    clean_leftovers(out_dir)  # temporaries of a killed run
    lines = [_Line(row) for row in rows]
    progress = _Progress(len(lines))
    flames: dict[Any, Any] = {}
    hashes: dict[str, str] = {}
    todo: list[_Line] = []
    for ln in lines:
        ln.entry.update(name=ln.row.name, row=ln.row.number)
        if ln.row.error:
            ln.entry.update(audio=ln.row.audio or None, status="failed", error=ln.row.error, attempts=0)
            print(f"flametalk: error: {ln.row.error}", file=sys.stderr)
            progress.count("failed", show=False)
            continue
        try:
            _prepare(ln, args, out_dir, work, flames, hashes)
        except Interrupted:
            raise
        except Exception as err:  # the line's own input problem: the others go on
            ln.entry.update(audio=ln.row.audio, status="failed", error=_one_line(err), attempts=0)
            print(f"flametalk: error: {ln.row.name}: {ln.entry['error']}", file=sys.stderr)
            progress.count("failed", show=False)
            continue
        marker = _read_marker(ln.spec["marker"])
        if _marker_done(marker, ln.spec["key"]):
            assert marker is not None
            ln.entry.update({**marker["entry"], "motion": ln.spec["motion"]}, status="skipped", attempts=0)
            progress.count("skipped", show=False)
            continue
        Path(ln.spec["attempts"]).unlink(missing_ok=True)  # this run's attempts only
        _drop_stale_motion(ln.row.name, ln.spec["motion"])
        todo.append(ln)
    stopped = False
    try:
        if todo:
            cpus = (args.model_workers or 1) * args.model_cpus + args.blender_writers
            _start_ray(ray, args, cpus)
            progress.start()
            _run_lines(ray, todo, args, progress)
    except KeyboardInterrupt:  # Interrupted, or Ray's own KeyboardInterrupt for our signal inside ray.wait
        stopped = True
    finally:
        with hold_interrupts():
            if ray.is_initialized():
                ray.shutdown()  # our actors go with the job (a line in progress is discarded)
            _clean_after(out_dir, work)
    with hold_interrupts():
        entries = [ln.entry for ln in lines if ln.entry.get("status")]
        failed = sum(1 for e in entries if e["status"] == "failed")
        summary: dict[str, Any] = {"lines": entries, "ok": sum(1 for e in entries if e["status"] == "ok"),
                                   "failed": failed, "skipped": sum(1 for e in entries if e["status"] == "skipped")}
        if stopped or interrupted():
            summary["interrupted"] = True
            summary["not_written"] = [ln.row.name for ln in lines if not ln.entry.get("status")]
        write_json_atomic(str(Path(out_dir, REPORT_NAME)), summary)
    if stopped or interrupted():
        print(f"flametalk: interrupted: {len(entries) - failed} of {len(lines)} lines done in {out_dir} "
              f"({REPORT_NAME} lists them); rerun the same command to finish the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"flametalk: farm done: {summary['ok']} written, {summary['skipped']} skipped, {failed} failed of "
          f"{len(lines)} lines in {out_dir}")
    return 1 if failed else 0


def _drop_stale_motion(name: str, current: str) -> None:
    """Remove the line's motion files computed for other inputs (`<name>.<16 hex>.npz`)."""
    for path in Path(current).parent.glob(f"{name}.*.npz"):
        digest = path.name[len(name) + 1:-len(".npz")]
        if str(path) != current and len(digest) == 16 and all(c in "0123456789abcdef" for c in digest):
            path.unlink(missing_ok=True)


def _clean_after(out_dir: str, work: str) -> None:
    """Remove what dead attempts left (their processes end once Ray has shut down or the job has ended: give
    them a moment)."""
    deadline = time.monotonic() + 3.0
    while True:
        for folder in (Path(out_dir), Path(work, "motion"), Path(work, "done")):
            clean_leftovers(str(folder))
        left = [p for f in (Path(out_dir), Path(work, "motion")) for p in f.iterdir() if ".flametalk-tmp-" in p.name]
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def add_farm_parser(commands: Any, add_take_options: Any) -> None:
    farm = commands.add_parser("farm", help="a manifest of lines on a Ray cluster: a .blend per line, resumable")
    farm.add_argument("manifest", metavar="MANIFEST", help="CSV (header row) or JSON Lines: audio, name, overrides")
    farm.add_argument("--out-dir", required=True, help="folder every node sees: <name>.blend (+ .glb / .fbx)")
    farm.add_argument("--ray", metavar="auto|ADDRESS", help="join a running cluster (default: a local Ray instance)")
    farm.add_argument("--model-workers", type=int, metavar="N",
                      help="model processes in the cluster (default: one per GPU, else one per node)")
    farm.add_argument("--model-cpus", type=int, default=1, metavar="N",
                      help="CPU threads (Ray CPUs) of each model process without a GPU (default 1)")
    farm.add_argument("--blender-writers", type=int, default=1, metavar="N",
                      help="Blender writer processes per node (default 1)")
    farm.add_argument("--max-retries", type=int, default=2, metavar="N",
                      help="retries of a line whose process died (default 2), then it is reported failed")
    farm.add_argument("--glb", action="store_true", help="also export <name>.glb (a `glb` column overrides)")
    farm.add_argument("--fbx", action="store_true", help="also export <name>.fbx (a `fbx` column overrides)")
    add_take_options(farm)
