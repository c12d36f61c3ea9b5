"""Errors raised by nbcontainer-kernel: one model for all of them.

* Every error derives from :class:`NbcontainerError`, so a caller can catch one
  type, and each is also the matching built-in where there is one
  (``RunTimeout`` is a ``TimeoutError``, ``DaemonNotAvailable`` a
  ``ConnectionError``, ``InvalidOption`` a ``ValueError``, ...).
* Each carries the fields a caller needs to act (the image, the option at
  fault, the run id, the daemon's status code) and its message says what
  happened and what to do.
* Each survives a pickle round trip with its fields (``_fields`` names the
  constructor's arguments; other attributes travel as state), so errors cross
  processes and threads intact.
* In IPython each renders as one short block through ``_render_traceback_``:
  what failed, why and what to do, without the library's own frames. The full
  chain stays on the exception (``__cause__``).

Standard library only: the in-container runner imports this module.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NbcontainerError",
    "HostUnreachable",
    "TunnelLost",
    "UnknownResult",
    "DaemonNotAvailable",
    "EngineError",
    "ResourceNotFound",
    "AccessRefused",
    "Conflict",
    "PortInUse",
    "CommandNotFound",
    "ImageNotFound",
    "ImageNotUsable",
    "ImageBuildError",
    "WheelResolutionError",
    "PackageIndexUnreachable",
    "InvalidOption",
    "KernelSpecError",
    "KernelDied",
    "WaiterDied",
    "RemoteExecutionError",
    "RunTimeout",
    "RunCancelled",
    "SweepFailed",
    "SerializationError",
    "SourcesTooLarge",
    "WorkdirTooLarge",
    "UntrustedResults",
    "UnsafeArchive",
    "UnknownBackend",
    "UnknownRun",
    "LedgerError",
    "RegistryError",
    "CloudError",
    "MissingSetting",
]


class NbcontainerError(Exception):
    """Base of every error raised by nbcontainer-kernel."""

    #: The constructor's arguments, as attribute names: what a pickle rebuilds it from.
    _fields: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._fields:
            return (type(self), self.args, self.__dict__ or None)
        args = tuple(getattr(self, f) for f in self._fields)
        state = {k: v for k, v in self.__dict__.items() if k not in self._fields}
        return (type(self), args, state or None)

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message, no library frames."""
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


# ------------------------------------------------------------------ the daemon
class DaemonNotAvailable(NbcontainerError, ConnectionError):
    """No Docker daemon answered at the configured address."""

    _fields = ("address", "reason")

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(
            f"No Docker daemon answers at {address} ({reason}). "
            "Start one (on Debian: `scripts/docker-engine.sh`, or `sudo systemctl start docker`) "
            "or point DOCKER_HOST at a daemon that runs."
        )


class EngineError(NbcontainerError, RuntimeError):
    """The Docker daemon refused or failed a request; `status_code` is its HTTP status
    (None when the failure was not an HTTP answer) and `explanation` its words."""

    _fields = ("operation", "explanation", "status_code")

    def __init__(self, operation: str, explanation: str, status_code: int | None = None) -> None:
        self.operation = operation
        self.explanation = explanation
        self.status_code = status_code
        status = f" (HTTP {status_code})" if status_code else ""
        super().__init__(f"Docker could not {operation}: {explanation}{status}")

    @property
    def reason(self) -> str:
        return self.explanation


class ResourceNotFound(EngineError, LookupError):
    """404: the container, image or path the request named does not exist."""


class AccessRefused(EngineError, PermissionError):
    """The daemon, or nbcontainer's Docker guard in front of it, refused the request (403)."""

    HINT = (
        "A kernel with docker_access 'guarded' may make unprivileged containers and images "
        "of its own, and use only those; what it needs beyond that (a bind of another host "
        "path, the host's network) needs a kernelspec with that mount, or docker_access "
        "'raw' on a single-user machine."
    )

    def __init__(self, operation: str, explanation: str, status_code: int | None = 403) -> None:
        super().__init__(operation, explanation, status_code)
        if "guard" in explanation:
            self.args = (f"{self.args[0]}. {self.HINT}",)


