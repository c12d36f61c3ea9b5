"""A finished run as the host sees it: results (DataFrames as DataFrames), metrics,
logs, and for a failure the remote traceback and the re-raisable exception."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RemoteExecutionError
from .serialize import deserialize

__all__ = ["RunResult", "RemoteTraceback", "load_results"]


class RemoteTraceback(Exception):
    """The traceback printed where the code ran; the __cause__ of a re-raised remote error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


def load_results(model_dir: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The variables a run wrote to its model directory (all, or `names`)."""
    path = model_dir / "results.json"
    if not path.exists():
        return {}
    index = json.loads(path.read_text())
    out = {}
    for name, entry in index.get("variables", {}).items():
        if names is None or name in names:
            out[name] = deserialize(entry, model_dir)
    return out


@dataclass
class RunResult:
    """What a local run left behind; large values are read from output_dir on demand."""

    image: str
    exit_code: int | None
    output_dir: Path
    logs: list[str] = field(default_factory=list)
    duration: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    container: str = ""

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @property
    def data_dir(self) -> Path:
        return self.output_dir / "output" / "data"

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    @property
    def index(self) -> dict[str, Any]:
        p = self.model_dir / "results.json"
        return json.loads(p.read_text()) if p.exists() else {}

    @property
    def results(self) -> dict[str, Any]:
        """Every variable the cell assigned, loaded (DataFrames as DataFrames)."""
        return load_results(self.model_dir)

    def result(self, name: str) -> Any:
        values = load_results(self.model_dir, [name])
        if name not in values:
            raise KeyError(f"the run produced no result named {name!r}; it has {sorted(self.index.get('variables', {}))}")
        return values[name]

    @property
    def last_value(self) -> Any:
        entry = self.index.get("last_value")
        return deserialize(entry, self.model_dir) if entry else None

    @property
    def displays(self) -> list[dict[str, Any]]:
        return list(self.index.get("displays", []))

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.model_dir / "metrics.json"
        return json.loads(p.read_text()).get("last", {}) if p.exists() else {}

    @property
    def failure(self) -> str | None:
        p = self.output_dir / "output" / "failure"
        return p.read_text() if p.exists() else None

    def exception(self) -> BaseException | None:
        """The exception raised where the cell ran, with the remote traceback as its cause."""
        p = self.output_dir / "output" / "exception.pkl"
        if not p.exists():
            return None
        try:
            import cloudpickle  # noqa: F401

            exc = pickle.loads(p.read_bytes())
        except Exception as err:  # its class may not exist here
            exc = RuntimeError(f"remote exception (not loadable here: {err})")
        tb = (self.failure or "").partition("\n\n")[2]
        exc.__cause__ = RemoteTraceback(tb)
        return exc

    def raise_for_status(self) -> None:
        """Raise RemoteExecutionError (with the remote exception as its cause) if the run failed."""
        if self.succeeded:
            return
        failure = self.failure or ""
        reason = failure.split("\n", 1)[0] if failure else (
            "timed out" if self.timed_out else "cancelled" if self.cancelled else f"exit code {self.exit_code}")
        err = RemoteExecutionError(self.image, self.exit_code, reason, failure.partition("\n\n")[2],
                                   self.logs[-20:], self.output_dir)
        raise err from self.exception()
