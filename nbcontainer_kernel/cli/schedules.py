"""`nbcontainer schedule create | list | describe | delete | run-now`: notebook runs on
Batch on a schedule (EventBridge Scheduler) or when an object lands under an S3 prefix
(an EventBridge rule). The library is backends.schedules; runs they start come into
the ledger with `nbcontainer runs --schedule NAME`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.errors import InvalidOption

if TYPE_CHECKING:
    from ..backends.schedules import Schedules

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_commands"]


def _schedules(overrides: dict[str, Any] | None = None) -> Schedules:
    from ..backends.registry import get_backend
    from ..backends.schedules import Schedules

    backend = get_backend("batch")
    settings = backend.settings(overrides or {})
    backend.check(settings)
    return Schedules(backend, settings)  # type: ignore[arg-type]


def _pushed_image(target: str, schedules: Schedules, args: argparse.Namespace) -> tuple[str, str]:
    """(the image in the run registry, by digest; the notebook it runs, if built here)."""
    from ..backends.base import Hooks
    from ..images.runs import remove_run_image
    from ..remote.notebook_runs import check_names, declared_of
    from ..remote.notebooks import containerize

    is_notebook = target.endswith(".ipynb") or Path(target).is_file()
    declared = declared_of([target] if is_notebook else None, None if is_notebook else target)
    check_names(declared, [n for n, _ in args.param or []], "-p")
    if args.on_s3:
        check_names(declared, ["input_bucket", "input_key"], "--on-s3 (its parameters)")
    built = None
    if is_notebook:
        print(f"==> build {target}", file=sys.stderr, flush=True)
        built = containerize(target, base=args.base, requirements=args.requirements)
        local = built.tag
    else:
        local = target
    try:
        print(f"==> push {local}", file=sys.stderr, flush=True)
        pushed = schedules.backend.push(local, schedules.settings, Hooks(), f"sched-{args.name}")
    finally:
        if built is not None:
            remove_run_image(built.tag)
    return pushed, str(Path(target).resolve()) if is_notebook else ""


def cmd_create(args: argparse.Namespace) -> int:
    from ..backends.schedules import ScheduleRequest, check_expression, check_schedule_name
    from ..remote.notebook_runs import parse_settings, parse_value

    check_schedule_name(args.name)
    if not args.on_s3:
        check_expression(args.cron, args.rate)  # refused before anything is built or pushed
    elif args.cron or args.rate:
        raise InvalidOption("--on-s3", args.on_s3, "a trigger has no --cron or --rate")
    if args.backend != "batch":
        raise InvalidOption("--backend", args.backend, "schedules and triggers run on batch")
    schedules = _schedules(parse_settings(args.set))
    image, notebook = _pushed_image(args.target, schedules, args)
    doc = schedules.create(
        ScheduleRequest(
            name=args.name,
            image=image,
            params={n: parse_value(v) for n, v in args.param or []},
            cron=args.cron,
            rate=args.rate,
            on_s3=args.on_s3,
            cpus=args.cpus,
            memory=args.memory,
            gpus=args.gpus,
            timeout=args.timeout,
            notebook=notebook or None,
        )
    )
    _show(doc, args.json)
    return 0


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=1, default=str))
        return
    when = doc["when"]
    if isinstance(when, dict):
        detail = when.get("detail", {})
        bucket = detail.get("bucket", {}).get("name", [""])[0]
        prefix = detail.get("object", {}).get("key", [{}])[0].get("prefix", "")
        when = f"objects created under s3://{bucket}/{prefix}"
    print(f"{doc['name']} ({doc['kind']}): {when}, {doc.get('state')}")
    print(f"  image: {doc.get('image')} ({doc.get('image_status')})")
    if doc.get("params"):
        print(f"  parameters: {json.dumps(doc['params'])}")
    if doc.get("notebook"):
        print(f"  notebook: {doc['notebook']}")


def cmd_list(args: argparse.Namespace) -> int:
    found = _schedules().all()
    if args.json:
        print(json.dumps(found, indent=1))
    elif not found:
        print("no schedules or triggers")
    for s in [] if args.json else found:
        print(f"{s['name']:<24} {s['kind']:<9} {s['state']:<9} {s['when']}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    _show(_schedules().describe(args.name), args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _schedules().delete(args.name)
    print(f"deleted {args.name} (its runs stay in the ledger and in S3)")
    return 0


def cmd_run_now(args: argparse.Namespace) -> int:
    job = _schedules().run_now(args.name, args.bucket, args.key)
    print(f"submitted {job}; bring it in: nbcontainer runs --schedule {args.name}")
    return 0


def add_commands(sub: _Commands) -> None:
    sc = sub.add_parser("schedule", help="notebook runs on a schedule or when S3 objects land")
    cmds = sc.add_subparsers(dest="sub", required=True)
    c = cmds.add_parser(
        "create",
        help="a schedule (--cron/--rate) or an S3 trigger (--on-s3) of a notebook or image",
    )
    c.add_argument("name")
    c.add_argument("target", metavar="IMAGE|NOTEBOOK")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="EventBridge cron, e.g. 'cron(0 6 * * ? *)'")
    when.add_argument("--rate", help="e.g. '1 day', '15 minutes'")
    when.add_argument(
        "--on-s3",
        metavar="S3_URI",
        help="run when an object is created under s3://bucket/prefix/ (the notebook gets "
        "input_bucket and input_key)",
    )
    c.add_argument("--backend", default="batch", help="batch (the only one schedules use)")
    c.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter"
    )
    c.add_argument("--set", action="append", metavar="SETTING=VALUE", help="a Batch setting")
    c.add_argument("--cpus", type=float)
    c.add_argument("--memory")
    c.add_argument("--gpus")
    c.add_argument("--timeout", type=float)
    c.add_argument("--base", help="base image when building a notebook")
    c.add_argument("--requirements", "-r", help="requirements file when building a notebook")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_create)
    ls = cmds.add_parser("list", help="schedules and triggers")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    d = cmds.add_parser("describe", help="what a schedule runs, and whether its image exists")
    d.add_argument("name")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_describe)
    rm = cmds.add_parser("delete", help="delete a schedule or trigger (its runs stay)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_delete)
    now = cmds.add_parser("run-now", help="submit what the schedule submits, now")
    now.add_argument("name")
    now.add_argument("--bucket", help="a trigger's input_bucket")
    now.add_argument("--key", help="a trigger's input_key")
    now.set_defaults(func=cmd_run_now)