class Conflict(EngineError):
    """409: the request conflicts with the object's state (not running, in use, removing)."""


class PortInUse(EngineError):
    """The daemon could not publish a port: another process holds it."""


class CommandNotFound(EngineError):
    """The container's command does not exist in its image."""


class ImageNotFound(NbcontainerError, LookupError):
    """An image is neither present locally nor pullable."""

    _fields = ("image", "reason")

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


class ImageNotUsable(NbcontainerError, ValueError):
    """An image exists but cannot run what is asked of it (no Python, no ipykernel)."""

    _fields = ("image", "reason", "hint")

    def __init__(self, image: str, reason: str, hint: str) -> None:
        self.image = image
        self.reason = reason
        self.hint = hint
        super().__init__(f"Image {image!r} cannot be used: {reason}. {hint}")


class ImageBuildError(NbcontainerError, RuntimeError):
    """`docker build` failed; carries the step and the build log's tail."""

    _fields = ("tag", "reason", "log_tail")

    def __init__(self, tag: str, reason: str, log_tail: list[str] | None = None) -> None:
        self.tag = tag
        self.reason = reason
        self.log_tail = list(log_tail or [])
        tail = "\n".join(self.log_tail[-15:])
        super().__init__(
            f"Building image {tag!r} failed: {reason}"
            + (f"\n--- build log (tail) ---\n{tail}" if tail else "")
        )


class WheelResolutionError(NbcontainerError, LookupError):
    """pip could not resolve the wheels an image needs for its platform."""

    _fields = ("requirements", "target", "output")

    def __init__(self, requirements: list[str], target: str, output: str) -> None:
        self.requirements = list(requirements)
        self.target = target
        self.output = output
        super().__init__(
            f"Could not resolve wheels for {', '.join(requirements)} on {target}. "
            "Every package must be available as a wheel for the image's Python and platform; "
            "check the package names and that the package index (or PIP_FIND_LINKS) is "
            f"reachable.\n--- pip output (tail) ---\n{output[-2000:]}"
        )


# --------------------------------------------------------------- configuration
class PackageIndexUnreachable(NbcontainerError, ConnectionError):
    """pip could not talk to the package index at all (TLS, proxy, network, no index, or
    the resolution's time budget ran out): not a missing wheel, so nothing is retried."""

    _fields = ("index", "cause", "fix")

    def __init__(self, index: str, cause: str, fix: str) -> None:
        self.index = index
        self.cause = cause
        self.fix = fix
        super().__init__(f"The package index ({index}) cannot be used: {cause}. {fix}")


class InvalidOption(NbcontainerError, ValueError):
    """An option, flag or setting has a value that cannot work."""

    _fields = ("option", "value", "reason")

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"Invalid value for {option}: {value!r}: {reason}")


class KernelSpecError(NbcontainerError, LookupError):
    """A kernelspec cannot be installed, found or removed."""


class UnknownBackend(NbcontainerError, LookupError):
    """No backend is registered (or installed as an entry point) under a name."""

    _fields = ("name", "known")

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, list(known)
        super().__init__(
            f"No backend named {name!r}; available: {', '.join(self.known) or 'none'}."
        )


class UnknownRun(NbcontainerError, LookupError):
    """No run with this id in the ledger."""

    _fields = ("run_id",)

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"No run {run_id!r} in the ledger; `%remote_runs` lists them.")


class UnknownResult(NbcontainerError, KeyError):
    """A run has no result of this name (a KeyError too, as a mapping's missing key is)."""

    _fields = ("run_id", "name", "names")

    def __init__(self, run_id: str, name: str, names: list[str]) -> None:
        self.run_id, self.name, self.names = run_id, name, names
        super().__init__(
            f"Run {run_id} produced no result named {name!r}; it has {names}. "
            "`%remote_result RUN` loads them all."
        )

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0])


