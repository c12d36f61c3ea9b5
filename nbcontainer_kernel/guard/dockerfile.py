"""What a guarded kernel's build may ask of the daemon's own network: nothing.

A build's RUN steps get network ``none`` from the guard, but the classic builder fetches
``ADD <url>`` itself, in dockerd's process, on the host's network (measured: a build with
``--network none`` fetched ``ADD http://127.0.0.1:…`` from the host's loopback), and
pulls a ``FROM`` or ``COPY --from`` image that is not on the host. So the guard reads the
Dockerfile from the build context and refuses those, and checks the ONBUILD triggers that
the base images would run in this build, which are Dockerfile lines too.

The reading follows the classic builder's: the ``escape`` parser directive, line
continuations, comments, JSON and shell forms, flags before arguments, ``ARG`` values
before the first ``FROM`` (and build arguments) substituted in ``FROM``. What it cannot
resolve (a variable in an ADD source or an image name that no ARG gives) is refused
rather than guessed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DockerfileRefused", "Instruction", "check_dockerfile", "parse"]

MAX_DOCKERFILE = 1 << 20


class DockerfileRefused(ValueError):
    """A Dockerfile the guard will not let the daemon build, and why."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    rest: str  # what follows the keyword, continuations joined
    line: int


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_ANY_URL = re.compile(r"[^\s\"'\[,]*(?:[a-zA-Z][a-zA-Z0-9+.-]*:/|git@)[^\s\"',\]]*", re.ASCII)


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, as the classic builder splits them."""
    lines = text.replace("\r\n", "\n").split("\n")
    escape = "\\"
    # Parser directives: only at the very top, before any other line.
    for raw in lines:
        found = _DIRECTIVE.match(raw.strip())
        if not found:
            break
        if found.group(1).lower() == "escape":
            if found.group(2) not in ("\\", "`"):
                raise DockerfileRefused(f"the escape directive is {found.group(2)!r}")
            escape = found.group(2)
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # a comment or a directive (in a continuation too, as the builder reads)
        if not pending:
            if not stripped:
                continue
            start = number
        body = raw.rstrip()
        if body.endswith(escape):
            pending.append(body[: -len(escape)])
            continue
        pending.append(body)
        joined = " ".join(p.strip() for p in pending).strip()
        pending = []
        if joined:
            out.append(_instruction(joined, start))
    if pending:
        joined = " ".join(p.strip() for p in pending).strip()
        if joined:
            out.append(_instruction(joined, start))
    return out


def _instruction(joined: str, line: int) -> Instruction:
    keyword, *rest = re.split(r"\s+", joined, maxsplit=1)
    return Instruction(keyword.upper(), rest[0].strip() if rest else "", line)


def _words(rest: str) -> tuple[dict[str, str], list[str]]:
    """An instruction's ``--flag=value`` flags and its arguments (JSON or shell form)."""
    flags: dict[str, str] = {}
    words = rest.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name.lower()] = value
    remainder = " ".join(words)
    if remainder.startswith("["):
        try:
            args = json.loads(remainder)
        except ValueError:
            args = None
        if isinstance(args, list) and all(isinstance(a, str) for a in args):
            return flags, args
    try:
        return flags, shlex.split(remainder, posix=True)
    except ValueError:
        return flags, remainder.split()


_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _substitute(word: str, values: dict[str, str | None], what: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = values.get(name)
        modifier, alternative = match.group(2), match.group(3) or ""
        if modifier == ":-":
            return value if value else alternative
        if modifier == ":+":
            return alternative if value else ""
        if value is None:
            raise DockerfileRefused(f"{what} uses ${name}, which no ARG or build argument sets")
        return value

    return _VAR.sub(one, word)


def check_dockerfile(
    text: str,
    build_args: dict[str, str],
    image_exists: Callable[[str], bool],
    triggers_of: Callable[[str], list[str]],
) -> None:
    """Refuse a Dockerfile that would make the daemon fetch anything: ``ADD`` of a URL, a
    ``FROM`` or ``COPY --from`` image not on the host, a base image whose ONBUILD
    triggers would; an ``ONBUILD`` that would, in a later build."""
    instructions = parse(text)
    global_args: dict[str, str | None] = {}
    stages: set[str] = set()
    stage_count = 0
    seen_from = False
    for ins in instructions:
        where = f"line {ins.line}: {ins.keyword}"
        if ins.keyword == "ARG" and not seen_from:
            for word in _words(ins.rest)[1]:
                name, eq, default = word.partition("=")
                global_args[name] = build_args.get(name, default if eq else None)
        elif ins.keyword == "FROM":
            seen_from = True
            flags, args = _words(ins.rest)
            if flags.get("platform"):
                raise DockerfileRefused(f"{where} asks for a platform: builds use the host's")
            if not args:
                raise DockerfileRefused(f"{where} names no image")
            image = _substitute(args[0], global_args, where)
            if image.lower() != "scratch" and image.lower() not in stages:
                _local_image(image, where, image_exists)
                for trigger in triggers_of(image):
                    _check_line(trigger, stages, image_exists, f"{where}: {image}'s ONBUILD")
            if len(args) >= 3 and args[1].lower() == "as":
                stages.add(args[2].lower())
            stages.add(str(stage_count))
            stage_count += 1
        else:
            _check_line(f"{ins.keyword} {ins.rest}", stages, image_exists, where)


def _check_line(
    line: str, stages: set[str], image_exists: Callable[[str], bool], where: str
) -> None:
    for ins in parse(line):
        flags, args = _words(ins.rest)
        if ins.keyword == "ONBUILD":
            _check_line(ins.rest, stages, image_exists, f"{where}: ONBUILD")
        elif ins.keyword == "ADD":
            # Any token that looks like a URL, quoted or not, JSON or shell form.
            fetched = _ANY_URL.search(ins.rest)
            if fetched:
                raise DockerfileRefused(
                    f"{where} fetches {fetched.group(0)[:80]}: the daemon would fetch it on "
                    "the host's network; fetch it in the kernel and send it in the context"
                )
            for source in args[:-1]:
                if "$" in source:
                    raise DockerfileRefused(
                        f"{where} has a variable in its source {source[:80]!r}, which the "
                        "guard cannot check before the daemon expands it"
                    )
        elif ins.keyword == "COPY":
            stage = flags.get("from")
            if stage is not None:
                if "$" in stage:
                    raise DockerfileRefused(f"{where} --from has a variable: {stage[:80]!r}")
                if stage.lower() not in stages:
                    _local_image(stage, f"{where} --from", image_exists)


def _local_image(image: str, where: str, image_exists: Callable[[str], bool]) -> None:
    if "$" in image or not image_exists(image):
        raise DockerfileRefused(
            f"{where} names {image[:120]}, which is not an image on this host: the daemon "
            "would pull it on the host's network (pull it on the host first)"
        )
