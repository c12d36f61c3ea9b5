"""Names and paths fixed between the host and the containers it makes.

One constant, one name: the provisioner, the image builders and the runner
all read them from here. Standard library only (imported inside images).
"""

from __future__ import annotations

__all__ = [
    "SNAPSHOT_DIR",
    "ML_ROOT",
    "VENV",
    "RUNTIME_DIR",
    "KERNEL_CONNECTION_DIR",
    "KERNEL_CONNECTION_FILE",
    "KERNEL_SCRATCH",
    "RUN_CLAIM_FILE",
    "POOL_READY_MARK",
    "EXIT_MARK_ENV",
    "OUTPUT_URI_ENV",
    "OUTPUT_PER_JOB_ENV",
    "PLATFORM_ENV",
    "DEFAULT_BASE_IMAGE",
]

#: Where a run image holds its snapshot (manifest, variables, cell, notebook, code).
SNAPSHOT_DIR = "/opt/nbcontainer/snapshot"
#: SageMaker's training layout: input/config, model, output (failure, data).
ML_ROOT = "/opt/ml"
#: The virtualenv of kernel images and dependency layers.
VENV = "/opt/nbcontainer/venv"
#: This package's code in a run image: its own small layer, on sys.path through a .pth file.
RUNTIME_DIR = "/opt/nbcontainer/runtime"
#: A kernel's connection file (HMAC and Curve keys), put in through the Docker API before
#: start and removed by the kernel once read; a commit of a kernel fails while it exists.
KERNEL_CONNECTION_DIR = "/run/nbcontainer-kernel"
KERNEL_CONNECTION_FILE = f"{KERNEL_CONNECTION_DIR}/connection.json"
#: Where a --local run's claim (the runner's arguments and its run-time environment: the
#: signing key, the parameters) is put, with the snapshot, into a waiting runner container
#: of the warm pool; the runner reads and removes it before anything else.
RUN_CLAIM_FILE = "/run/nbcontainer-run/claim.json"
#: What a warm pool's waiter prints once its imports are done (and nothing before it).
POOL_READY_MARK = "nbcontainer-pool: ready"
#: A warm run's claim may carry a token here: the runner then ends its log with
#: "[nbcontainer] exit CODE TOKEN" once its outputs are sealed, and exits at once, so the
#: host collects without waiting for Docker to see the container stop. The token is out
#: of the environment before the cell runs, so no cell can print the line.
EXIT_MARK_ENV = "NBCONTAINER_EXIT_MARK"
#: Where a run puts its sealed outputs when the platform does not collect them (Batch).
OUTPUT_URI_ENV = "NBCONTAINER_OUTPUT_URI"
#: Set on a schedule's or trigger's jobs (one job definition, many jobs): each writes under
#: <output uri>/<its Batch job id>/.
OUTPUT_PER_JOB_ENV = "NBCONTAINER_OUTPUT_PER_JOB"
#: Set to "sagemaker" in a training job's environment: outputs go back SageMaker's way.
PLATFORM_ENV = "NBCONTAINER_PLATFORM"
#: A kernel's /tmp and HOME: a tmpfs, so nothing written there (IPython's history, snapshot
#: work directories, ~/.aws) is ever in an image committed from the kernel.
KERNEL_SCRATCH = "/tmp"
#: The base image `scripts/base-image.sh` makes offline.
DEFAULT_BASE_IMAGE = "nbcontainer/base:bookworm"