class LedgerError(NbcontainerError, OSError):
    """The run ledger could not be opened, read or written: which ledger, what happened,
    what to do."""

    _fields = ("path", "doing", "reason")

    def __init__(self, path: str, doing: str, reason: str) -> None:
        self.path, self.doing, self.reason = path, doing, reason
        low = reason.lower()
        if "disk" in low and "full" in low or "no space" in low:
            hint = "free space on its disk, then run the cell again"
        elif "readonly" in low or "read-only" in low or "permission" in low:
            hint = (
                "make its folder writable, or point RemoteRun.ledger_path "
                "(NBCONTAINER_RUNS_DB) at a writable file"
            )
        elif "not a database" in low or "malformed" in low or "corrupt" in low:
            hint = (
                "it is damaged: move it aside (its runs' outputs stay in its runs folder) and "
                "a new one is made, or point NBCONTAINER_RUNS_DB elsewhere"
            )
        elif "locked" in low or "busy" in low:
            hint = (
                "another process held it for too long (a stuck kernel or a copy tool?); "
                "run the cell again"
            )
        else:
            hint = "see the reason; NBCONTAINER_RUNS_DB chooses another file"
        super().__init__(f"The run ledger {path} could not {doing}: {reason}. To fix: {hint}.")


# ---------------------------------------------------------------------- kernels
class HostUnreachable(NbcontainerError, ConnectionError):
    """A remote Docker host (a kernelspec's docker_host) cannot be reached, or its connection
    was lost: carries the host and what SSH (or the TLS connection) said."""

    _fields = ("host", "reason")

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(
            f"The Docker host {host} cannot be reached: {reason}. "
            "Check that `ssh` reaches it as the kernelspec says (its host key in known_hosts, "
            "a key the agent or ~/.ssh/config offers), or run `nbcontainer host check "
            f"{host}`."
        )


class TunnelLost(NbcontainerError, ConnectionError):
    """A remote kernel's SSH connection (its channels' forwards) ended: the kernel is
    unreachable, and reported dead with this reason."""

    _fields = ("host", "container", "reason")

    def __init__(self, host: str, container: str, reason: str) -> None:
        self.host = host
        self.container = container
        self.reason = reason
        super().__init__(
            f"The SSH connection to kernel container {container} on {host} was lost "
            f"({reason}); the kernel cannot be reached and is reported dead."
        )


class KernelDied(NbcontainerError, RuntimeError):
    """A kernel's container exited; carries the exit code, OOM flag and log tail."""

    _fields = ("container", "exit_code", "oom_killed", "log_tail")

    def __init__(
        self, container: str, exit_code: int | None, oom_killed: bool, log_tail: list[str]
    ) -> None:
        self.container = container
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.log_tail = list(log_tail)
        why = "OOMKilled: it exceeded its memory limit" if oom_killed else f"exit code {exit_code}"
        tail = "\n".join(self.log_tail)
        super().__init__(
            f"Kernel container {container} died ({why})."
            + (f"\n--- last log lines ---\n{tail}" if tail else "")
        )


class WaiterDied(NbcontainerError, RuntimeError):
    """A warm pool's container made to take a claim exited before it could: its image
    cannot run the waiter. Carries the image and the container's last log lines."""

    _fields = ("image", "log_tail")

    def __init__(self, image: str, log_tail: list[str]) -> None:
        self.image = image
        self.log_tail = list(log_tail)
        tail = "\n".join(self.log_tail[-6:]) or "(no output)"
        super().__init__(
            f"A container of {image} exited before it could start its work.\n"
            f"--- last log lines ---\n{tail}\n"
            "Rebuild the image (its runner cannot start), or set the pool size to 0."
        )


