"""CLI subcommands `train`, `evaluate` and `dataset validate` (registered by flametalk.commands.main).

Importing this module is cheap (argparse only): torch and the training code load when a command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..errors import FlameTalkError


def register_train(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    p = sub.add_parser("train", parents=list(parents), help="train stage 1 (autoencoder) or 2 (generator)",
                       description="Train from a JSON/TOML config (flametalk.train.config). Under torchrun, every "
                                   "process runs this command: torchrun --nproc_per_node N -m flametalk train CFG")
    p.add_argument("config", metavar="CONFIG", help="training config (.json or .toml)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if RUN_DIR/ckpt/last.pt exists")
    p.add_argument("--stop-at", metavar="STEP", type=int, default=None,
                   help="stop after this step (checkpoint written; rerun to continue)")
    p.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads per process")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import run_training, set_threads

    cfg = load_config(args.config, args.overrides)
    set_threads(args.threads)
    result = run_training(cfg, resume=args.resume, stop_at=args.stop_at)
    if result.export_dir is not None:  # rank 0 only
        last = result.history[-1] if result.history else {}
        summary = {"step": result.step, "export": str(result.export_dir), "run_dir": str(result.run_dir),
                   "loss": last.get("loss"), **result.val}
        print(json.dumps(summary))
    return 0


def register_evaluate(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    p = sub.add_parser("evaluate", parents=list(parents), help="LVE / FDD / MOD of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint folder (.pt + config.json)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder (see `dataset validate`)")
    p.add_argument("--flame", required=True, metavar="FILE", help="FLAME 2020 model (generic_model.pkl, .pt, .npz)")
    p.add_argument("--masks", required=True, metavar="FILE", help="FLAME_masks.pkl")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--split-file", default="split.json", help="split file inside DIR (default split.json)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="score the raw model output (default: the same smoothing as generate)")
    p.add_argument("--head-pose", action="store_true", help="keep head rotation when placing vertices")
    p.add_argument("--style-from-clip", action="store_true", help="use each clip's first 2 s as its style")
    p.add_argument("--json", metavar="FILE", dest="json_out", help="also write the full result (per clip) here")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..fast.devices import configure_torch_for_parity, resolve_device
    from .evaluate import evaluate, format_table, to_json, write_json

    configure_torch_for_parity()
    result = evaluate(args.checkpoint, args.data, args.flame, args.masks, split=args.split,
                      split_file=args.split_file, device=str(resolve_device(args.device)),
                      postprocess=args.postprocess, head_pose=args.head_pose, style_from_clip=args.style_from_clip)
    print(format_table(result))
    print(to_json({k: v for k, v in result.items() if k != "per_clip"}))
    if args.json_out:
        write_json(result, args.json_out)
    return 0


def register_dataset(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    d = sub.add_parser("dataset", parents=list(parents), help="check a training dataset folder")
    dsub = d.add_subparsers(dest="action", metavar="ACTION", parser_class=type(d))
    dsub.required = True
    v = dsub.add_parser("validate", parents=list(parents), help="report bad clips (lengths, NaN, dims, files)")
    v.add_argument("data", metavar="DIR")
    v.add_argument("--split-file", default="split.json")
    v.add_argument("--tolerance", type=int, default=2, help="frames of audio/motion length mismatch accepted")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .data import validate_dataset

    report = validate_dataset(args.data, args.split_file, args.tolerance)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        for name, problems in sorted(report.bad.items()):
            for problem in problems:
                print(f"BAD   {name}: {problem}")
        for warning in report.warnings:
            print(f"WARN  {warning}")
        splits = ", ".join(f"{k} {len(v)}" for k, v in report.splits.items())
        print(f"{len(report.clips)} clips: {len(report.good)} good, {len(report.bad)} bad (splits: {splits})")
    if report.bad:
        raise FlameTalkError(f"{len(report.bad)} of {len(report.clips)} clips are bad (listed above); fix or "
                             "remove them")
    return 0
