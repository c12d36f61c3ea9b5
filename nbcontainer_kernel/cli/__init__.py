"""`nbcontainer` (also `jupyter nbcontainer`): images, kernelspecs, pushes and the orphan sweep.

The commands only parse arguments and call the library; every library error
is printed as one clear message with exit status 1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from ..runtime.errors import InvalidOption, NbcontainerError
from . import hosts, schedules
from .runs import add_commands

if TYPE_CHECKING:
    from ..docker.engine import Engine

    # The `nbcontainer COMMAND` parsers.
    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["main"]


class _BuildPrinter:
    """Live build output: a step bar for `Step N/M` lines, the rest indented."""

    _STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.width = min(30, max(10, shutil.get_terminal_size((80, 20)).columns - 60))

    def __call__(self, line: str) -> None:
        m = self._STEP.match(line)
        if m:
            n, total, what = int(m.group(1)), int(m.group(2)), m.group(3)
            filled = int(self.width * n / total)
            bar = "#" * filled + "-" * (self.width - filled)
            print(f"[{bar}] step {n}/{total}: {what[:70]}", file=self.stream, flush=True)
        else:
            print(f"    {line}", file=self.stream, flush=True)


def _engine() -> Engine:
    from ..docker.engine import Engine

    return Engine.connect()


# ------------------------------------------------------------------ image
def cmd_image_build(args: argparse.Namespace) -> int:
    from ..images.kernel import build_kernel_image

    reqs = list(args.pip or [])
    if args.requirements:
        with open(args.requirements) as fh:
            reqs += [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    result = build_kernel_image(
        _engine(),
        args.base,
        args.tag,
        python=args.python,
        requirements=reqs,
        force=args.force,
        pull_policy=args.pull,
        on_line=_BuildPrinter(),
    )
    verb = "built" if result.built else "up to date:"
    print(f"{verb} {result.tag} ({result.image_id[7:19]}, {result.target.describe()})")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from ..docker import labels
    from ..images.kernel import list_kernel_images

    rows = []
    for img in list_kernel_images(_engine()):
        img_labels = img.labels or {}
        for tag in img.tags or ["<none>"]:
            rows.append(
                (
                    tag,
                    img.short_id[7:],
                    img_labels.get(labels.BASE, "?"),
                    img_labels.get(labels.PYTHON, "?"),
                    img_labels.get(labels.IPYKERNEL, "?"),
                    img_labels.get("org.opencontainers.image.created", "?"),
                    f"{img.attrs.get('Size', 0) / 1e6:.0f} MB",
                )
            )
    _table(("TAG", "ID", "BASE", "PYTHON", "IPYKERNEL", "CREATED", "SIZE"), rows)
    return 0


# ------------------------------------------------------------- kernelspec
def _kv(values: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        if "=" not in item:
            raise InvalidOption(what, item, "expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    from ..docker.options import DEFAULT_ENV_ALLOWLIST, ContainerOptions, effective_docker_access
    from ..kernel import kernelspec

    single_user = not (args.sys_prefix or args.prefix)
    options: dict[str, Any] = {}
    for name in ContainerOptions.option_names():
        value = getattr(args, f"opt_{name}", None)
        if name != "image" and value is not None:
            options[name] = value
    if "env_allowlist" in options:  # --env-allow adds to the allow-list, it does not replace it
        options["env_allowlist"] = DEFAULT_ENV_ALLOWLIST + options["env_allowlist"]
    if "docker_socket" not in options:  # the old flag still means raw (true) or none (false)
        # A remote host's kernels get no Docker unless asked (the guard does not reach there).
        options.setdefault("docker_access", "none" if options.get("docker_host") else "guarded")
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = kernelspec.install(
        args.opt_image,
        args.name,
        args.display_name,
        options=options,
        env=_kv(args.env, "env"),
        user=single_user,
        prefix=prefix,
        check_image=not args.no_check_image,
    )
    print(f"installed kernelspec {args.name} in {path}")
    access = effective_docker_access(
        options.get("docker_access", "guarded"), options.get("docker_socket")
    )
    if access == "raw":
        print(
            "warning: the kernel gets the Docker daemon's own socket, which is root on this "
            "host; `--docker-access guarded` gives it what %%remote_run needs and no more",
            file=sys.stderr,
        )
    return 0


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per provisioner option, made from its trait: type, choices and help.

    A trait may name its flag (metadata ``flag``); booleans get ``--x/--no-x`` and
    lists are repeatable. Nothing is written twice: the help is the trait's.
    """
    from traitlets import Bool, CaselessStrEnum, Enum, Float, Int, List

    from ..docker.options import ContainerOptions

    for name, trait in sorted(ContainerOptions.class_traits(config=True).items()):
        flag = trait.metadata.get("flag", "--" + name.replace("_", "-"))
        # argparse formats help with %: a trait's help says %pip and %%remote_run as written.
        help_text = trait.help.replace("%", "%%")
        kw: dict[str, Any] = {"dest": f"opt_{name}", "help": help_text, "default": None}
        if isinstance(trait, Bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(trait, List):
            kw.update(action="append", metavar=trait.metadata.get("metavar", "VALUE"))
        elif isinstance(trait, (CaselessStrEnum, Enum)):
            kw["choices"] = sorted(trait.values or ())
        elif isinstance(trait, Float):
            kw.update(type=float, metavar="N")
        elif isinstance(trait, Int):
            kw.update(type=int, metavar="N")
        else:
            kw["metavar"] = name.upper()
        if name == "image":
            kw["required"] = True
        parser.add_argument(flag, **kw)


def cmd_kernelspec_list(args: argparse.Namespace) -> int:
    from ..kernel import kernelspec

    _table(
        ("NAME", "DISPLAY NAME", "IMAGE", "DIRECTORY"),
        [(s.name, s.display_name, s.image, s.resource_dir) for s in kernelspec.list_specs()],
    )
    return 0


def cmd_kernelspec_remove(args: argparse.Namespace) -> int:
    from ..kernel import kernelspec

    for name in args.names:
        print(f"removed {kernelspec.remove(name)}")
    return 0


# ------------------------------------------------------- headless notebooks
def cmd_containerize(args: argparse.Namespace) -> int:
    from ..remote.notebooks import containerize, pipeline_notebooks

    notebooks = list(args.notebooks) or [str(p) for p in pipeline_notebooks()]
    if not notebooks:
        raise InvalidOption(
            "notebook",
            "",
            "name a notebook (several make a pipeline), or list them in "
            "pyproject.toml's [tool.nbcontainer.pipeline] notebooks",
        )
    printer = _BuildPrinter()
    what = " then ".join(notebooks)
    print(f"==> snapshot + build: {what} -> {args.tag}", file=sys.stderr, flush=True)
    image = containerize(
        notebooks,
        args.tag,
        base=args.base,
        requirements=args.requirements,
        engine=_engine(),
        on_line=printer,
    )
    deps = "reused" if image.deps_reused else "built"
    print(f"built {image.tag} ({image.image_id[7:19]}); dependency layer {image.deps_image} {deps}")
    print(
        f"run it: nbcontainer run {image.tag} -p NAME VALUE [--backend batch]   or   "
        f"docker run --rm {image.tag} -p NAME VALUE"
    )
    return 0


# ------------------------------------------------------------------- push
def _batch_setting(name: str) -> Any:
    """A Batch setting as a notebook would see it (env var, then [tool.nbcontainer])."""
    from ..backends.batch import BatchBackend

    return BatchBackend().settings()[name]


def cmd_push(args: argparse.Namespace) -> int:
    from ..backends.push import parse_registry, push_image

    address = args.registry or _batch_setting("registry")
    if not address:
        raise InvalidOption(
            "--registry", None, "give --registry HOST[:PORT]/REPO or set NBCONTAINER_REGISTRY"
        )

    def show(progress: Any) -> None:
        done = progress.pushed + progress.existing
        width = 30
        filled = int(width * done / progress.total) if progress.total else 0
        print(f"[{'#' * filled}{'-' * (width - filled)}] {progress.line()}", file=sys.stderr)

    ref, progress = push_image(_engine(), args.image, parse_registry(address), show)
    print(ref)
    return 0


# --------------------------------------------------------------------- gc
def cmd_gc(args: argparse.Namespace) -> int:
    from ..docker.orphans import sweep
    from ..kernel.remote_host import sweep_records

    engine = _engine()
    if args.docker_host:
        from ..docker.hosts import connection_for

        engine = connection_for(args.docker_host, args.ssh_config).engine
    if not args.dry_run:
        for rec in sweep_records():  # the SSH connections of a server killed with SIGKILL
            print(f"ended the SSH connection of remote kernel {rec.kernel_id} (its server is gone)")
    orphans = sweep(engine, dry_run=args.dry_run, images=args.images)
    verb = "would remove" if args.dry_run else "removed"
    for o in orphans:
        print(f"{verb} {o.role} container {o.name} ({o.status}; owner {o.owner} is gone)")
    print(f"{verb} {len(orphans)} orphaned container(s)")
    if not args.dry_run:
        from ..guard import remove_stale

        for directory in remove_stale():  # a Docker guard's socket left by a server killed -9
            print(f"removed the Docker guard socket {directory} (its server is gone)")
    if args.aws:
        from ..backends.batch import deregister_old_definitions

        old = deregister_old_definitions(
            keep=args.keep, queue=_batch_setting("queue"), dry_run=args.dry_run
        )
        verb = "would deregister" if args.dry_run else "deregistered"
        for arn in old:
            print(f"{verb} {arn}")
        print(f"{verb} {len(old)} old Batch job definition revision(s)")
        _gc_run_keys(args.dry_run)
    return 0


def _gc_run_keys(dry_run: bool) -> None:
    """Run-key parameters left by a kernel killed before its Batch run ended."""
    from ..backends.aws import client
    from ..backends.run_keys import delete_ssm_key, stale_ssm_keys
    from ..remote.ledger import Ledger
    from ..runtime.errors import UnknownRun

    ledger = Ledger()

    def ended(run_id: str) -> bool:
        try:
            return ledger.get(run_id)["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")
        except UnknownRun:
            return True

    ssm = client("ssm")
    stale = stale_ssm_keys(ssm, ended)
    for name in stale:
        if not dry_run:
            delete_ssm_key(ssm, name)
        print(f"{'would delete' if dry_run else 'deleted'} the run key parameter {name}")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbcontainer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _image,
        _kernelspec,
        _containerize,
        add_commands,
        schedules.add_commands,
        _gc,
        _push,
        hosts.add_commands,
    ):
        add(sub)
    return p


