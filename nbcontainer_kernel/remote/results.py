"""A finished run as the host sees it: results (DataFrames as DataFrames), metrics,
logs, and for a failure the remote traceback and the re-raisable exception.

Everything is read through :class:`nbcontainer_kernel.runtime.trust.RunOutputs`: the
manifest's signature is checked before anything is read, each file's digest
as it is read, and pickles are loaded only from a run whose signature holds.
"""

from __future__ import annotations

import functools
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..runtime.errors import (
    RemoteExecutionError,
    RunCancelled,
    RunTimeout,
    SerializationError,
    UnknownResult,
    UntrustedResults,
)
from ..runtime.serialize import DATA_SERIALIZERS, deserialize
from ..runtime.trust import RunOutputs, Verdict

__all__ = ["RunResult", "RemoteTraceback", "load_results"]


class RemoteTraceback(Exception):
    """The traceback printed where the code ran; the __cause__ of a re-raised remote error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def load_results(
    outputs: RunOutputs, names: list[str] | None = None, *, unverified_data: bool = False
) -> dict[str, Any]:
    """The variables a run wrote (all, or `names`).

    Verified first (UntrustedResults when the outputs are refused). With
    unverified_data, the data values (Arrow, Parquet, JSON) are read after the
    structural checks only, verified or not, and pickles never: how a refused
    run's data is read on request.
    """
    if unverified_data:
        return _load(RunOutputs(outputs.root, None, lenient=True), names, data_only=True)
    return _load(outputs, names, data_only=not outputs.allows_pickles)


def _load(outputs: RunOutputs, names: list[str] | None, data_only: bool) -> dict[str, Any]:
    index = outputs.manifest()
    source = outputs.source("model")
    out = {}
    for name, entry in (index.get("variables") or {}).items():
        if names is not None and name not in names:
            continue
        if data_only and entry.get("serializer") not in DATA_SERIALIZERS:
            continue
        if outputs.lenient:  # data on request: what cannot be read is left out, the rest comes
            try:
                out[name] = deserialize(entry, source, allow_pickle=False)
            except (UntrustedResults, SerializationError, OSError, ValueError):
                continue
        else:
            out[name] = deserialize(entry, source, allow_pickle=not data_only)
    return out


@dataclass
class RunResult:
    """What a run left behind; large values are read from output_dir on demand.

    `key` is the run's signing key (from the ledger) and `trust` the policy
    (signed, always or never) under which its outputs are read. `reason` is
    what the host knows of an end the run could not write itself (timed out,
    cancelled).
    """

    image: str
    exit_code: int | None
    output_dir: Path
    logs: list[str] = field(default_factory=list)
    duration: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    container: str = ""
    key: str | None = None
    trust: str = "signed"
    reason: str | None = None
    run_id: str | None = None
    backend: str | None = None
    #: The run's phase when this was made: SUCCEEDED, FAILED or CANCELLED once it ended;
    #: an earlier one for a run that goes on without the cell (``--no-wait``).
    status: str = ""
    verdict: Verdict | None = None  # how far its outputs are believed, once collected
    #: A sweep's children by run id, and its combined values (name -> DataFrame with the
    #: swept parameters as columns; those of the children that succeeded).
    children: dict[str, RunResult] = field(default_factory=dict, repr=False)
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The outputs as the driver verified them (every file hashed once, not again here).
    checked_outputs: RunOutputs | None = field(default=None, repr=False, compare=False)

    @property
    def outputs(self) -> RunOutputs:
        if self.checked_outputs is None:
            self.checked_outputs = RunOutputs(self.output_dir, self.key, self.trust)
        return self.checked_outputs

    @property
    def pending(self) -> bool:
        """Whether the run goes on (``--no-wait``): its results come with %remote_attach."""
        return self.status not in ("SUCCEEDED", "FAILED", "CANCELLED")

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @property
    def data_dir(self) -> Path:
        return self.output_dir / "output" / "data"

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    def verify(self) -> str:
        """Check every output file; returns the verdict recorded in the ledger."""
        return self.outputs.verdict()

    @property
    def index(self) -> dict[str, Any]:
        """The verified results manifest (UntrustedResults when refused)."""
        return self.outputs.manifest()

    @property
    def results(self) -> dict[str, Any]:
        """Every variable the cell assigned, loaded (DataFrames as DataFrames)."""
        return load_results(self.outputs)

    def result(self, name: str, *, unverified_data: bool = False) -> Any:
        values = load_results(self.outputs, [name], unverified_data=unverified_data)
        if name not in values:
            raise UnknownResult(
                self.run_id or str(self.output_dir), name, sorted(self.index.get("variables", {}))
            )
        return values[name]

    @property
    def last_value(self) -> Any:
        entry = self.index.get("last_value")
        if not entry:
            return None
        data_only = not self.outputs.allows_pickles
        if data_only and entry.get("serializer") not in DATA_SERIALIZERS:
            return None
        return deserialize(entry, self.outputs.source("model"), allow_pickle=not data_only)

    @property
    def displays(self) -> list[dict[str, Any]]:
        return list(self.index.get("displays", []))

    @functools.cached_property
    def _metrics_doc(self) -> dict[str, Any]:
        """metrics.json, read (and its digest checked) once for `metrics` and its history."""
        if not self.outputs.exists("model/metrics.json"):
            return {}
        doc = json.loads(self.outputs.read_bytes("model/metrics.json"))
        return doc if isinstance(doc, dict) else {}

    @property
    def metrics(self) -> dict[str, Any]:
        """Each metric's last value."""
        return dict(self._metrics_doc.get("last") or {})

    @property
    def metric_history(self) -> list[dict[str, Any]]:
        """Every value logged (name, value, step, timestamp), in order."""
        history = self._metrics_doc.get("history") or []
        return [r for r in history if isinstance(r, dict) and isinstance(r.get("name"), str)]

    @functools.cached_property
    def recorded(self) -> dict[str, Any]:
        """What the run recorded for comparison (record(), scrapbook's glue), verified."""
        if not self.outputs.exists("model/recorded.json"):
            return {}
        doc = json.loads(self.outputs.read_bytes("model/recorded.json"))
        return doc if isinstance(doc, dict) else {}

    def _verified_failure(self) -> str | None:
        try:
            if self.outputs.exists("output/failure"):
                return self.outputs.read_text("output/failure")
        except UntrustedResults:
            return None
        return None

    @property
    def failure(self) -> str | None:
        """The run's own failure text (verified), else what the host knows of its end."""
        return self._verified_failure() or self.reason

    def exception(self) -> BaseException | None:
        """The exception raised where the cell ran, with the remote traceback as its cause.

        Loaded only from a run whose outputs are verified and trusted with pickles.
        """
        try:
            if not self.outputs.allows_pickles or not self.outputs.exists("output/exception.pkl"):
                return None
            data = self.outputs.read_bytes("output/exception.pkl")
        except UntrustedResults:
            return None
        try:
            import cloudpickle  # noqa: F401 - loads exceptions pickled by value

            exc = pickle.loads(data)
        except Exception as err:  # its class may not exist here
            exc = RuntimeError(f"remote exception (not loadable here: {type(err).__name__}: {err})")
        if not isinstance(exc, BaseException):
            exc = RuntimeError(f"remote exception stand-in: {type(exc).__name__} {exc!r:.200}")
        tb = (self._verified_failure() or "").partition("\n\n")[2]
        exc.__cause__ = RemoteTraceback(tb)
        return cast(BaseException, exc)

    def raise_for_status(self) -> None:
        """Raise if the run failed (RemoteExecutionError, with the remote exception as its
        cause; RunTimeout after --timeout; RunCancelled when it was cancelled) or if its
        outputs are refused (UntrustedResults)."""
        if self.succeeded:
            self.outputs.verify_all()  # a refused run must not pass as a success
            return
        if self.cancelled:
            raise RunCancelled(self.run_id or self.image)
        failure = self._verified_failure() or ""
        if self.timed_out:
            reason = self.reason or "timed out"
        else:
            first = failure.split("\n", 1)[0]
            reason = first or self.reason or f"exit code {self.exit_code}"
        kind = RunTimeout if self.timed_out else RemoteExecutionError
        err = kind(
            self.image,
            self.exit_code,
            reason,
            failure.partition("\n\n")[2],
            self.logs[-20:],
            self.output_dir,
            self.run_id,
            self.backend,
        )
        raise err from self.exception()
