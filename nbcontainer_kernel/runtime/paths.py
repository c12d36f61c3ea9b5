"""The container contract's paths (SageMaker's training layout).

NBCONTAINER_ML_ROOT moves /opt/ml elsewhere and NBCONTAINER_SNAPSHOT_DIR moves
the snapshot, so the runner can also be exercised outside a container.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .contract import ML_ROOT, SNAPSHOT_DIR


@dataclass(frozen=True)
class Paths:
    snapshot: Path
    ml: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(
            Path(os.environ.get("NBCONTAINER_SNAPSHOT_DIR", SNAPSHOT_DIR)),
            Path(os.environ.get("NBCONTAINER_ML_ROOT", ML_ROOT)),
        )

    @property
    def model(self) -> Path:
        return self.ml / "model"

    @property
    def output(self) -> Path:
        return self.ml / "output"

    @property
    def output_data(self) -> Path:
        return self.ml / "output" / "data"

    @property
    def failure(self) -> Path:
        return self.ml / "output" / "failure"

    @property
    def exception(self) -> Path:
        return self.ml / "output" / "exception.pkl"

    @property
    def hyperparameters(self) -> Path:
        return self.ml / "input" / "config" / "hyperparameters.json"

    def make(self) -> None:
        for d in (self.model, self.output_data):
            d.mkdir(parents=True, exist_ok=True)