def _image(sub: _Commands) -> None:
    image = sub.add_parser("image", help="kernel images").add_subparsers(dest="sub", required=True)
    b = image.add_parser("build", help="build a kernel image FROM any base with Python 3")
    b.add_argument(
        "--base", required=True, help="base image (a user's image, python:3.x-slim, a local one)"
    )
    b.add_argument("--tag", required=True, help="tag of the kernel image")
    b.add_argument(
        "--python", default="python3", help="the base's Python command (default: python3)"
    )
    b.add_argument(
        "--pip", action="append", metavar="REQ", help="an extra requirement (repeatable)"
    )
    b.add_argument("--requirements", "-r", metavar="FILE", help="a requirements file to add")
    b.add_argument(
        "--pull",
        default="missing",
        choices=["missing", "always", "never"],
        help="when to pull the base (default: missing)",
    )
    b.add_argument("--force", action="store_true", help="build even when the image is up to date")
    b.set_defaults(func=cmd_image_build)
    image.add_parser("list", help="list the kernel images nbcontainer built").set_defaults(
        func=cmd_image_list
    )


def _kernelspec(sub: _Commands) -> None:
    ks = sub.add_parser("kernelspec", help="kernelspecs").add_subparsers(dest="sub", required=True)
    i = ks.add_parser(
        "install",
        help="install a kernelspec that runs kernels in IMAGE",
        description="Every provisioner option has a flag (its help is the option's own); "
        "server-wide defaults go in jupyter_server_config.py as c.DockerProvisioner.NAME.",
    )
    i.add_argument("--name", required=True, help="kernelspec name (letters, digits, . _ -)")
    i.add_argument("--display-name", help="name shown in the launcher")
    add_option_flags(i)
    i.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="kernel env var (repeatable)"
    )
    where = i.add_mutually_exclusive_group()
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (shared)")
    where.add_argument("--prefix", help="install under this prefix (shared)")
    i.add_argument(
        "--no-check-image", action="store_true", help="do not require the image to exist now"
    )
    i.set_defaults(func=cmd_kernelspec_install)
    ks.add_parser("list", help="list nbcontainer kernelspecs").set_defaults(
        func=cmd_kernelspec_list
    )
    r = ks.add_parser("remove", help="remove nbcontainer kernelspecs")
    r.add_argument("names", nargs="+")
    r.set_defaults(func=cmd_kernelspec_remove)