# ------------------------------------------------------------------------- runs
class RemoteExecutionError(NbcontainerError, RuntimeError):
    """A run failed where it ran.

    Fields: `run_id` and `backend` (what `%remote_logs` needs), `exit_code`, `reason`
    (first line of the failure, or timed out / cancelled / OOMKilled), `remote_traceback`
    (the traceback printed where the code ran), `log_tail`, `output_dir` (where the
    run's outputs are kept), `image`. Its ``__cause__`` is the remote exception itself.
    """

    _fields = (
        "image",
        "exit_code",
        "reason",
        "remote_traceback",
        "log_tail",
        "output_dir",
        "run_id",
        "backend",
    )

    def __init__(
        self,
        image: str,
        exit_code: int | None,
        reason: str,
        remote_traceback: str,
        log_tail: list[str],
        output_dir: object,
        run_id: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.image = image
        self.exit_code = exit_code
        self.reason = reason
        self.remote_traceback = remote_traceback
        self.log_tail = list(log_tail)
        self.output_dir = output_dir
        self.run_id = run_id
        self.backend = backend
        what = f"Run {run_id}" if run_id else f"The run of {image}"
        tail = "\n".join(self.log_tail)
        super().__init__(
            f"{what} failed ({reason}); its outputs are kept in {output_dir}."
            + (
                f"\n--- remote traceback ---\n{remote_traceback.rstrip()}"
                if remote_traceback
                else ""
            )
            + (f"\n--- last log lines ---\n{tail}" if tail and not remote_traceback else "")
        )

    @property
    def traceback(self) -> str:
        """The remote traceback (the name this field had before 0.2)."""
        return self.remote_traceback

    def _render_traceback_(self) -> list[str]:
        """Run id, backend, exit code, where the outputs are, the log hint; then the remote
        traceback only (the host's frames say nothing about the cell)."""
        red, bold, off = "\x1b[31m", "\x1b[1m", "\x1b[0m"
        who = f"{self.run_id} ({self.backend})" if self.run_id else self.image
        code = f"exit code {self.exit_code}" if self.exit_code is not None else "no exit code"
        lines = [
            f"{red}{bold}Remote run {who} failed{off}: {self.reason}",
            f"  {code} | outputs: {self.output_dir}"
            + (f" | log: %remote_logs {self.run_id}" if self.run_id else ""),
        ]
        if self.remote_traceback:
            lines += self.remote_traceback.rstrip().splitlines()
        elif self.log_tail:
            lines += ["--- last log lines ---", *self.log_tail]
        return lines


class RunTimeout(RemoteExecutionError, TimeoutError):
    """A run exceeded its timeout (`--timeout`) and was stopped."""


class SweepFailed(NbcontainerError, RuntimeError):
    """Some children of a sweep failed. `failures` maps each failed child's run id to
    (its parameters, why); the others' results were still brought back (`kept` names
    the variables assigned). The first failure's own error is the ``__cause__``."""

    _fields = ("parent", "failures", "total", "kept")

    def __init__(
        self,
        parent: str,
        failures: dict[str, tuple[dict[str, object], str]],
        total: int,
        kept: list[str],
    ) -> None:
        self.parent = parent
        self.failures = dict(failures)
        self.total = total
        self.kept = list(kept)
        super().__init__("\n".join(self._lines()))

    def _lines(self) -> list[str]:
        shown = list(self.failures.items())[:10]
        lines = [f"Sweep {self.parent}: {len(self.failures)} of {self.total} children failed:"]
        for child, (params, why) in shown:
            values = ", ".join(f"{k}={v!r}" for k, v in params.items())
            lines.append(f"  {child} ({values}): {why}")
        if len(self.failures) > len(shown):
            lines.append(f"  ... and {len(self.failures) - len(shown)} more (`%remote_runs`)")
        ok = self.total - len(self.failures)
        lines.append(
            f"The {ok} others' results are in {', '.join(self.kept)}."
            if self.kept and ok
            else "No child's results came back."
            if not ok
            else f"The {ok} others succeeded."
        )
        lines.append("`%remote_logs CHILD` shows a child's log.")
        return lines

    def _render_traceback_(self) -> list[str]:
        first, *rest = self._lines()
        return [f"\x1b[31m\x1b[1m{first}\x1b[0m", *rest]


class RunCancelled(NbcontainerError):
    """A run was cancelled (Cancel, `%remote_cancel`); its record says CANCELLED."""

    _fields = ("run_id",)

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"Run {run_id} was cancelled; `%remote_result {run_id}` reads what it left."
        )

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[33mcancelled\x1b[0m: run {self.run_id} (its record says CANCELLED)"]


class SerializationError(NbcontainerError, TypeError):
    """A value cannot be serialized (or read back); the message is the reason shown."""


class SourcesTooLarge(NbcontainerError, ValueError):
    """The local code under the working directory is over its cap."""

    _fields = ("size", "cap", "biggest")

    def __init__(self, size: int, cap: int, biggest: list[tuple[str, int]]) -> None:
        self.size, self.cap, self.biggest = size, cap, list(biggest)
        top = ", ".join(f"{p} ({s / 1e6:.1f} MB)" for p, s in self.biggest[:5])
        super().__init__(
            f"local code is {size / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB cap; biggest: "
            f"{top}. List what should not travel in .nbcontainerignore, or raise the cap."
        )


class WorkdirTooLarge(NbcontainerError, ValueError):
    """A remote kernel's working directory would be seeded with more than its cap."""

    _fields = ("size", "cap", "biggest")

    def __init__(self, size: int, cap: int, biggest: list[tuple[str, int]]) -> None:
        self.size, self.cap, self.biggest = size, cap, list(biggest)
        top = ", ".join(f"{p} ({s / 1e6:.1f} MB)" for p, s in self.biggest[:5])
        super().__init__(
            f"the notebook's directory holds {size / 1e6:.1f} MB to seed the remote kernel's "
            f"working directory with, over its {cap / 1e6:.0f} MB cap (workdir_max_size); "
            f"biggest: {top}. Leave data out with .gitignore or .dockerignore (and read it on "
            "the host from where it lives), or raise workdir_max_size."
        )


class UntrustedResults(NbcontainerError, ValueError):
    """A run's outputs failed verification; nothing from them was loaded."""

    _fields = ("run_dir", "file", "reason")

    def __init__(self, run_dir: str, file: str, reason: str) -> None:
        self.run_dir = run_dir
        self.file = file
        self.reason = reason
        super().__init__(
            f"The outputs in {run_dir} were refused: {file}: {reason}. Nothing was loaded from "
            "them. Data values (DataFrames, JSON) can still be read with `%remote_result RUN "
            "--unverified` (pickles never); for a run made before signed results, "
            "`%config RemoteRun.trust = 'always'`."
        )


class UnsafeArchive(NbcontainerError, ValueError):
    """An archive from a container or a store holds what must not be unpacked."""

    _fields = ("member", "reason")

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(
            f"Refused to unpack {member!r}: {reason}. Nothing outside the run's directory "
            "was written."
        )


# ------------------------------------------------------------------- the cloud
class RegistryError(NbcontainerError, ConnectionError):
    """An image could not be pushed to (or logged in at) its registry."""

    _fields = ("registry", "reason")

    def __init__(self, registry: str, reason: str) -> None:
        self.registry = registry
        self.reason = reason
        super().__init__(
            f"Could not push to the registry {registry}: {reason}. Check that it answers "
            "(`curl http://HOST:PORT/v2/`), that `AWSBackend.registry` names it as "
            "host[:port]/repository, and for ECR that your AWS credentials may push there."
        )


class CloudError(NbcontainerError, RuntimeError):
    """An AWS call failed; `service`, `operation`, `code` (AWS's error code or the failure's
    kind) and `status_code` (HTTP, when there was an answer) say which and how."""

    _fields = ("service", "operation", "code", "explanation", "status_code")

    def __init__(
        self,
        service: str,
        operation: str,
        code: str,
        explanation: str,
        status_code: int | None = None,
    ) -> None:
        self.service = service
        self.operation = operation
        self.code = code
        self.explanation = explanation
        self.status_code = status_code
        super().__init__(f"AWS {service} {operation} failed: {code}: {explanation}")


class MissingSetting(NbcontainerError, LookupError):
    """A backend needs a setting that has no value."""

    _fields = ("setting", "env", "what")

    def __init__(self, setting: str, env: str, what: str) -> None:
        self.setting = setting
        self.env = env
        self.what = what
        super().__init__(
            f"{setting} is not set: {what}. Set it with `%config {setting} = ...`, the "
            f"environment variable {env}, or `[tool.nbcontainer]` in pyproject.toml."
        )
