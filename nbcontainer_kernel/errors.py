"""Errors raised by nbcontainer-kernel.

Every error the library raises derives from :class:`NbcontainerError`, so a
caller can catch one type. Subclasses carry the fields a caller needs to act
(the image name, the option at fault, the container's last log lines) and
their message always says what happened and what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NbcontainerError",
    "DaemonNotAvailable",
    "EngineError",
    "ImageNotFound",
    "ImageNotUsable",
    "ImageBuildError",
    "WheelResolutionError",
    "InvalidOption",
    "KernelSpecError",
    "KernelDied",
    "RemoteExecutionError",
    "RunTimeout",
    "SerializationError",
    "UntrustedResults",
    "UnsafeArchive",
    "UnknownBackend",
]


class NbcontainerError(Exception):
    """Base of every error raised by nbcontainer-kernel."""


class DaemonNotAvailable(NbcontainerError):
    """No Docker daemon answered at the configured address."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(
            f"No Docker daemon answers at {address} ({reason}). "
            "Start one (on Debian: `scripts/docker-engine.sh`, or `sudo systemctl start docker`) "
            "or point DOCKER_HOST at a daemon that runs."
        )


class EngineError(NbcontainerError):
    """The Docker daemon refused or failed a request."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"Docker could not {operation}: {reason}")


class ImageNotFound(NbcontainerError):
    """An image is neither present locally nor pullable."""

    def __init__(self, image: str, reason: str = "") -> None:
        self.image = image
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"Image {image!r} is not present on this Docker engine and could not be "
            f"pulled{detail}. "
            f"Build a kernel image with `nbcontainer image build --base BASE --tag {image}`, "
            "pull it with `docker pull`, or choose another image."
        )


class ImageNotUsable(NbcontainerError):
    """An image exists but cannot run what is asked of it (no Python, no ipykernel)."""

    def __init__(self, image: str, reason: str, hint: str) -> None:
        self.image = image
        self.reason = reason
        self.hint = hint
        super().__init__(f"Image {image!r} cannot be used: {reason}. {hint}")


class ImageBuildError(NbcontainerError):
    """`docker build` failed; carries the step and the build log's tail."""

    def __init__(self, tag: str, reason: str, log_tail: list[str] | None = None) -> None:
        self.tag = tag
        self.reason = reason
        self.log_tail = list(log_tail or [])
        tail = "\n".join(self.log_tail[-15:])
        super().__init__(
            f"Building image {tag!r} failed: {reason}"
            + (f"\n--- build log (tail) ---\n{tail}" if tail else "")
        )


class WheelResolutionError(NbcontainerError):
    """pip could not resolve the wheels an image needs for its platform."""

    def __init__(self, requirements: list[str], target: str, output: str) -> None:
        self.requirements = requirements
        self.target = target
        self.output = output
        super().__init__(
            f"Could not resolve wheels for {', '.join(requirements)} on {target}. "
            "Every package must be available as a wheel for the image's Python and platform; "
            "check the package names and that the package index (or PIP_FIND_LINKS) is reachable.\n"
            f"--- pip output (tail) ---\n{output[-2000:]}"
        )


class InvalidOption(NbcontainerError):
    """A container or kernelspec option has a value that cannot work."""

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"Invalid value for {option}: {value!r}: {reason}")


class KernelSpecError(NbcontainerError):
    """A kernelspec cannot be installed, found or removed."""


class KernelDied(NbcontainerError):
    """A kernel's container exited; carries the exit code, OOM flag and log tail."""

    def __init__(
        self, container: str, exit_code: int | None, oom_killed: bool, log_tail: list[str]
    ) -> None:
        self.container = container
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.log_tail = log_tail
        why = "OOMKilled: it exceeded its memory limit" if oom_killed else f"exit code {exit_code}"
        tail = "\n".join(log_tail)
        super().__init__(
            f"Kernel container {container} died ({why})."
            + (f"\n--- last log lines ---\n{tail}" if tail else "")
        )


class RemoteExecutionError(NbcontainerError):
    """A run failed where it ran; carries the reason, remote traceback, log tail and outputs."""

    def __init__(
        self,
        image: str,
        exit_code: int | None,
        reason: str,
        traceback: str,
        log_tail: list[str],
        output_dir: object,
    ) -> None:
        self.image = image
        self.exit_code = exit_code
        self.reason = reason
        self.traceback = traceback
        self.log_tail = list(log_tail)
        self.output_dir = output_dir
        tail = "\n".join(self.log_tail)
        super().__init__(
            f"The run of {image} failed ({reason}); its outputs are kept in {output_dir}."
            + (f"\n--- remote traceback ---\n{traceback.rstrip()}" if traceback else "")
            + (f"\n--- last log lines ---\n{tail}" if tail and not traceback else "")
        )


class RunTimeout(NbcontainerError):
    """A run exceeded its timeout and was stopped."""


class SerializationError(NbcontainerError):
    """A value cannot be serialized (or read back); the message is the reason shown to the user."""


class UntrustedResults(NbcontainerError):
    """A run's outputs failed verification; nothing from them was loaded."""

    def __init__(self, run_dir: str, file: str, reason: str) -> None:
        self.run_dir = run_dir
        self.file = file
        self.reason = reason
        super().__init__(
            f"The outputs in {run_dir} were refused: {file}: {reason}. Nothing was loaded from "
            "them. "
            "Data values (DataFrames, JSON) can still be read with `%remote_result RUN "
            "--unverified` "
            "(pickles never); for a run made before signed results, `%config RemoteRun.trust = "
            "'always'`."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_dir, self.file, self.reason))


class UnsafeArchive(NbcontainerError):
    """An archive from a container or a store holds what must not be unpacked."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(
            f"Refused to unpack {member!r}: {reason}. Nothing outside the run's directory "
            "was written."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.member, self.reason))


class UnknownBackend(NbcontainerError, LookupError):
    """No backend is registered (or installed as an entry point) under a name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, list(known)
        super().__init__(
            f"No backend named {name!r}; available: {', '.join(self.known) or 'none'}."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.known))