def _containerize(sub: _Commands) -> None:
    c = sub.add_parser("containerize", help="build an image that runs a notebook with parameters")
    c.add_argument(
        "notebooks",
        nargs="*",
        metavar="NOTEBOOK",
        help="the notebook; several run in order as a pipeline (default: pyproject.toml's "
        "[tool.nbcontainer.pipeline] notebooks)",
    )
    c.add_argument("--tag", required=True)
    c.add_argument(
        "--base", help="base image (default: python:X.Y-slim, or NBCONTAINER_BASE_IMAGE)"
    )
    c.add_argument(
        "--requirements", "-r", help="requirements file (default: this environment's packages)"
    )
    c.set_defaults(func=cmd_containerize)


def _gc(sub: _Commands) -> None:
    g = sub.add_parser("gc", help="remove containers whose owning process is gone")
    g.add_argument("--dry-run", action="store_true", help="only list them")
    g.add_argument(
        "--images",
        action="store_true",
        help="also remove run images no container uses (dependency layers stay cached)",
    )
    g.add_argument(
        "--aws",
        action="store_true",
        help="also deregister old revisions of nbcontainer's Batch job definitions (those no "
        "queued or running job of BatchBackend.queue uses)",
    )
    g.add_argument(
        "--keep", type=int, default=1, help="newest revisions kept per job definition (--aws)"
    )
    g.add_argument(
        "--docker-host",
        metavar="URL",
        help="sweep a remote Docker host (a kernelspec's docker_host) instead of this machine",
    )
    g.add_argument("--ssh-config", help="with --docker-host: an OpenSSH client config")
    g.set_defaults(func=cmd_gc)


def _push(sub: _Commands) -> None:
    pu = sub.add_parser(
        "push",
        help="push an image to the registry by digest (as a remote run's PUSH phase does)",
    )
    pu.add_argument("image")
    pu.add_argument(
        "--registry", help="HOST[:PORT]/REPO (default: AWSBackend.registry, NBCONTAINER_REGISTRY)"
    )
    pu.set_defaults(func=cmd_push)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NbcontainerError as exc:
        print(f"nbcontainer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nbcontainer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
